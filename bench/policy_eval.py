"""Policy evaluation alone, in-process: a 50-rule policy against a one-binding baseline.

Run as ``python -m bench.policy_eval`` (``make bench`` runs it too). Requests rotate over several actions,
tenants and argument shapes so caches and CEL paths are exercised as in real traffic; each evaluation is timed
with ``perf_counter_ns``. The target is an absolute p99 under 100 µs; the baseline ratio shows what the rules
themselves cost on this machine at this moment.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from typing import Any

import yaml

from gateway.policy.document import parse_policy
from gateway.policy.engine import LayeredPolicy
from gateway.policy.limits import LimitState
from gateway.policy.model import ActionRequest

TARGET_P99_US = 100.0
BASELINE_POLICY = yaml.safe_dump(
    {"version": 1, "access": {"roles": {"all": {"actions": ["*"]}}, "bindings": [{"name": "all", "roles": ["all"]}]}}
)


def fifty_rule_policy() -> str:
    """5 kill switches, 10 bindings, 10 limits, 10 approval rules and 15 CEL rules: 50 rules."""
    crm_rate = {"type": "rate", "actions": ["crm.*"], "key": ["tenant"], "rate": "1000/s", "burst": 1000}
    document = {
        "version": 1,
        "kill_switch": [{"name": f"k{i}", "scope": "tenant", "target": [f"t_frozen_{i}"]} for i in range(5)],
        "access": {
            "roles": {f"r{i}": {"actions": [f"svc{i}.*", "crm.*"]} for i in range(10)},
            "bindings": [
                {"name": f"b{i}", "roles": [f"r{i}"], "agents": [f"agent-{i}", "support-agent"]} for i in range(10)
            ],
        },
        "limits": [{"name": f"rate{i}", **crm_rate} for i in range(5)]
        + [
            {"name": f"count{i}", "type": "count", "actions": [f"svc{i}.*"], "max": 10**6, "window": "1h"}
            for i in range(4)
        ]
        + [{"name": "steps", "type": "steps", "max": 10**6}],
        "approval": [
            {"name": f"a{i}", "actions": [f"svc{i}.pay", "crm.refund"], "when": f"double(args.amount) > {1000 + i}.0"}
            for i in range(10)
        ],
        "rules": [
            {
                "name": f"c{i}",
                "decision": "stop",
                "when": f"has(args.to) && size(args.to) > {100 + i} || labels.env == 'x{i}'",
            }
            for i in range(15)
        ],
    }
    return yaml.safe_dump(document)


def requests() -> list[ActionRequest]:
    """A rotation of realistic requests (all allowed by both policies, so every layer runs to the end)."""
    out = []
    for i in range(64):
        out.append(
            ActionRequest(
                run_id=f"run_{i % 8}",
                step_id=i,
                tenant_id=f"t_{i % 5}",
                actor_type="user",
                actor_id="u_1",
                agent_id="support-agent",
                action=("crm.lookup", "crm.refund", "svc3.pay", "svc7.read")[i % 4],
                args={"amount": 10 + i, "to": ["a", "b"], "customer": {"id": f"c_{i}"}},
                scope="tenant",
                labels={"env": "prod"},
            )
        )
    return out


def measure(policy_text: str, evaluations: int) -> dict[str, Any]:
    """Times ``evaluations`` evaluations; returns p50/p99/mean in µs."""
    engine = LayeredPolicy(parse_policy(policy_text, "bench"), LimitState())
    batch = requests()
    for request in batch * 20:  # warm-up: caches, CEL contexts, allocator
        engine.evaluate(request)
    samples = []
    clock = time.perf_counter_ns
    for i in range(evaluations):
        request = batch[i % len(batch)]
        started = clock()
        engine.evaluate(request)
        samples.append(clock() - started)
    samples.sort()
    return {
        "evaluations": evaluations,
        "p50_us": round(samples[len(samples) // 2] / 1000, 2),
        "p99_us": round(samples[int(len(samples) * 0.99)] / 1000, 2),
        "mean_us": round(statistics.fmean(samples) / 1000, 2),
    }


def run(evaluations: int) -> dict[str, Any]:
    """Baseline and 50-rule figures with their ratio and the target check."""
    baseline = measure(BASELINE_POLICY, evaluations)
    fifty = measure(fifty_rule_policy(), evaluations)
    return {
        "baseline_1_rule": baseline,
        "policy_50_rules": fifty,
        "p99_ratio_vs_baseline": round(fifty["p99_us"] / baseline["p99_us"], 2),
        "target_p99_us": TARGET_P99_US,
        "target_met": fifty["p99_us"] < TARGET_P99_US,
    }


def format_result(result: dict[str, Any]) -> str:
    """The policy section of the bench table."""
    rows = ["policy evaluation (in-process)   p50 µs    p99 µs   mean µs"]
    for name in ("baseline_1_rule", "policy_50_rules"):
        r = result[name]
        rows.append(f"  {name:<30} {r['p50_us']:>8.2f}  {r['p99_us']:>8.2f}  {r['mean_us']:>8.2f}")
    met = "met" if result["target_met"] else "NOT met"
    rows.append(f"  50-rule p99 {result['policy_50_rules']['p99_us']:.2f} µs (target < {TARGET_P99_US:g} µs): {met}")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    """Prints the table, then the figures as one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--evaluations", type=int, default=50_000, help="timed evaluations per policy")
    args = parser.parse_args(argv)
    result = run(args.evaluations)
    print(format_result(result))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
