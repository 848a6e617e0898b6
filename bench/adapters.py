"""Per-tool-call overhead of the framework adapters: the same scripted agent run with and without the adapter.

``python -m bench.adapters [--calls 50] [--runs 6]`` starts ``agentaudit dev`` in a temporary directory, then for
each framework (LangChain ``create_agent`` with a fake chat model; Pydantic AI with a ``FunctionModel``) plays the
same script: ``--calls`` turns of one ``kb.search`` tool call each (the example policy allows it, unlimited), in
``--runs`` runs (a fresh thread or conversation each, so no per-run budget is reached). The overhead per call is
(median run time with the adapter - median run time without) / calls. The client's own Decide + ReportResult per
call, measured on the same sidecar, is printed beside it: the issue's target is adapter overhead within 1 ms of
that.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agentaudit_client import GatewayClient
from agentaudit_client.integrations import AdapterSettings

ACTION = "kb.search"


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


def median_seconds(play: Callable[[int], None], runs: int) -> float:
    times = []
    for i in range(runs):
        started = time.perf_counter()
        play(i)
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:] if runs > 2 else times)  # the first run warms imports and channels


def client_cost(target: str, calls: int, runs: int) -> float:
    with GatewayClient(target) as client:

        def play(i: int) -> None:
            for step in range(1, calls + 1):
                decision = client.decide(
                    run_id=f"bench_client_{i}", step_id=step, tenant_id="t_42", agent_id="support-agent",
                    actor=("user", "u_1"), action=ACTION, args={"query": "refund policy"},
                )  # fmt: skip
                client.report_result(decision.event_id, output={"result": "refund policy: 30 days"}, duration=0.0)

        return median_seconds(play, runs) / calls


def langchain_seconds(settings: AdapterSettings | None, calls: int, runs: int) -> float:
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
        return "refund policy: 30 days"

    middleware = [AgentAuditMiddleware(settings)] if settings is not None else []

    def play(i: int) -> None:
        turns = [
            AIMessage(content="", tool_calls=[{"name": ACTION, "args": {"query": "refund policy"}, "id": f"c{n}"}])
            for n in range(calls)
        ]
        model = Scripted(messages=iter([*turns, AIMessage(content="done")]))
        agent = create_agent(model, [kb_search], middleware=middleware)
        agent.invoke({"messages": [{"role": "user", "content": "go"}]}, {"configurable": {"thread_id": f"lc_{i}"}})

    return median_seconds(play, runs)


def pydantic_ai_seconds(settings: AdapterSettings | None, calls: int, runs: int) -> float:
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
        return "refund policy: 30 days"

    async def all_runs() -> float:
        times = []
        for i in range(runs):
            started = time.perf_counter()
            await agent.run("go", conversation_id=f"pa_{i}")
            times.append(time.perf_counter() - started)
        if capability is not None:
            await capability.governor.aclose()
        return statistics.median(times[1:] if runs > 2 else times)

    return asyncio.run(all_runs())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=50, help="tool calls per run (default 50)")
    parser.add_argument("--runs", type=int, default=6, help="runs per measurement (default 6; the first is warm-up)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="aa-bench-") as tmp:
        proc, target = start_sidecar(Path(tmp))
        try:
            settings = AdapterSettings(sidecar=target, tenant_id="t_42", agent_id="support-agent", actor_id="u_1")
            client_ms = client_cost(target, args.calls, args.runs) * 1000
            print(f"client decide + report per call: {client_ms:.3f} ms")
            print(f"{'framework':<12} {'without ms/call':>16} {'with ms/call':>13} {'overhead ms':>12} {'- client':>9}")
            for name, measure in (("langchain", langchain_seconds), ("pydantic_ai", pydantic_ai_seconds)):
                without = measure(None, args.calls, args.runs) / args.calls * 1000
                with_adapter = measure(settings, args.calls, args.runs) / args.calls * 1000
                overhead = with_adapter - without
                beyond = overhead - client_ms
                print(f"{name:<12} {without:>16.3f} {with_adapter:>13.3f} {overhead:>12.3f} {beyond:>+9.3f}")
        finally:
            proc.terminate()
            proc.wait(15)
    return 0


if __name__ == "__main__":
    sys.exit(main())
