"""Per-tool-call overhead of the framework adapters: the same scripted agent run with and without the adapter.

``python -m bench.adapters [--calls 30] [--runs 4]`` (``make bench`` runs it too) starts ``agentaudit dev`` in a
temporary directory, then plays its scripts in turn, ``--runs`` rounds after a warm-up one: the client alone
(``--calls`` Decide + ReportResult pairs), and for each framework ``--calls`` turns of one ``kb.search`` tool
call each (the example policy allows it, unlimited) without the adapter, with it, and with the same two client
calls written by hand in the tool, a fresh thread, conversation or session per round:

* LangChain ``create_agent`` with a fake chat model, sync ``invoke`` (the adapter's blocking client);
* Pydantic AI with a ``FunctionModel``;
* the OpenAI Agents SDK with its own ``ScriptedModel`` (``agents.testing``), ``Runner.run``;
* Google ADK with a scripted ``BaseLlm`` in an ``InMemoryRunner``;
* the Claude Agent SDK: its ``PreToolUse`` and ``PostToolUse`` hooks called around the tool with the SDK's own
  input types, as the SDK calls them (the SDK itself drives the Claude Code CLI and a model: not offline).

The asyncio adapters (the last three) take one ``AsyncGatewayClient``, as an app has; their by-hand calls use
another. Taking turns within each round keeps a shared machine's changing load from landing on one figure.
The overhead per call is (median with the adapter - median without) / calls; the issue's target is that
overhead within 1 ms of the client's own Decide + ReportResult per call. The bench process's CPU time per call
is reported beside each wall-clock figure. At the end the journal must hold, for every run of every governed
play, each tool call allowed and reported: otherwise the bench fails rather than time an adapter that governed
nothing.

What "the client's own Decide + ReportResult" costs depends on where it runs, so three are measured:

* **client**: the pairs back to back, in a hot loop (caches warm, grpc's threads busy): the floor;
* **client spaced**: the same pairs, each after ``SPACING_MS`` of pure-Python work (about one framework turn
  here), with no framework at all: what the same calls cost between other work;
* **by hand**: the same pairs written inside the tool of each framework's run (no adapter).

The target is checked against **by hand**: the adapter's overhead minus the cost of the same two client calls
made at that point of the same agent run, which is what the adapter adds. The hot-loop figure is printed beside
it ("- client"): the gap between it and "client spaced" is what interleaving costs any caller, adapter or not.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agentaudit_client import AsyncGatewayClient, GatewayClient
from agentaudit_client.integrations import AdapterSettings

ACTION = "kb.search"
TARGET_BEYOND_CLIENT_MS = 1.0  # issue 19: adapter overhead within 1 ms of the client's own decide + report
SPACING_MS = 3.0  # the "client spaced" play's Python work before each pair: about one framework turn here


def start_sidecar(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    target = f"unix://{directory}/gw.sock"
    log = open(directory / "sidecar.log", "ab")  # noqa: SIM115 - kept open for the subprocess's life
    command = [sys.executable, "-m", "gateway.cli", "dev", "--dir", str(directory), "--listen", target]
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={"AGENTAUDIT_FORWARD_TARGET": ""})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with grpc.insecure_channel(target) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return proc, target
        except grpc.RpcError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("agentaudit dev did not start")


Play = Callable[[int], Awaitable[None]]
"""One run of a scripted agent (the argument: the run's index, for a fresh thread or conversation id)."""


# What every play's Decide carries and every ReportResult reports: one allowed kb.search and its answer.
PAIR = {
    "tenant_id": "t_42", "agent_id": "support-agent", "actor": ("user", "u_1"), "action": ACTION,
    "args": {"query": "refund policy"},
}  # fmt: skip
OUTPUT = {"result": "refund policy: 30 days"}


class ByHand:
    """A hand-written integration: the tool's own body decides and reports with the client (no adapter)."""

    def __init__(self, client: GatewayClient) -> None:
        self.client = client
        self.run_id, self.step = "", 0

    def start(self, run_id: str) -> None:
        self.run_id, self.step = run_id, 0

    def decide_and_report(self) -> None:
        self.step += 1
        decision = self.client.decide(run_id=self.run_id, step_id=self.step, **PAIR)  # type: ignore[arg-type]
        self.client.report_result(decision.event_id, output=OUTPUT, duration=0.0)


class AsyncByHand:
    """``ByHand`` for the asyncio frameworks: the same two calls through the asyncio client, awaited in the tool."""

    def __init__(self, client: AsyncGatewayClient) -> None:
        self.client = client
        self.run_id, self.step = "", 0

    def start(self, run_id: str) -> None:
        self.run_id, self.step = run_id, 0

    async def adecide_and_report(self) -> None:
        self.step += 1
        decision = await self.client.decide(run_id=self.run_id, step_id=self.step, **PAIR)  # type: ignore[arg-type]
        await self.client.report_result(decision.event_id, output=OUTPUT, duration=0.0)


def _busy(ms: float) -> None:
    """Pure-Python work for ``ms`` (it runs bytecode, as a framework does, rather than sleeping)."""
    deadline = time.perf_counter() + ms / 1000
    while time.perf_counter() < deadline:
        pass


def client_play(client: GatewayClient, calls: int, spacing_ms: float = 0.0) -> Play:
    """The client alone: ``calls`` Decide + ReportResult pairs, as an adapter makes them, each after
    ``spacing_ms`` of Python work (the "client spaced" play, whose figures have the spacing subtracted)."""
    name = "spaced" if spacing_ms else "client"

    async def play(i: int) -> None:
        for step in range(1, calls + 1):
            if spacing_ms:
                _busy(spacing_ms)
            decision = client.decide(run_id=f"bench_{name}_{i}", step_id=step, **PAIR)  # type: ignore[arg-type]
            client.report_result(decision.event_id, output=OUTPUT, duration=0.0)

    return play


def langchain_play(settings: AdapterSettings | None, calls: int, by_hand: ByHand | None = None) -> Play:
    from langchain.agents import create_agent  # noqa: PLC0415
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel  # noqa: PLC0415
    from langchain_core.messages import AIMessage  # noqa: PLC0415
    from langchain_core.tools import tool  # noqa: PLC0415

    from agentaudit_client.integrations.langchain import AgentAuditMiddleware  # noqa: PLC0415

    class Scripted(GenericFakeChatModel):
        def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> Scripted:  # type: ignore[override]
            return self

    @tool(ACTION)
    def kb_search(query: str) -> str:
        """Searches the knowledge base."""
        if by_hand is not None:
            by_hand.decide_and_report()
        return "refund policy: 30 days"

    middleware = [AgentAuditMiddleware(settings)] if settings is not None else []

    async def play(i: int) -> None:
        turns = [
            AIMessage(content="", tool_calls=[{"name": ACTION, "args": {"query": "refund policy"}, "id": f"c{n}"}])
            for n in range(calls)
        ]
        model = Scripted(messages=iter([*turns, AIMessage(content="done")]))
        agent = create_agent(model, [kb_search], middleware=middleware)
        if by_hand is not None:
            by_hand.start(f"lc_hand_{i}")
        # The sync API, as most LangChain agents run: its tool calls take the adapter's blocking client.
        agent.invoke({"messages": [{"role": "user", "content": "go"}]}, {"configurable": {"thread_id": f"lc_{i}"}})

    return play


def pydantic_ai_play(settings: AdapterSettings | None, calls: int, by_hand: ByHand | None = None) -> Play:
    from pydantic_ai import Agent  # noqa: PLC0415
    from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart  # noqa: PLC0415
    from pydantic_ai.models.function import AgentInfo, FunctionModel  # noqa: PLC0415

    from agentaudit_client.integrations.pydantic_ai import AgentAudit  # noqa: PLC0415

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        done = sum(isinstance(m, ModelResponse) for m in messages)
        if done >= calls:
            return ModelResponse(parts=[TextPart("done")])
        return ModelResponse(parts=[ToolCallPart(ACTION, {"query": "refund policy"}, tool_call_id=f"c{done}")])

    capability = AgentAudit(settings) if settings is not None else None
    agent: Agent[None, str] = Agent(FunctionModel(respond), capabilities=[capability] if capability else [])

    @agent.tool_plain(name=ACTION)
    def kb_search(query: str) -> str:
        """Searches the knowledge base."""
        if by_hand is not None:
            by_hand.decide_and_report()
        return "refund policy: 30 days"

    async def play(i: int) -> None:
        if by_hand is not None:
            by_hand.start(f"pa_hand_{i}")
        await agent.run("go", conversation_id=f"pa_{i}")

    return play


TOOL = "kb_search"  # the tool's name where a framework allows no dot in it; the adapters map it to ACTION
ACTIONS = {TOOL: ACTION}


def openai_agents_play(client: AsyncGatewayClient | None, calls: int, by_hand: AsyncByHand | None = None) -> Play:
    """An OpenAI Agents SDK agent driven by the SDK's own ``ScriptedModel``: one tool call per turn."""
    from agents import Agent, RunConfig, Runner, function_tool  # noqa: PLC0415
    from agents.testing import ModelStep, ScriptedModel, assistant_message, function_call  # noqa: PLC0415

    from agentaudit_client.integrations.openai_agents import AgentsGovernor  # noqa: PLC0415

    async def kb_search(query: str) -> str:
        """Searches the knowledge base."""
        if by_hand is not None:
            await by_hand.adecide_and_report()
        return "refund policy: 30 days"

    async def play(i: int) -> None:
        # A fresh tool per run: a governor governs a tool once (idempotent), so a shared one would keep the first.
        tool = function_tool(kb_search, name_override=TOOL)
        steps = [
            ModelStep(output=[function_call(TOOL, {"query": "refund policy"}, call_id=f"c{n}")]) for n in range(calls)
        ]
        model = ScriptedModel([*steps, ModelStep(output=[assistant_message("done")])])
        agent: Agent[Any] = Agent(name="bench", model=model, tools=[tool])
        if client is not None:
            # With tracing off the SDK's trace carries no group id, so the run id is given (docs/integrations.md).
            governor = AgentsGovernor(client, "t_42", "support-agent", ("user", "u_1"), f"oa_{i}", actions=ACTIONS)
            governor.govern(agent)
        if by_hand is not None:
            by_hand.start(f"oa_hand_{i}")
        config = RunConfig(tracing_disabled=True, group_id=f"oa_{i}")
        await Runner.run(agent, "go", max_turns=calls + 2, run_config=config)

    return play


def adk_play(client: AsyncGatewayClient | None, calls: int, by_hand: AsyncByHand | None = None) -> Play:
    """A Google ADK agent driven by a scripted ``BaseLlm`` (one function call per turn) in an ``InMemoryRunner``."""
    from google.adk.agents import LlmAgent  # noqa: PLC0415
    from google.adk.apps import App  # noqa: PLC0415
    from google.adk.models.base_llm import BaseLlm  # noqa: PLC0415
    from google.adk.models.llm_response import LlmResponse  # noqa: PLC0415
    from google.adk.runners import InMemoryRunner  # noqa: PLC0415
    from google.genai import types  # noqa: PLC0415

    from agentaudit_client.integrations.adk import AgentAuditPlugin  # noqa: PLC0415

    class Scripted(BaseLlm):
        turns: int = 0

        async def generate_content_async(self, llm_request: Any, stream: bool = False) -> Any:
            self.turns += 1
            if self.turns > calls:
                yield LlmResponse(content=types.Content(role="model", parts=[types.Part(text="done")]))
                return
            call = types.FunctionCall(name=TOOL, args={"query": "refund policy"}, id=f"c{self.turns}")
            yield LlmResponse(content=types.Content(role="model", parts=[types.Part(function_call=call)]))

    async def kb_search(query: str) -> str:
        """Searches the knowledge base."""
        if by_hand is not None:
            await by_hand.adecide_and_report()
        return "refund policy: 30 days"

    async def play(i: int) -> None:
        agent = LlmAgent(name="bench", model=Scripted(model="scripted"), tools=[kb_search])
        plugins = (
            [AgentAuditPlugin(client, tenant_id="t_42", agent_id="support-agent", actions=ACTIONS)] if client else []
        )
        runner = InMemoryRunner(app=App(name="bench", root_agent=agent, plugins=plugins))
        await runner.session_service.create_session(app_name="bench", user_id="u_1", session_id=f"adk_{i}")
        if by_hand is not None:
            by_hand.start(f"adk_hand_{i}")
        message = types.Content(role="user", parts=[types.Part(text="go")])
        async for _ in runner.run_async(user_id="u_1", session_id=f"adk_{i}", new_message=message):
            pass

    return play


def claude_agent_play(client: AsyncGatewayClient | None, calls: int, by_hand: AsyncByHand | None = None) -> Play:
    """What the Claude Agent SDK does around each tool call, with its own types: the ``PreToolUse`` hooks, the
    tool, the ``PostToolUse`` hooks (the SDK itself drives the Claude Code CLI, which needs a model: not offline)."""
    from claude_agent_sdk import (  # noqa: PLC0415
        ClaudeAgentOptions,
        HookContext,
        PostToolUseHookInput,
        PreToolUseHookInput,
    )

    from agentaudit_client.integrations.claude_agent import ClaudeAgentGovernor  # noqa: PLC0415

    context = HookContext(signal=None)

    async def kb_search(query: str) -> str:
        if by_hand is not None:
            await by_hand.adecide_and_report()
        return "refund policy: 30 days"

    async def play(i: int) -> None:
        options = ClaudeAgentOptions(allowed_tools=[TOOL])
        if client is not None:
            options = ClaudeAgentGovernor(client, "t_42", "support-agent", ("user", "u_1"), actions=ACTIONS).apply(
                options
            )
        hooks = options.hooks or {}
        if by_hand is not None:
            by_hand.start(f"ca_hand_{i}")
        base = {"session_id": f"ca_{i}", "transcript_path": "/tmp/bench.jsonl", "cwd": "/tmp"}
        for n in range(calls):
            args, use_id = {"query": "refund policy"}, f"toolu_{i}_{n}"
            pre = PreToolUseHookInput(
                **base, hook_event_name="PreToolUse", tool_name=TOOL, tool_input=args, tool_use_id=use_id
            )  # type: ignore[typeddict-item]
            for matcher in hooks.get("PreToolUse", []):
                for hook in matcher.hooks:
                    answer = await hook(pre, use_id, context)
                    if answer.get("hookSpecificOutput", {}).get("permissionDecision") == "deny":
                        raise RuntimeError(f"bench tool denied: {answer}")
            output = await kb_search(**args)
            post = PostToolUseHookInput(
                **base, hook_event_name="PostToolUse", tool_name=TOOL, tool_input=args, tool_response=output,
                tool_use_id=use_id,
            )  # type: ignore[typeddict-item]  # fmt: skip
            for matcher in hooks.get("PostToolUse", []):
                for hook in matcher.hooks:
                    await hook(post, use_id, context)

    return play


FRAMEWORKS = ("langchain", "pydantic_ai", "openai_agents", "adk", "claude_agent")
PLAYS = ("client", "client_spaced", *(f"{f}{kind}" for f in FRAMEWORKS for kind in ("", "+adapter", "+by_hand")))


async def measure(target: str, calls: int, runs: int) -> dict[str, Any]:
    """Per-call milliseconds of each play (median over ``runs`` rounds after a warm-up one) and the overheads.

    The plays take turns within each round, so a change in the machine's load hits all of them alike (the
    machine may be shared: measured one after the other, a busy minute lands on one figure only). Beside the
    wall-clock figures, the bench process's own CPU time per call: the adapter's CPU overhead is the part of
    its cost that is the adapter's doing, whatever the sidecar's latency.
    """
    settings = AdapterSettings(sidecar=target, tenant_id="t_42", agent_id="support-agent", actor_id="u_1")
    lc_adapter, pa_adapter = langchain_play(settings, calls), pydantic_ai_play(settings, calls)
    # The asyncio adapters take the app's own asyncio client (one, as an app has), made inside this loop.
    with GatewayClient(target) as client:
        async with AsyncGatewayClient(target) as aclient, AsyncGatewayClient(target) as hand_client:
            by_hand, async_by_hand = ByHand(client), AsyncByHand(hand_client)
            plays = {
                "client": client_play(client, calls),
                "client_spaced": client_play(client, calls, SPACING_MS),
                "langchain": langchain_play(None, calls),
                "langchain+adapter": lc_adapter,
                "langchain+by_hand": langchain_play(None, calls, by_hand),
                "pydantic_ai": pydantic_ai_play(None, calls),
                "pydantic_ai+adapter": pa_adapter,
                "pydantic_ai+by_hand": pydantic_ai_play(None, calls, by_hand),
            }
            for framework, make in (
                ("openai_agents", openai_agents_play),
                ("adk", adk_play),
                ("claude_agent", claude_agent_play),
            ):
                plays[framework] = make(None, calls)
                plays[f"{framework}+adapter"] = make(aclient, calls)
                plays[f"{framework}+by_hand"] = make(None, calls, async_by_hand)
            wall, cpu = await _rounds(plays, calls, runs)
    result: dict[str, Any] = {"calls": calls, "runs": runs, "target_beyond_client_ms": TARGET_BEYOND_CLIENT_MS}
    for name in PLAYS:
        result[f"{name}_ms"] = round(statistics.median(wall[name]), 3)
        result[f"{name}_cpu_ms"] = round(statistics.median(cpu[name]), 3)
    result["client_spaced_ms"] = round(result["client_spaced_ms"] - SPACING_MS, 3)  # the pairs only
    result["client_spaced_cpu_ms"] = round(result["client_spaced_cpu_ms"] - SPACING_MS, 3)  # the spin is all CPU
    result["spacing_ms"] = SPACING_MS
    for framework in FRAMEWORKS:
        overhead = result[f"{framework}+adapter_ms"] - result[f"{framework}_ms"]
        cpu_overhead = result[f"{framework}+adapter_cpu_ms"] - result[f"{framework}_cpu_ms"]
        result[f"{framework}_overhead_ms"] = round(overhead, 3)
        result[f"{framework}_beyond_client_ms"] = round(overhead - result["client_ms"], 3)
        result[f"{framework}_cpu_beyond_client_ms"] = round(cpu_overhead - result["client_cpu_ms"], 3)
        # Against the same two calls written by hand inside the tool: what the adapter itself adds.
        result[f"{framework}_beyond_by_hand_ms"] = round(
            result[f"{framework}+adapter_ms"] - result[f"{framework}+by_hand_ms"], 3
        )
        result[f"{framework}_cpu_beyond_by_hand_ms"] = round(
            result[f"{framework}+adapter_cpu_ms"] - result[f"{framework}+by_hand_cpu_ms"], 3
        )
    result["target_met"] = all(
        result[f"{framework}_beyond_by_hand_ms"] <= TARGET_BEYOND_CLIENT_MS for framework in FRAMEWORKS
    )
    return result


async def _rounds(
    plays: dict[str, Play], calls: int, runs: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Each play's wall-clock and CPU milliseconds per call in each of ``runs`` rounds (after a warm-up one)."""
    wall: dict[str, list[float]] = {name: [] for name in PLAYS}
    cpu: dict[str, list[float]] = {name: [] for name in PLAYS}
    for i in range(runs + 1):
        for name, play in plays.items():
            wall_started, cpu_started = time.perf_counter(), time.process_time()
            await play(i)
            if i:  # round 0 warms imports, channels and the sidecar's caches
                wall[name].append((time.perf_counter() - wall_started) / calls * 1000)
                cpu[name].append((time.process_time() - cpu_started) / calls * 1000)
    return wall, cpu


def journaled(journal: Path) -> dict[str, tuple[int, int]]:
    """Per run id, the allowed pre-events and the post-events the journal holds (the plays' own check)."""
    from gateway.journal.store import iter_bodies  # noqa: PLC0415

    allowed: dict[str, int] = {}
    run_of: dict[str, str] = {}
    for _, body in iter_bodies(journal, kind="pre_exec"):
        if body.get("decision") == "allow":
            allowed[body["run_id"]] = allowed.get(body["run_id"], 0) + 1
            run_of[body["event_id"]] = body["run_id"]
    reported: dict[str, int] = {}
    for _, body in iter_bodies(journal, kind="post_exec"):
        run_id = run_of.get(body.get("pre_event_id", ""), "")
        reported[run_id] = reported.get(run_id, 0) + 1
    return {run_id: (count, reported.get(run_id, 0)) for run_id, count in allowed.items()}


_PREFIXES = {"langchain": "lc", "pydantic_ai": "pa", "openai_agents": "oa", "adk": "adk", "claude_agent": "ca"}
RUN_PREFIXES = {
    "client": "bench_client",
    "client_spaced": "bench_spaced",
    **{f"{framework}+adapter": prefix for framework, prefix in _PREFIXES.items()},
    **{f"{framework}+by_hand": f"{prefix}_hand" for framework, prefix in _PREFIXES.items()},
}
"""The run ids each play's runs are journaled under (``PREFIX_ROUND``)."""


def check_journal(journal: Path, calls: int, runs: int) -> dict[str, int]:
    """Each governed play's runs journaled every tool call, allowed and reported: else its figures would time an
    adapter that governed nothing. Returns the tool calls journaled per play."""
    runs_by_play: dict[str, list[tuple[int, int]]] = {}
    for run_id, counts in journaled(journal).items():
        runs_by_play.setdefault(run_id.rsplit("_", 1)[0], []).append(counts)
    found = {}
    for play, prefix in RUN_PREFIXES.items():
        counts = runs_by_play.get(prefix, [])
        if len(counts) != runs + 1 or any(c != (calls, calls) for c in counts):
            raise RuntimeError(
                f"{play}: journaled (allowed, reported) per run {counts}, expected {(calls, calls)} x {runs + 1}"
            )
        found[play] = sum(allowed for allowed, _ in counts)
    return found


def run(calls: int = 30, runs: int = 4) -> dict[str, Any]:
    """Starts ``agentaudit dev`` in a temporary directory and measures against it (``make bench`` calls this)."""
    logging.getLogger("google_adk").setLevel(logging.ERROR)  # "missing token usage metadata": a scripted model
    with tempfile.TemporaryDirectory(prefix="aa-bench-") as tmp:
        proc, target = start_sidecar(Path(tmp))
        try:
            result = asyncio.run(measure(target, calls, runs))
            result["journaled_tool_calls"] = check_journal(Path(tmp) / "journal.db", calls, runs)
            return result
        finally:
            proc.terminate()
            proc.wait(15)


def format_result(result: dict[str, Any]) -> str:
    """The adapters section of the bench table."""
    rows = [
        f"framework adapters ({result['calls']} tool calls x {result['runs']} runs)   without ms/call  with ms/call"
        "  overhead ms  - client  (cpu - client)  - by hand  (cpu - by hand)",
        f"  client decide + report per call: {result['client_ms']:.3f} ms (cpu {result['client_cpu_ms']:.3f} ms) in a"
        f" hot loop, {result['client_spaced_ms']:.3f} ms (cpu {result['client_spaced_cpu_ms']:.3f} ms) after"
        f" {result['spacing_ms']:g} ms of other Python work each",
    ]
    for framework in FRAMEWORKS:
        rows.append(
            f"  {framework:<40} {result[f'{framework}_ms']:>12.3f} {result[f'{framework}+adapter_ms']:>13.3f}"
            f" {result[f'{framework}_overhead_ms']:>12.3f} {result[f'{framework}_beyond_client_ms']:>+9.3f}"
            f"  ({result[f'{framework}_cpu_beyond_client_ms']:+.3f})"
            f"  {result[f'{framework}_beyond_by_hand_ms']:>+9.3f}"
            f"  ({result[f'{framework}_cpu_beyond_by_hand_ms']:+.3f})"
        )
    met = "met" if result["target_met"] else "NOT met"
    rows.append(
        f"  adapter overhead within {TARGET_BEYOND_CLIENT_MS:g} ms of the client's decide + report made by hand in"
        f" the same run: {met}"
    )
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    """Prints the table, then the figures as one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=30, help="tool calls per run (default 30)")
    parser.add_argument("--runs", type=int, default=4, help="measured runs per play, after one warm-up (default 4)")
    args = parser.parse_args(argv)
    result = run(args.calls, args.runs)
    print(format_result(result))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
