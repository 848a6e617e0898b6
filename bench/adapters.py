"""Per-tool-call overhead of the framework adapters: the same scripted agent run with and without the adapter.

``python -m bench.adapters [--calls 30] [--runs 4]`` (``make bench`` runs it too) starts ``agentaudit dev`` in a
temporary directory, then plays five scripts in turn, ``--runs`` rounds after a warm-up one: the client alone
(``--calls`` Decide + ReportResult pairs), and for each framework (LangChain ``create_agent`` with a fake chat
model, sync ``invoke``; Pydantic AI with a ``FunctionModel``) ``--calls`` turns of one ``kb.search`` tool call
each (the example policy allows it, unlimited) without and with the adapter, a fresh thread or conversation
per round. Taking turns within each round keeps a shared machine's changing load from landing on one figure.
The overhead per call is (median with the adapter - median without) / calls; the issue's target is that
overhead within 1 ms of the client's own Decide + ReportResult per call. The bench process's CPU time per call
is reported beside each wall-clock figure.

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

from agentaudit_client import GatewayClient
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


class ByHand:
    """A hand-written integration: the tool's own body decides and reports with the client (no adapter)."""

    def __init__(self, client: GatewayClient) -> None:
        self.client = client
        self.run_id, self.step = "", 0

    def start(self, run_id: str) -> None:
        self.run_id, self.step = run_id, 0

    def decide_and_report(self) -> None:
        self.step += 1
        decision = self.client.decide(
            run_id=self.run_id, step_id=self.step, tenant_id="t_42", agent_id="support-agent",
            actor=("user", "u_1"), action=ACTION, args={"query": "refund policy"},
        )  # fmt: skip
        self.client.report_result(decision.event_id, output={"result": "refund policy: 30 days"}, duration=0.0)


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
            decision = client.decide(
                run_id=f"bench_{name}_{i}", step_id=step, tenant_id="t_42", agent_id="support-agent",
                actor=("user", "u_1"), action=ACTION, args={"query": "refund policy"},
            )  # fmt: skip
            client.report_result(decision.event_id, output={"result": "refund policy: 30 days"}, duration=0.0)

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


PLAYS = (
    "client",
    "client_spaced",
    "langchain",
    "langchain+adapter",
    "langchain+by_hand",
    "pydantic_ai",
    "pydantic_ai+adapter",
    "pydantic_ai+by_hand",
)
FRAMEWORKS = ("langchain", "pydantic_ai")


async def measure(target: str, calls: int, runs: int) -> dict[str, Any]:
    """Per-call milliseconds of each play (median over ``runs`` rounds after a warm-up one) and the overheads.

    The plays take turns within each round, so a change in the machine's load hits all of them alike (the
    machine may be shared: measured one after the other, a busy minute lands on one figure only). Beside the
    wall-clock figures, the bench process's own CPU time per call: the adapter's CPU overhead is the part of
    its cost that is the adapter's doing, whatever the sidecar's latency.
    """
    settings = AdapterSettings(sidecar=target, tenant_id="t_42", agent_id="support-agent", actor_id="u_1")
    lc_adapter, pa_adapter = langchain_play(settings, calls), pydantic_ai_play(settings, calls)
    with GatewayClient(target) as client:
        by_hand = ByHand(client)
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
        wall: dict[str, list[float]] = {name: [] for name in PLAYS}
        cpu: dict[str, list[float]] = {name: [] for name in PLAYS}
        for i in range(runs + 1):
            for name, play in plays.items():
                wall_started, cpu_started = time.perf_counter(), time.process_time()
                await play(i)
                if i:  # round 0 warms imports, channels and the sidecar's caches
                    wall[name].append((time.perf_counter() - wall_started) / calls * 1000)
                    cpu[name].append((time.process_time() - cpu_started) / calls * 1000)
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


def run(calls: int = 30, runs: int = 4) -> dict[str, Any]:
    """Starts ``agentaudit dev`` in a temporary directory and measures against it (``make bench`` calls this)."""
    with tempfile.TemporaryDirectory(prefix="aa-bench-") as tmp:
        proc, target = start_sidecar(Path(tmp))
        try:
            return asyncio.run(measure(target, calls, runs))
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
