"""Prometheus metrics: every name in one place, and the HTTP exposition (``metrics.listen``).

Conventions: the ``agentaudit_`` prefix, ``_total`` for counters, base units in the name (``_seconds``,
``_bytes``), and only low-cardinality labels (decision, reason, layer, method, webhook format): never a run,
tenant, actor or action name, which are unbounded and belong in the journal. docs/operations.md lists them all.

Values that are state rather than events (backlog, pending approvals) are read when Prometheus scrapes, through
:func:`observe_state`, so the request path pays nothing for them.

The metric types come from ``prometheus_client.metrics`` without running the package's ``__init__``, which
imports the HTTP exposition and what it needs (``http.server``, ``wsgiref``, ``urllib.request``, ``email``,
``html``, ``gzip``; the process, platform and GC collectors): ~3 MB of a sidecar's memory, paid whether or not
``metrics.listen`` is set (issue 20 part 1; tests/test_footprint.py). The package's ``__init__`` runs, into the
same module object, the first time anything else is asked of it: :func:`serve` does, before it listens, so
/metrics exposes what it always did.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import logging
import sys
import threading
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

log = logging.getLogger(__name__)


class _DeferredPackage(types.ModuleType):
    """A package whose ``__init__`` has not run yet: it runs on the first attribute asked for that the module does
    not have and that is not one of its submodules.

    Its ``__path__`` and ``__spec__`` are set (``importlib.util.module_from_spec``), so its submodules import
    without it; a submodule asked for as an attribute (``package.sub``, or ``from . import sub`` inside the
    package) is imported and returned, as after a normal import whose ``__init__`` imported it. ``from package
    import name`` or ``package.name`` run the ``__init__`` first, once. While it runs the module is an ordinary one;
    if it fails, the next access runs it again and raises again, as a failed import would.
    """

    _init_lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name != "__all__":
            raise AttributeError(name)
        if self._is_submodule(name):
            return importlib.import_module(f"{self.__name__}.{name}")
        with _DeferredPackage._init_lock:
            if type(self) is _DeferredPackage:  # not run by another thread meanwhile
                spec = self.__spec__
                assert spec is not None and spec.loader is not None
                self.__class__ = types.ModuleType  # type: ignore[assignment] # an ordinary module from now on
                try:
                    spec.loader.exec_module(self)
                except BaseException:
                    self.__class__ = _DeferredPackage
                    raise
        return types.ModuleType.__getattribute__(self, name)

    def _is_submodule(self, name: str) -> bool:
        return importlib.machinery.PathFinder.find_spec(f"{self.__name__}.{name}", self.__path__) is not None


def _defer_init(package: str) -> None:
    """Puts ``package`` into ``sys.modules`` with its ``__init__`` deferred (:class:`_DeferredPackage`).

    Nothing changes if it is imported already, or is not a regular package on disk (then importing a submodule
    runs the ``__init__`` as usual).
    """
    if package in sys.modules:
        return
    spec = importlib.util.find_spec(package)  # locates it without running anything
    if spec is None or spec.loader is None or not spec.submodule_search_locations:
        return
    module = importlib.util.module_from_spec(spec)
    module.__class__ = _DeferredPackage
    sys.modules[package] = module


_defer_init("prometheus_client")
from prometheus_client.metrics import (  # noqa: E402 - after _defer_init, so the package's __init__ does not run
    Counter,
    Enum,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
)

# The ``*_created`` timestamp series double the exposition and nothing here reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Latency buckets from 250 µs (an allow on an idle sidecar) to 5 s (a commit stuck behind a locked database).
_LATENCY_BUCKETS = (0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

BUILD_INFO = Info("agentaudit_build", "Version of the running agentaudit.")
HEALTH_STATE = Enum(
    "agentaudit_health_state",
    "What readiness reports: starting, serving, broken (a problem is open) or stopping.",
    states=["starting", "serving", "broken", "stopping"],
)

# Decisions and requests.
DECISIONS = Counter(
    "agentaudit_decisions_total",
    "Decide answers by decision, reason and layer.",
    ["decision", "reason", "layer"],
)
FAIL_CLOSED = Counter(
    "agentaudit_fail_closed_total", "Decide answers of stop/audit_unavailable because the journal failed."
)
VIOLATIONS = Counter("agentaudit_violations_total", "Results reported for actions that were not allowed.")
INVALID_REQUESTS = Counter("agentaudit_invalid_requests_total", "Requests refused as INVALID_ARGUMENT.", ["method"])
REQUEST_SECONDS = Histogram(
    "agentaudit_request_duration_seconds",
    "Time to answer a gRPC request (Decide includes the durable journal commit), by method.",
    ["method"],
    buckets=_LATENCY_BUCKETS,
)

# The journal.
JOURNAL_COMMIT_SECONDS = Histogram(
    "agentaudit_journal_commit_duration_seconds",
    "Time of one journal transaction (insert and fsync'd commit of a batch).",
    buckets=_LATENCY_BUCKETS,
)
JOURNAL_BATCH_ENTRIES = Histogram(
    "agentaudit_journal_batch_entries",
    "Entries per journal transaction (group commit).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)
JOURNAL_ENTRIES = Counter("agentaudit_journal_entries_total", "Entries committed to the journal.")
JOURNAL_BYTES = Counter(
    "agentaudit_journal_appended_bytes_total", "Bytes of entries and signatures committed to the journal."
)
JOURNAL_COMMIT_FAILURES = Counter(
    "agentaudit_journal_commit_failures_total", "Journal transactions that failed (their entries were not recorded)."
)

# Policy and approvals.
POLICY_INFO = Gauge("agentaudit_policy_info", "The policy version in force (value 1).", ["version"])
POLICY_RELOADS = Counter(
    "agentaudit_policy_reloads_total", "Policy reload attempts by result (applied or rejected).", ["result"]
)
APPROVALS_PENDING = Gauge("agentaudit_approvals_pending", "Approval requests waiting for a human.")

# Forwarding to the collector.
FORWARD_BACKLOG_ENTRIES = Gauge(
    "agentaudit_forwarder_backlog_entries", "Journal entries the collector has not acknowledged yet."
)
FORWARD_BACKLOG_AGE_SECONDS = Gauge(
    "agentaudit_forwarder_backlog_age_seconds", "How long the oldest unacknowledged entry has been waiting (0: none)."
)
FORWARD_UPLOADED_ENTRIES = Counter(
    "agentaudit_forwarder_uploaded_entries_total", "Entries the collector acknowledged (cosigned)."
)
FORWARD_UPLOAD_FAILURES = Counter(
    "agentaudit_forwarder_upload_failures_total",
    "Failed forwarding attempts by reason (a gRPC status, rejected_<code>, note or io).",
    ["reason"],
)

# The fleet control channel (gateway.sidecar.control).
CONTROL_CONNECTED = Gauge(
    "agentaudit_control_connected",
    "1 while the control stream to the collector is open and its complete kill-switch set applied, else 0.",
)
CONTROL_APPLIED = Counter(
    "agentaudit_control_messages_applied_total", "Control messages applied (and journaled), by kind.", ["kind"]
)
CONTROL_REFUSED = Counter(
    "agentaudit_control_messages_refused_total",
    "Control messages refused, by word (forged, wrong_origin, stale, replayed, or the change's refusal).",
    ["refused"],
)
CONTROL_SECONDS_SINCE_CONTACT = Gauge(
    "agentaudit_control_seconds_since_contact",
    "0 while the control stream is open and current; otherwise seconds since the collector was last heard.",
)
CONTROL_REPORTED_ENTRIES = Counter(
    "agentaudit_control_reported_entries_total", "Approval journal entries pushed to the collector on the stream."
)
CONTROL_REPORTS_DROPPED = Counter(
    "agentaudit_control_reports_dropped_total",
    "Approval entries not pushed because the report queue was full (forwarding delivers them).",
)

# The collector.
COLLECTOR_INGESTED_ENTRIES = Counter(
    "agentaudit_collector_ingested_entries_total", "Entries verified and stored (resent duplicates excluded)."
)
COLLECTOR_BATCHES = Counter("agentaudit_collector_batches_total", "Batches accepted by Ingest.")
COLLECTOR_REJECTIONS = Counter(
    "agentaudit_collector_rejections_total",
    "Batches refused by Ingest, by reason (a reject code, invalid or overloaded).",
    ["reason"],
)

COLLECTOR_CONTROL_STREAMS = Gauge(
    "agentaudit_collector_control_streams", "Sidecar control streams connected to this collector process."
)
COLLECTOR_CONTROL_MESSAGES_SENT = Counter(
    "agentaudit_collector_control_messages_sent_total",
    "Signed control messages sent to sidecars, by kind (kill_switch_set, kill_switch, approval_vote).",
    ["kind"],
)
COLLECTOR_CONTROL_ACKS_REFUSED = Counter(
    "agentaudit_collector_control_acks_refused_total",
    "Control messages a sidecar acknowledged as refused, by its word (forged, replayed, stale, wrong_origin, a "
    "reason such as approval_already_resolved, or other).",
    ["refused"],
)
COLLECTOR_CONTROL_HELLOS_REFUSED = Counter(
    "agentaudit_collector_control_hellos_refused_total",
    "Control streams refused at the hello, by why (forged, stale, unknown_origin, invalid, timeout).",
    ["why"],
)
COLLECTOR_CONTROL_REPORT_ENTRIES = Counter(
    "agentaudit_collector_control_report_entries_total",
    "Approval entries reported on control streams, by outcome (applied: changed the fleet tables; refused: did "
    "not verify against the origin's keys).",
    ["outcome"],
)

# Alerts.
ALERT_DELIVERIES = Counter("agentaudit_alert_deliveries_total", "Alerts a webhook accepted (2xx).", ["webhook_format"])
ALERT_FAILURES = Counter(
    "agentaudit_alert_failures_total",
    "Alerts given up on: attempts exhausted or a non-retryable answer (4xx other than 429).",
    ["webhook_format"],
)
ALERT_RETRIES = Counter(
    "agentaudit_alert_retries_total", "Alert delivery attempts that failed and were retried.", ["webhook_format"]
)
ALERTS_DROPPED = Counter(
    "agentaudit_alerts_dropped_total",
    "Alerts dropped undelivered: a webhook's queue was full, or shutdown came first.",
    ["webhook_format"],
)

_policy_lock = threading.Lock()
_policy_version: str | None = None


def set_policy_version(version: str) -> None:
    """Points ``agentaudit_policy_info`` at the version now in force (one series at a time)."""
    global _policy_version  # noqa: PLW0603 - one process-wide gauge, like the metrics themselves
    with _policy_lock:
        if _policy_version == version:
            return
        if _policy_version is not None:
            POLICY_INFO.remove(_policy_version)
        POLICY_INFO.labels(version).set(1)
        _policy_version = version


def observe_state(gauge: Gauge, read: Callable[[], float]) -> None:
    """Makes ``gauge`` report ``read()`` at scrape time (from the HTTP thread: ``read`` must only read)."""
    gauge.set_function(read)


def serve(listen: str) -> tuple[WSGIServer, threading.Thread]:
    """Starts the /metrics HTTP server on ``HOST:PORT`` (port 0 picks one); returns it for ``shutdown``."""
    from prometheus_client import start_http_server  # noqa: PLC0415 - runs the package's __init__ (module docstring)

    host, _, port = listen.rpartition(":")
    server, thread = start_http_server(int(port), addr=host.strip("[]"))
    log.info("serving Prometheus metrics on http://%s:%d/metrics", host, server.server_port)
    return server, thread
