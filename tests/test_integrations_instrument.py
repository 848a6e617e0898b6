"""``agentaudit_client.instrument()`` and the light base import: frameworks load only with their adapter."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from agentaudit_client.integrations import AdapterSettings, instrument, uninstrument
from agentaudit_client.integrations._common import AdapterConfigError
from tests.conftest import ROOT

FRAMEWORKS = ("langchain", "langchain_core", "langgraph", "pydantic_ai", "agents", "google.adk", "claude_agent_sdk")


def test_importing_the_client_imports_no_agent_framework() -> None:
    probe = (
        "import sys, agentaudit_client, agentaudit_client.integrations; "
        f"print([m for m in {FRAMEWORKS!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


@pytest.fixture
def instrumented() -> Iterator[list[str]]:
    installed = instrument(AdapterSettings(tenant_id="t_42", agent_id="support-agent"))
    yield installed
    uninstrument()


def test_instrument_installs_every_importable_adapter_once(instrumented: list[str]) -> None:
    assert {"langchain", "pydantic_ai"} <= set(instrumented)
    assert instrument(AdapterSettings(tenant_id="t_other")) == instrumented  # idempotent


def test_an_instrumented_langchain_agent_carries_the_middleware(instrumented: list[str]) -> None:
    from langchain.agents import create_agent  # noqa: PLC0415 - looked up after instrument(), as an app would
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel  # noqa: PLC0415
    from langchain_core.tools import tool  # noqa: PLC0415

    @tool("crm.lookup")
    def crm_lookup(customer_id: str) -> str:
        """Looks a customer up."""
        return customer_id

    agent = create_agent(GenericFakeChatModel(messages=iter([])), [crm_lookup])
    assert "AgentAuditMiddleware.after_model" in agent.get_graph().nodes


def test_an_instrumented_pydantic_ai_agent_carries_the_capability(instrumented: list[str]) -> None:
    from pydantic_ai import Agent  # noqa: PLC0415
    from pydantic_ai.models.test import TestModel  # noqa: PLC0415

    from agentaudit_client.integrations.pydantic_ai import AgentAudit  # noqa: PLC0415

    agent: Agent[None, str] = Agent(TestModel())
    assert any(isinstance(c, AgentAudit) for c in agent.root_capability.capabilities)


def test_instrument_without_a_tenant_says_which_variable_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AGENTAUDIT_TENANT_ID", raising=False)
    with pytest.raises(AdapterConfigError, match="AGENTAUDIT_TENANT_ID"):
        instrument()
