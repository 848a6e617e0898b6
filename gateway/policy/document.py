"""The policy file: parsed once into immutable rule objects, with every error naming file, line and rule.

The reference is docs/policy.md. Layers are evaluated in the fixed order ``kill_switch → access → limits →
approval → rules`` by :mod:`gateway.policy.engine`; this module only parses and checks.
"""

from __future__ import annotations

import fnmatch
import hashlib
import math
import re
from dataclasses import dataclass
from typing import Any

import yaml

from gateway import reasons
from gateway.canonical import CanonicalizationError, canonical_json
from gateway.errors import ConfigError, InvalidRequestError
from gateway.identity import normalise_identity
from gateway.policy.approval_rules import MAX_APPROVALS_REQUIRED, check_required
from gateway.policy.cel import Condition, ConditionError, compile_condition
from gateway.policy.model import Verdict

MODES = ("enforce", "shadow")
KILL_SWITCH_SCOPES = ("global", "tenant", "agent", "run")
"""What a kill switch can cover (policy ``kill_switch`` rules and operator switches alike)."""
LIMIT_KEYS = ("tenant", "agent", "action", "run")
ON_STORE_ERROR_STOP = "stop"
ON_STORE_ERROR_LOCAL = "local"
ON_STORE_ERRORS = (ON_STORE_ERROR_STOP, ON_STORE_ERROR_LOCAL)
"""What a limit does when the shared limit store does not answer: stop (``limits_unavailable``) or use the
sidecar's own in-process state (ADR 0015)."""
ACTOR_TYPES = ("user", "service", "agent")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
_DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)$")
_RATE_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*/\s*(s|m|h|d)$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class GlobSet:
    """A set of fnmatch-style globs compiled into one regular expression."""

    def __init__(self, patterns: tuple[str, ...]) -> None:
        self.patterns = patterns
        self.matches_all = "*" in patterns
        self._regex = re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns)) if patterns else None

    def match(self, value: str) -> bool:
        """Whether ``value`` matches any pattern."""
        return self.matches_all or (self._regex is not None and self._regex.match(value) is not None)


ANY = GlobSet(("*",))


@dataclass(frozen=True)
class Selector:
    """Which requests a rule applies to: action, tenant and agent globs (all default to ``*``)."""

    actions: GlobSet = ANY
    tenants: GlobSet = ANY
    agents: GlobSet = ANY

    def applies(self, action: str, tenant: str, agent: str) -> bool:
        """Whether the rule applies to this action, tenant and agent."""
        return self.actions.match(action) and self.tenants.match(tenant) and self.agents.match(agent)


@dataclass(frozen=True)
class KillSwitch:
    """A switch engaged in the policy file: stops everything in its scope."""

    name: str
    scope: str
    target: GlobSet  # tenant, agent or run ids (unused for global)
    reason: str
    shadow: bool


@dataclass(frozen=True)
class Binding:
    """Grants the actions of its roles to the agents, tenants and actor types it selects."""

    name: str
    actions: GlobSet
    tenants: GlobSet
    agents: GlobSet
    actor_types: frozenset[str] | None
    when: Condition | None


@dataclass(frozen=True)
class Access:
    """RBAC: the first binding that grants the action allows it; otherwise ``default``."""

    default_allow: bool
    bindings: tuple[Binding, ...]


@dataclass(frozen=True)
class Limit:
    """A rate limit (token bucket), a step budget per run, or a count or sum budget per window."""

    name: str
    kind: str  # rate | steps | count | sum
    selector: Selector
    key: tuple[str, ...]
    reason: str
    shadow: bool
    fingerprint: str
    rate: float = 0.0  # tokens per second
    burst: float = 0.0
    maximum: float = 0.0
    window_s: float = 0.0
    field: tuple[str, ...] = ()
    on_store_error: str = ON_STORE_ERROR_STOP  # only read when ``limits.store`` is configured


@dataclass(frozen=True)
class Rule:
    """An approval rule or a custom rule: applies to selected requests whose ``when`` holds."""

    name: str
    layer: str
    selector: Selector
    when: Condition | None
    verdict: Verdict
    reason: str
    shadow: bool
    approvers: tuple[str, ...] = ()
    expires_s: int | None = None  # approval rules: how long the ask waits for an answer (None with ``parks``)
    parks: bool = False  # approval rules with ``expires_in: never``: the ask waits until someone answers it
    use_within_s: int | None = None  # approval rules: how long a grant stays usable (None: ``expires_in``)
    approvals_required: int = 1  # approval rules: how many distinct approvers must grant it (four-eyes: 2)


@dataclass(frozen=True)
class PolicyDocument:
    """A parsed, checked policy."""

    source: str
    version: str
    mode: str
    kill_switches: tuple[KillSwitch, ...]
    access: Access
    limits: tuple[Limit, ...]
    approvals: tuple[Rule, ...]
    rules: tuple[Rule, ...]

    @property
    def shadow(self) -> bool:
        """Whether the whole policy only records what it would have decided."""
        return self.mode == "shadow"


class _Lines:
    """Line numbers of YAML nodes by path, for error messages."""

    def __init__(self, root: yaml.Node | None) -> None:
        self._lines: dict[tuple[Any, ...], int] = {}
        if root is not None:
            self._walk(root, ())

    def _walk(self, node: yaml.Node, path: tuple[Any, ...]) -> None:
        self._lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                self._lines[(*path, key.value)] = key.start_mark.line + 1
                self._walk(value, (*path, key.value))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self._walk(item, (*path, index))

    def line(self, path: tuple[Any, ...]) -> int:
        while path and path not in self._lines:
            path = path[:-1]
        return self._lines.get(path, 1)


class _Parser:
    def __init__(self, source: str, lines: _Lines) -> None:
        self.source = source
        self.lines = lines

    def error(self, path: tuple[Any, ...], what: str, message: str) -> ConfigError:
        return ConfigError(f"{self.source}:{self.lines.line(path)}: {what}: {message}")

    def mapping(self, value: Any, path: tuple[Any, ...], what: str, allowed: set[str]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.error(path, what, "must be a mapping")
        unknown = [k for k in value if k not in allowed]
        if unknown:
            # At the first unknown key's own line (document order), not the line where the mapping starts.
            listed = ", ".join(sorted(map(str, unknown)))
            raise self.error(
                (*path, str(unknown[0])), what, f"unknown key(s) {listed} (allowed: {', '.join(sorted(allowed))})"
            )
        return value

    def rule(self, raw: Any, layer: str, index: int) -> str:
        """How an error names a rule before it is checked: by its name when it has a usable one, else its position."""
        name = raw.get("name") if isinstance(raw, dict) else None
        if isinstance(name, str) and _NAME_RE.match(name):
            return f"{layer} {name!r}"
        return f"{layer} #{index + 1}"

    def items(self, doc: dict[str, Any], section: str) -> list[Any]:
        value = doc.get(section) or []
        if not isinstance(value, list):
            raise self.error((section,), section, "must be a list of rules")
        return value

    def name(self, raw: dict[str, Any], path: tuple[Any, ...], layer: str, seen: set[str]) -> str:
        name = raw.get("name")
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise self.error(path, f"{layer} rule #{path[-1] + 1}", f"'name' must match {_NAME_RE.pattern}")
        if name in seen:
            raise self.error(path, f"{layer} rule {name!r}", "duplicate rule name")
        seen.add(name)
        return name

    def globs(self, raw: dict[str, Any], key: str, path: tuple[Any, ...], what: str) -> GlobSet:
        value = raw.get(key, ["*"])
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
            raise self.error((*path, key), what, f"'{key}' must be a glob or a non-empty list of globs")
        return GlobSet(tuple(value))

    def selector(self, raw: dict[str, Any], path: tuple[Any, ...], what: str) -> Selector:
        return Selector(
            self.globs(raw, "actions", path, what),
            self.globs(raw, "tenants", path, what),
            self.globs(raw, "agents", path, what),
        )

    def reason(self, raw: dict[str, Any], path: tuple[Any, ...], what: str, default: str) -> str:
        reason = raw.get("reason", default)
        if not isinstance(reason, str) or not reasons.REASON_RE.match(reason):
            raise self.error((*path, "reason"), what, f"'reason' must be snake_case ({reasons.REASON_RE.pattern})")
        return reason

    def flag(self, raw: dict[str, Any], key: str, path: tuple[Any, ...], what: str) -> bool:
        value = raw.get(key, False)
        if not isinstance(value, bool):
            raise self.error((*path, key), what, f"'{key}' must be true or false")
        return value

    def when(self, raw: dict[str, Any], path: tuple[Any, ...], what: str, required: bool) -> Condition | None:
        if "when" not in raw:
            if required:
                raise self.error(path, what, "'when' (a CEL condition) is required")
            return None
        try:
            return compile_condition(raw["when"])
        except ConditionError as exc:
            raise self.error((*path, "when"), what, str(exc)) from None

    def number(self, raw: dict[str, Any], key: str, path: tuple[Any, ...], what: str, minimum: float) -> float:
        value = raw.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < minimum:
            raise self.error((*path, key), what, f"'{key}' must be a number ≥ {minimum}")
        return float(value)

    def duration(self, value: Any, path: tuple[Any, ...], what: str, key: str) -> float:
        seconds = parse_duration(value)
        if seconds is None or seconds <= 0:
            raise self.error(path, what, f"'{key}' must be a positive duration like 30s, 15m, 24h or 7d")
        return seconds


def parse_duration(value: Any) -> float | None:
    """Seconds in a duration (``250ms``, ``30s``, ``15m``, ``24h``, ``7d`` or a number of seconds), or None."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value) if math.isfinite(value) and value >= 0 else None
    match = _DURATION_RE.match(value) if isinstance(value, str) else None
    return None if match is None else float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def _fingerprint(raw: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(raw)).hexdigest()[:16]


def _kill_switches(p: _Parser, doc: dict[str, Any], seen: set[str]) -> tuple[KillSwitch, ...]:
    out = []
    for index, raw in enumerate(p.items(doc, "kill_switch")):
        path = ("kill_switch", index)
        p.mapping(raw, path, p.rule(raw, "kill_switch rule", index), {"name", "scope", "target", "reason", "shadow"})
        name = p.name(raw, path, "kill_switch", seen)
        what = f"kill_switch rule {name!r}"
        scope = raw.get("scope", "global")
        if scope not in KILL_SWITCH_SCOPES:
            raise p.error((*path, "scope"), what, f"'scope' must be one of {', '.join(KILL_SWITCH_SCOPES)}")
        if scope == "global":
            if "target" in raw:
                raise p.error(path, what, "a global switch takes no 'target'")
            target = ANY
        elif "target" not in raw:
            raise p.error(path, what, f"a {scope} switch needs 'target' ({scope} id glob or list)")
        else:
            target = p.globs(raw, "target", path, what)
        reason = p.reason(raw, path, what, reasons.KILL_SWITCH_ENGAGED)
        out.append(KillSwitch(name, scope, target, reason, p.flag(raw, "shadow", path, what)))
    return tuple(out)


def _access(p: _Parser, doc: dict[str, Any], seen: set[str]) -> Access:
    if "access" not in doc:
        raise p.error((), "access", "section is required (RBAC denies by default); use 'access: {default: allow}'")
    raw = p.mapping(doc["access"] or {}, ("access",), "access", {"default", "roles", "bindings"})
    default = raw.get("default", "deny")
    if default not in ("allow", "deny"):
        raise p.error(("access", "default"), "access", "'default' must be allow or deny")
    roles_raw = raw.get("roles") or {}
    if not isinstance(roles_raw, dict):
        raise p.error(("access", "roles"), "access", "'roles' must map role names to {actions: [...]}")
    roles: dict[str, tuple[str, ...]] = {}
    for role, spec in roles_raw.items():
        path = ("access", "roles", role)
        what = f"access role {role!r}"
        if not isinstance(role, str) or not _NAME_RE.match(role):
            raise p.error(path, "access", f"role name {role!r} must match {_NAME_RE.pattern}")
        p.mapping(spec, path, what, {"actions"})
        roles[role] = p.globs(spec, "actions", path, what).patterns
    bindings = []
    bindings_raw = raw.get("bindings") or []
    if not isinstance(bindings_raw, list):
        raise p.error(("access", "bindings"), "access", "'bindings' must be a list")
    for index, spec in enumerate(bindings_raw):
        path = ("access", "bindings", index)
        p.mapping(
            spec,
            path,
            p.rule(spec, "access binding", index),
            {"name", "roles", "tenants", "agents", "actor_types", "when"},
        )
        name = p.name(spec, path, "access binding", seen)
        what = f"access binding {name!r}"
        granted = spec.get("roles")
        if not isinstance(granted, list) or not granted:
            raise p.error((*path, "roles"), what, "'roles' must be a non-empty list of role names")
        missing = [r for r in granted if r not in roles]
        if missing:
            raise p.error((*path, "roles"), what, f"unknown role(s) {', '.join(map(str, missing))}")
        actor_types = spec.get("actor_types")
        if actor_types is not None and (
            not isinstance(actor_types, list) or not actor_types or any(t not in ACTOR_TYPES for t in actor_types)
        ):
            raise p.error((*path, "actor_types"), what, f"'actor_types' must list some of {', '.join(ACTOR_TYPES)}")
        bindings.append(
            Binding(
                name,
                GlobSet(tuple(dict.fromkeys(a for r in granted for a in roles[r]))),
                p.globs(spec, "tenants", path, what),
                p.globs(spec, "agents", path, what),
                frozenset(actor_types) if actor_types else None,
                p.when(spec, path, what, required=False),
            )
        )
    return Access(default == "allow", tuple(bindings))


_RATE_LIMIT_REASONS = {
    "tenant": reasons.RATE_LIMITED_TENANT,
    "agent": reasons.RATE_LIMITED_AGENT,
    "action": reasons.RATE_LIMITED_ACTION,
    "run": reasons.RATE_LIMITED_RUN,
}


def _default_limit_reason(kind: str, key: tuple[str, ...]) -> str:
    if kind == "rate":
        return _RATE_LIMIT_REASONS[key[0]] if len(key) == 1 else reasons.RATE_LIMITED
    return reasons.STEP_BUDGET_EXCEEDED if kind == "steps" else reasons.BUDGET_EXCEEDED


def _limits(p: _Parser, doc: dict[str, Any], seen: set[str]) -> tuple[Limit, ...]:
    common = {"name", "type", "actions", "tenants", "agents", "key", "reason", "shadow", "on_store_error"}
    extra = {"rate": {"rate", "burst"}, "steps": {"max"}, "count": {"max", "window"}, "sum": {"max", "window", "field"}}
    out = []
    for index, raw in enumerate(p.items(doc, "limits")):
        path = ("limits", index)
        p.mapping(raw, path, p.rule(raw, "limits rule", index), common | {k for v in extra.values() for k in v})
        name = p.name(raw, path, "limits", seen)
        what = f"limits rule {name!r}"
        kind = raw.get("type")
        if kind not in extra:
            raise p.error((*path, "type"), what, f"'type' must be one of {', '.join(extra)}")
        p.mapping(raw, path, what, common | extra[kind])
        key_raw = raw.get("key", ["run"] if kind == "steps" else ["tenant"])
        key_list = [key_raw] if isinstance(key_raw, str) else key_raw
        if not isinstance(key_list, list) or not key_list or any(k not in LIMIT_KEYS for k in key_list):
            raise p.error((*path, "key"), what, f"'key' must list some of {', '.join(LIMIT_KEYS)}")
        key = tuple(dict.fromkeys(key_list))
        if kind == "steps" and key != ("run",):
            raise p.error((*path, "key"), what, "a steps budget is always per run (key: [run])")
        fields: dict[str, Any] = {}
        if kind == "rate":
            fields["rate"] = _rate(p, raw.get("rate"), (*path, "rate"), what)
            fields["burst"] = p.number(raw, "burst", path, what, 1) if "burst" in raw else max(1.0, fields["rate"])
        else:
            fields["maximum"] = p.number(raw, "max", path, what, 0)
        if kind in ("count", "sum"):
            fields["window_s"] = p.duration(raw.get("window"), (*path, "window"), what, "window")
        if kind == "sum":
            field = raw.get("field")
            if not isinstance(field, str) or not re.match(
                r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$", field
            ):
                raise p.error((*path, "field"), what, "'field' must be a dotted path into args, e.g. amount")
            fields["field"] = tuple(field.split("."))
        on_store_error = raw.get("on_store_error", ON_STORE_ERROR_STOP)
        if on_store_error not in ON_STORE_ERRORS:
            raise p.error((*path, "on_store_error"), what, f"'on_store_error' must be {' or '.join(ON_STORE_ERRORS)}")
        out.append(
            Limit(
                name=name,
                kind=kind,
                selector=p.selector(raw, path, what),
                key=key,
                reason=p.reason(raw, path, what, _default_limit_reason(kind, key)),
                shadow=p.flag(raw, "shadow", path, what),
                # The fallback is not the limit: changing it keeps the limit's state (and its shared store keys).
                fingerprint=_fingerprint({k: v for k, v in raw.items() if k != "on_store_error"}),
                on_store_error=on_store_error,
                **fields,
            )
        )
    return tuple(out)


def _rate(p: _Parser, value: Any, path: tuple[Any, ...], what: str) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    match = _RATE_RE.match(value) if isinstance(value, str) else None
    if match is None or float(match.group(1)) <= 0:
        raise p.error(path, what, "'rate' must be a positive rate like 10/s, 100/m or 1000/h")
    return float(match.group(1)) / _UNIT_SECONDS[match.group(2)]


def _rules(
    p: _Parser, doc: dict[str, Any], section: str, seen: set[str], verdicts: tuple[Verdict, ...]
) -> tuple[Rule, ...]:
    allowed = {"name", "actions", "tenants", "agents", "when", "reason", "shadow", *_APPROVAL_KEYS}
    if len(verdicts) > 1:
        allowed.add("decision")
    out = []
    for index, raw in enumerate(p.items(doc, section)):
        path = (section, index)
        p.mapping(raw, path, p.rule(raw, f"{section} rule", index), allowed)
        name = p.name(raw, path, section, seen)
        what = f"{section} rule {name!r}"
        verdict = verdicts[0]
        if len(verdicts) > 1:
            try:
                verdict = Verdict(raw.get("decision"))
            except ValueError:
                verdict = Verdict.ALLOW
            if verdict not in verdicts:
                raise p.error((*path, "decision"), what, f"'decision' must be one of {', '.join(verdicts)}")
        approvers: tuple[str, ...] = ()
        expires_s, parks, use_within_s, required = None, False, None, 1
        if verdict is Verdict.APPROVAL_REQUIRED:
            raw_approvers = raw.get("approvers", [])
            if not isinstance(raw_approvers, list) or not all(isinstance(a, str) and a for a in raw_approvers):
                raise p.error((*path, "approvers"), what, "'approvers' must be a list of identities or role:NAME")
            approvers = tuple(raw_approvers)
            expires_s, parks, use_within_s = _approval_times(p, raw, path, what)
            required = _approvals_required(p, raw, path, what)
        elif any(key in raw for key in _APPROVAL_KEYS):
            message = (
                "'approvers', 'approvals_required', 'expires_in' and 'use_within' apply only to approval_required rules"
            )
            raise p.error(path, what, message)
        default_reason = reasons.APPROVAL_REQUIRED if verdict is Verdict.APPROVAL_REQUIRED else reasons.STOPPED_BY_RULE
        out.append(
            Rule(
                name=name,
                layer=section,
                selector=p.selector(raw, path, what),
                when=p.when(raw, path, what, required=section == "rules"),
                verdict=verdict,
                reason=p.reason(raw, path, what, default_reason),
                shadow=p.flag(raw, "shadow", path, what),
                approvers=approvers,
                expires_s=expires_s,
                parks=parks,
                use_within_s=use_within_s,
                approvals_required=required,
            )
        )
    return tuple(out)


_APPROVAL_TIMES = ("expires_in", "use_within")
_APPROVAL_KEYS = ("approvers", "approvals_required", *_APPROVAL_TIMES)


def _approvals_required(p: _Parser, raw: dict[str, Any], path: tuple[Any, ...], what: str) -> int:
    """An approval rule's ``approvals_required`` (four-eyes), checked by the one approval-rules module."""
    if "approvals_required" not in raw:
        return 1
    value = raw["approvals_required"]
    try:
        required = check_required(value, "approvals_required")
    except InvalidRequestError:
        message = f"'approvals_required' must be a whole number from 1 to {MAX_APPROVALS_REQUIRED}, got {value!r}"
        raise p.error((*path, "approvals_required"), what, message) from None
    # A list of identities only (no role:NAME) must name enough distinct people to ever reach the grant.
    approvers = raw.get("approvers") or []
    people = {normalise_identity(a) for a in approvers}
    if approvers and not any(a.startswith("role:") for a in approvers) and len(people) < required:
        message = f"'approvals_required' is {required} but 'approvers' names only {len(people)} distinct identities"
        raise p.error((*path, "approvals_required"), what, message)
    return required


NEVER = "never"
"""``expires_in: never``: the approval parks until someone answers it (a grant still has its use-by time)."""


def _approval_times(
    p: _Parser, raw: dict[str, Any], path: tuple[Any, ...], what: str
) -> tuple[int | None, bool, int | None]:
    """An approval rule's ``expires_in`` (seconds, or None when it parks) and ``use_within`` (None: as expires_in).

    A grant always lapses: ``use_within`` has no ``never``, so a grant nobody uses is abandoned in the end.
    """
    expires_in = raw.get("expires_in", "1h")
    parks = expires_in == NEVER
    expires_s = None
    if not parks:
        seconds = parse_duration(expires_in)
        if seconds is None or seconds <= 0:
            message = "'expires_in' must be a positive duration like 30s, 15m, 24h or 7d, or never"
            raise p.error((*path, "expires_in"), what, message)
        expires_s = max(1, int(seconds))  # whole seconds, as journaled; never rounded down to no time at all
    use_within_s = None
    if "use_within" in raw:
        use_within_s = max(1, int(p.duration(raw["use_within"], (*path, "use_within"), what, "use_within")))
    return expires_s, parks, use_within_s


_TOP_LEVEL = {"version", "mode", "kill_switch", "access", "limits", "approval", "rules"}


def parse_policy(text: str, source: str = "<policy>") -> PolicyDocument:
    """Parses and checks a policy document.

    Raises:
        ConfigError: naming the file, line, layer and rule of the first problem found.
    """
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {exc}") from exc
    p = _Parser(source, _Lines(root))
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}:1: policy: must be a mapping (version, mode, kill_switch, access, ...)")
    p.mapping(doc, (), "policy", _TOP_LEVEL)
    if doc.get("version") != 1:
        raise p.error(("version",), "policy", f"'version' must be 1, got {doc.get('version')!r}")
    mode = doc.get("mode", "enforce")
    if mode not in MODES:
        raise p.error(("mode",), "policy", f"'mode' must be enforce or shadow, got {mode!r}")
    try:
        version = "sha256:" + hashlib.sha256(canonical_json(doc)).hexdigest()
    except CanonicalizationError as exc:
        raise ConfigError(f"{source}: policy is not plain JSON-compatible data: {exc}") from exc
    seen: set[str] = set()
    return PolicyDocument(
        source=source,
        version=version,
        mode=mode,
        kill_switches=_kill_switches(p, doc, seen),
        access=_access(p, doc, seen),
        limits=_limits(p, doc, seen),
        approvals=_rules(p, doc, "approval", seen, (Verdict.APPROVAL_REQUIRED,)),
        rules=_rules(p, doc, "rules", seen, (Verdict.STOP, Verdict.APPROVAL_REQUIRED)),
    )
