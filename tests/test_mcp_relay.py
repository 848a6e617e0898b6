"""What ``agentaudit mcp`` passes through without governing. The server's requests to the client: a real SDK
server that asks for sampling, roots and a form elicitation during a tool call, a real SDK client with those
callbacks, the real proxy (a subprocess) in stdio and HTTP mode, a real sidecar. The requests pass through
unchanged and ungoverned; the call they happen in is decided and recorded as any other. The client's
``notifications/roots/list_changed`` reaches the server. Resources (paginated) and prompts go through as they are,
with nothing journaled.
"""

from __future__ import annotations

import hashlib
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest

from tests.conftest import RunningGateway, start_gateway
from tests.helpers import eventually_async
from tests.test_mcp_proxy import Setup, connect, events

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def setup(tmp_path: Path, request: pytest.FixtureRequest) -> Setup:
    tag = hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:12]
    return Setup(tmp_path, f"t_{tag}", f"run_{tag}", tmp_path / "calls.txt", tmp_path / "desc.txt")


ASKING_SERVER = [sys.executable, "-m", "tests.mcp_servers.asking_server"]
POLICY = """
version: 1
access:
  default: deny
  roles:
    tools: {actions: ["mcp.tools.*"]}
  bindings:
    - {name: mcp_agent, agents: ["mcp-agent"], tenants: ["*"], roles: [tools]}
"""


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    directory = Path(tmp_path_factory.mktemp("mcpgw-relay"))
    (directory / "policy.yaml").write_text(POLICY)
    gw = start_gateway(directory)
    try:
        yield gw
    finally:
        gw.stop()


class AskedClient:
    """The SDK client's callbacks, recording what the server asked."""

    def __init__(self) -> None:
        self.sampling: list[types.CreateMessageRequestParams] = []
        self.roots_asked = 0
        self.elicitations: list[types.ElicitRequestParams] = []

    async def on_sampling(self, ctx: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        self.sampling.append(params)
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text="sampled: blue"), model="test-model"
        )

    async def on_roots(self, ctx: Any) -> types.ListRootsResult:
        self.roots_asked += 1
        return types.ListRootsResult(roots=[types.Root(uri="file:///work/project", name="project")])

    async def on_elicitation(self, ctx: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        self.elicitations.append(params)
        return types.ElicitResult(action="accept", content={"colour": "blue"})

    def callbacks(self) -> dict[str, Any]:
        return {
            "sampling_callback": self.on_sampling,
            "list_roots_callback": self.on_roots,
            "elicitation_callback": self.on_elicitation,
        }


both = pytest.mark.parametrize("transport", ["stdio", "http"])


@both
async def test_sampling_roots_and_elicitation_from_the_server_reach_the_client_and_its_answers_come_back(
    sidecar: RunningGateway, setup: Setup, transport: str
) -> None:
    asked = AskedClient()
    async with connect(
        sidecar,
        setup,
        transport,
        "2025-11-25",
        server=ASKING_SERVER,
        elicitation=asked.on_elicitation,
        sampling_callback=asked.on_sampling,
        list_roots_callback=asked.on_roots,
    ) as client:
        result = await client.call_tool("ask", {"prompt": "favourite colour?"})
    assert not result.is_error, result
    answers = result.structured_content or {}
    assert answers["sampling"]["content"] == {"type": "text", "text": "sampled: blue"}
    assert answers["sampling"]["model"] == "test-model"
    assert answers["roots"] == ["file:///work/project"]
    assert answers["elicitation"] == {"action": "accept", "content": {"colour": "blue"}}
    # What the server asked reached the client unchanged.
    (sampling,) = asked.sampling
    assert sampling.messages[0].content == types.TextContent(type="text", text="favourite colour?")
    assert sampling.max_tokens == 16 and (sampling.meta or {}).get("test/marker") == "kept"
    assert asked.roots_asked == 1
    (elicitation,) = asked.elicitations
    assert elicitation.mode == "form" and elicitation.message == "Which colour?"
    # Not governed: one Decide and one report, for the call itself.
    journal = events(sidecar, setup.run_id)
    assert [(e["kind"], e["action"]) for e in journal] == [
        ("pre_exec", "mcp.tools.ask"),
        ("post_exec", "mcp.tools.ask"),
    ]
    assert journal[1]["status"] == "succeeded"
    assert setup.calls() == ["ask favourite colour?"]


@both
async def test_a_client_without_the_callbacks_gets_the_server_an_error_not_a_hang(
    sidecar: RunningGateway, setup: Setup, transport: str
) -> None:
    async with connect(sidecar, setup, transport, "2025-11-25", server=ASKING_SERVER) as client:
        result = await client.call_tool("ask", {"prompt": "anyone?"})
    assert not result.is_error
    answers = result.structured_content or {}
    assert answers["sampling"].startswith("sampling/createMessage error:")
    assert answers["roots"].startswith("roots/list error:")
    assert answers["elicitation"].startswith("elicitation/create error:")


@both
async def test_the_clients_roots_list_changed_notification_reaches_the_server(
    sidecar: RunningGateway, setup: Setup, transport: str
) -> None:
    asked = AskedClient()
    async with connect(
        sidecar, setup, transport, "2025-11-25", server=ASKING_SERVER, list_roots_callback=asked.on_roots
    ) as client:
        await client.list_tools()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # roots is deprecated as of 2026-07-28
            await client.send_roots_list_changed()
        await eventually_async(lambda: "roots_list_changed" in setup.calls(), message="the server to be told")


@both
async def test_a_2026_07_28_client_is_not_asked_mid_call_and_the_server_gets_an_error(
    sidecar: RunningGateway, setup: Setup, transport: str
) -> None:
    asked = AskedClient()
    async with connect(
        sidecar,
        setup,
        transport,
        "2026-07-28",
        server=ASKING_SERVER,
        elicitation=asked.on_elicitation,
        sampling_callback=asked.on_sampling,
        list_roots_callback=asked.on_roots,
    ) as client:
        result = await client.call_tool("ask", {"prompt": "modern?"})
    assert not result.is_error
    answers = result.structured_content or {}
    assert all(str(answers[k]).startswith(f"{m} error:") for k, m in MODERN_REFUSED), answers
    assert asked.sampling == [] and asked.roots_asked == 0 and asked.elicitations == []


MODERN_REFUSED = [
    ("sampling", "sampling/createMessage"),
    ("roots", "roots/list"),
    ("elicitation", "elicitation/create"),
]


@both
async def test_resources_and_prompts_pass_through_unchanged_and_journal_nothing(
    sidecar: RunningGateway, setup: Setup, transport: str
) -> None:
    async with connect(sidecar, setup, transport, "2025-11-25", server=ASKING_SERVER) as client:
        first = await client.list_resources()
        second = await client.list_resources(cursor=first.next_cursor)
        read = await client.read_resource("test://records/r1")
        prompts = await client.list_prompts()
        prompt = await client.get_prompt("greet", {"who": "auditor"})
    assert [str(r.uri) for r in first.resources] == ["test://records/r1"] and first.next_cursor == "page-2"
    assert [str(r.uri) for r in second.resources] == ["test://records/r2"] and second.next_cursor is None
    assert [c.text for c in read.contents if isinstance(c, types.TextResourceContents)] == [
        "contents of test://records/r1"
    ]
    assert [p.name for p in prompts.prompts] == ["greet"]
    assert prompt.messages[0].content == types.TextContent(type="text", text="hello auditor")
    assert events(sidecar, setup.run_id) == []
