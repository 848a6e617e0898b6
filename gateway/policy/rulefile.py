"""A stand-in policy: an ordered list of rules matching action, tenant and agent by glob.

The first matching rule decides; otherwise the document's ``default`` does. The layered engine (kill switch,
access, limits, approval, CEL rules) replaces this behind the same :class:`PolicyEngine` interface. Format::

    version: 1
    default: allow                 # allow | stop
    rules:
      - name: refunds_need_approval
        action: "refund.*"         # glob, required
        tenant: "*"                # glob, optional
        agent: "*"                 # glob, optional
        decision: approval_required  # allow | stop | approval_required
        reason: approval_required  # snake_case, optional
        retry_after: 1.5           # seconds, optional (rate-limit style stops)
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gateway import reasons
from gateway.canonical import CanonicalizationError, canonical_json
from gateway.errors import ConfigError
from gateway.policy.model import ActionRequest, Decision, Verdict

LAYER_RULES = "rules"
LAYER_DEFAULT = "default"

_RULE_KEYS = {"name", "action", "tenant", "agent", "decision", "reason", "retry_after"}
_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")
_DEFAULT_REASONS = {
    Verdict.ALLOW: reasons.ALLOWED,
    Verdict.STOP: reasons.STOPPED_BY_RULE,
    Verdict.APPROVAL_REQUIRED: reasons.APPROVAL_REQUIRED,
}


@dataclass(frozen=True)
class _Rule:
    name: str
    action: re.Pattern[str]
    tenant: re.Pattern[str] | None
    agent: re.Pattern[str] | None
    decision: Decision

    def matches(self, request: ActionRequest) -> bool:
        return (
            self.action.match(request.action) is not None
            and (self.tenant is None or self.tenant.match(request.tenant_id) is not None)
            and (self.agent is None or self.agent.match(request.agent_id) is not None)
        )


class RuleFilePolicy:
    """Evaluates an ordered glob rule list. Immutable once built."""

    def __init__(self, rules: list[_Rule], default: Decision, version: str, source: str) -> None:
        self._rules = rules
        self._default = default
        self._version = version
        self.source = source

    @property
    def version(self) -> str:
        """Hash of the canonical policy document."""
        return self._version

    def evaluate(self, request: ActionRequest) -> Decision:
        """First matching rule decides, else the default."""
        for rule in self._rules:
            if rule.matches(request):
                return rule.decision
        return self._default


def _glob(where: str, key: str, value: Any) -> re.Pattern[str]:
    if not isinstance(value, str) or not value or len(value) > 256:
        raise ConfigError(f"{where}: '{key}' must be a non-empty glob string")
    return re.compile(fnmatch.translate(value))


def _verdict(where: str, value: Any, allowed: tuple[Verdict, ...]) -> Verdict:
    try:
        verdict = Verdict(value)
    except ValueError:
        verdict = None
    if verdict not in allowed:
        raise ConfigError(f"{where}: decision must be one of {', '.join(allowed)}, got {value!r}")
    return verdict


def parse_policy(text: str, source: str = "<policy>") -> RuleFilePolicy:
    """Parses and checks a policy document; every error names the source, line and rule."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {exc}") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}: the policy must be a mapping with 'version', 'default' and 'rules'")
    unknown = set(doc) - {"version", "default", "rules"}
    if unknown:
        raise ConfigError(f"{source}: unknown top-level key(s) {', '.join(sorted(map(str, unknown)))}")
    if doc.get("version") != 1:
        raise ConfigError(f"{source}: 'version' must be 1, got {doc.get('version')!r}")
    try:
        version = "sha256:" + hashlib.sha256(canonical_json(doc)).hexdigest()
    except CanonicalizationError as exc:
        raise ConfigError(f"{source}: policy is not plain JSON-compatible data: {exc}") from exc
    default_verdict = _verdict(f"{source}: default", doc.get("default", "allow"), (Verdict.ALLOW, Verdict.STOP))
    default = Decision(default_verdict, _DEFAULT_REASONS[default_verdict], LAYER_DEFAULT, "", version, None)
    raw_rules = doc.get("rules") or []
    if not isinstance(raw_rules, list):
        raise ConfigError(f"{source}: 'rules' must be a list")
    rule_nodes = _rule_nodes(root)
    rules: list[_Rule] = []
    seen: set[str] = set()
    for index, raw in enumerate(raw_rules):
        line = rule_nodes[index].start_mark.line + 1 if index < len(rule_nodes) else 0
        where = f"{source}:{line}: rule #{index + 1}"
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: a rule must be a mapping")
        name = raw.get("name")
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ConfigError(f"{where}: 'name' must match {_NAME_RE.pattern}")
        where = f"{source}:{line}: rule {name!r}"
        if name in seen:
            raise ConfigError(f"{where}: duplicate rule name")
        seen.add(name)
        extra = set(raw) - _RULE_KEYS
        if extra:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(map(str, extra)))}")
        verdict = _verdict(where, raw.get("decision"), tuple(Verdict))
        reason = raw.get("reason", _DEFAULT_REASONS[verdict])
        if not isinstance(reason, str) or not reasons.REASON_RE.match(reason):
            raise ConfigError(f"{where}: 'reason' must be snake_case ({reasons.REASON_RE.pattern})")
        retry_after = raw.get("retry_after")
        if retry_after is not None and (
            isinstance(retry_after, bool) or not isinstance(retry_after, int | float) or retry_after <= 0
        ):
            raise ConfigError(f"{where}: 'retry_after' must be a positive number of seconds")
        rules.append(
            _Rule(
                name=name,
                action=_glob(where, "action", raw.get("action")),
                tenant=_glob(where, "tenant", raw["tenant"]) if "tenant" in raw else None,
                agent=_glob(where, "agent", raw["agent"]) if "agent" in raw else None,
                decision=Decision(
                    verdict, reason, LAYER_RULES, name, version, float(retry_after) if retry_after else None
                ),
            )
        )
    return RuleFilePolicy(rules, default, version, source)


def _rule_nodes(root: yaml.Node | None) -> list[yaml.Node]:
    """The YAML nodes of the rules list, for line numbers in error messages."""
    if not isinstance(root, yaml.MappingNode):
        return []
    for key, value in root.value:
        if getattr(key, "value", None) == "rules" and isinstance(value, yaml.SequenceNode):
            return list(value.value)
    return []


def load_policy(path: Path) -> RuleFilePolicy:
    """Reads and parses a policy file."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read policy {path}: {exc.strerror}") from exc
    return parse_policy(text, str(path))


EXAMPLE_POLICY = """\
# agentaudit example policy (stand-in rule format; see docs/policy.md).
# The first matching rule decides; otherwise `default` does.
version: 1
default: allow
rules:
  # Seed scenario: a noisy tenant's CRM searches are throttled.
  - name: flood_tenant_crm_search
    action: "crm.search"
    tenant: "t_flood"
    decision: stop
    reason: rate_limited_tenant
    retry_after: 1.0
  # Seed scenario: money leaves only with a human's approval.
  - name: refunds_need_approval
    action: "refund.*"
    decision: approval_required
    reason: approval_required
  # Nobody deletes customer records through an agent.
  - name: no_customer_deletes
    action: "crm.delete*"
    decision: stop
    reason: stopped_by_rule
"""
