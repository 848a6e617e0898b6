"""Builds the sidecar from configuration and runs it, starting and stopping parts in a fixed order.

Probes first (``start_probes``): the health-only listener, reporting "starting", and the /metrics server, so a
slow or failing start is visible. Then ``start``: keys → policy check → journal lock and writer (opens, checks
origin, resumes seq/chain) → reader → policy manager, its limit state replayed from the journal → journal_started
event → policy watch and SIGHUP → shared limit store (``limits.store``, if set) → approvals → forwarding (and
the embedded collector) → the fleet control channel (``control:``, if enabled) → gRPC server (GatewayService,
health, reflection) → health SERVING. :func:`run` retries a start that failed on the policy or the journal when
``health.retry_start_s`` is set, reporting NOT_SERVING meanwhile (docs/operations.md).

Stop (the reverse, so no acknowledged decision is lost): health NOT_SERVING → stop accepting RPCs and drain
in-flight ones (grace period) → the control channel → forwarding → close the shared limit store → stop policy
reloads → flush and close the journal writer → close the reader → release the lock → probes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import faulthandler
import fcntl
import gc
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING

import grpc
from grpc_health.v1 import health_pb2_grpc

from gateway import __version__, metrics, reasons
from gateway.alerts import AlertDispatcher, journal_alert
from gateway.api.gateway_service import SERVICE_NAME, GatewayServicer, generic_handler
from gateway.api.operator_service import SERVICE_NAME as OPERATOR_SERVICE_NAME
from gateway.api.operator_service import OperatorServicer, operator_handler
from gateway.config import CollectorConfig, Config, OperatorConfig
from gateway.config.sidecar import is_key_text, non_loopback_tcp
from gateway.errors import AgentAuditError, ConfigError, SigningKeyError
from gateway.journal.state import TrustedState
from gateway.journal.store import JournalReader
from gateway.journal.writer import JournalWriter
from gateway.redaction import Redactor, load_hmac_key
from gateway.rpc import health, telemetry
from gateway.rpc.auth import Authenticator
from gateway.rpc.net import prepare_unix_socket
from gateway.rpc.reflection import add_reflection
from gateway.sidecar.approvals import ApprovalBook
from gateway.sidecar.control import HEALTH_COMPONENT as CONTROL_HEALTH
from gateway.sidecar.control import ControlClient
from gateway.sidecar.forwarder import Forwarder, GrpcUpstream
from gateway.sidecar.killswitch import KillSwitchBoard
from gateway.sidecar.policy_manager import PolicyManager, load_document
from gateway.sidecar.reconcile import report_state_mismatches
from gateway.sidecar.recorder import AuditRecorder
from gateway.sidecar.retention import RetentionJob
from gateway.sidecar.selfcheck import TamperGate, check_tail, report_tamper
from gateway.sidecar.shared_limits import RedisLimits
from gateway.signing import Ed25519Signer, Verifier, load_signer, load_verifier, parse_verifier

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer  # the /metrics server's type: http.server is imported by serve()

    # Imported where `forward.target: embedded` starts one (dev): a sidecar forwarding to a remote collector, the
    # production case, never loads the collector's store, ingest and fleet code (~3 MiB; tests/test_footprint.py).
    from gateway.collector.app import Collector
    from gateway.console.server import ConsoleServer

log = logging.getLogger(__name__)

HEALTH_SERVICE_NAME = "grpc.health.v1.Health"


def _lock_journal(journal: Path) -> IO[bytes]:
    """Takes an exclusive lock so only one sidecar ever writes a journal (the single-writer invariant)."""
    journal.parent.mkdir(parents=True, exist_ok=True)
    handle = open(journal.with_name(journal.name + ".lock"), "ab")  # noqa: SIM115 - held for the process life
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise ConfigError(f"journal {journal} is in use by another agentaudit process") from None
    return handle


def _tls(config: OperatorConfig) -> grpc.ServerCredentials | None:
    """Mutual TLS for the operator's TCP listeners: a client certificate signed by the configured CA is required."""
    if config.tls is None:
        return None
    try:
        key, cert, ca = (p.read_bytes() for p in (config.tls.key, config.tls.cert, config.tls.client_ca))
    except OSError as exc:
        raise ConfigError(f"operator.tls: cannot read {exc.filename}: {exc.strerror}") from exc
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)


def _remove_unix_sockets(addresses: list[str]) -> None:
    for address in addresses:
        if address.startswith("unix://"):
            with contextlib.suppress(OSError):
                Path(address[len("unix://") :]).unlink()


class Sidecar:
    """The running sidecar: owns every component and their start/stop order."""

    def __init__(self, config: Config, *, console_listen: tuple[str, ...] | None = ()) -> None:
        self.config = config
        # The embedded collector's web console (``agentaudit dev``): its listeners; empty: none; None: the default
        # 127.0.0.1:7421 (a taken port only warns).
        self.console_listen = console_listen
        self.console: ConsoleServer | None = None
        self.bound: list[str] = []
        self.health = health.Health([SERVICE_NAME])
        self.health_bound: list[str] = []
        self.metrics_port = 0
        self.stage = ""  # the start step in progress or failed: keys, policy, journal, api
        self._server: grpc.aio.Server | None = None
        self._gateway: GatewayServicer | None = None
        self._health_server: grpc.aio.Server | None = None
        self._metrics_server: WSGIServer | None = None
        self._telemetry: telemetry.Telemetry | None = None
        # The parts, public so a test can drive them (they are None until ``start`` reaches them).
        self.writer: JournalWriter | None = None
        self.reader: JournalReader | None = None
        self.recorder: AuditRecorder | None = None
        self._lock: IO[bytes] | None = None
        self.policy: PolicyManager | None = None
        self.approvals: ApprovalBook | None = None
        self.switches: KillSwitchBoard | None = None
        self.operator_bound: list[str] = []
        self._operator_server: grpc.aio.Server | None = None
        self._alerts: AlertDispatcher | None = None
        self.forwarder: Forwarder | None = None
        self.control: ControlClient | None = None
        self.tamper_gate: TamperGate | None = None
        self.retention: RetentionJob | None = None
        self.shared_limits: RedisLimits | None = None
        self._collector: Collector | None = None
        self._trusted: TrustedState | None = None
        self._sockets: list[str] = []

    async def start_probes(self) -> None:
        """Starts what lets a supervisor watch the start: health listener ("starting") and /metrics."""
        enable_fault_tracebacks()
        cfg = self.config
        metrics.BUILD_INFO.info({"version": __version__})
        await self.health.publish()
        if cfg.health.listen:
            self._health_server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
            health_pb2_grpc.add_HealthServicer_to_server(self.health.servicer, self._health_server)
            self.health_bound = self._listen(self._health_server, cfg.health.listen, None)
            await self._health_server.start()
            log.info("serving grpc.health.v1.Health on %s", ", ".join(self.health_bound))
        if cfg.metrics.listen:
            try:
                self._metrics_server, _ = metrics.serve(cfg.metrics.listen)
            except OSError as exc:
                raise ConfigError(f"metrics.listen: cannot listen on {cfg.metrics.listen}: {exc.strerror}") from exc
            self.metrics_port = self._metrics_server.server_port

    async def start(self) -> None:
        """Starts every component; on failure, stops what was started (probes excepted) and re-raises."""
        try:
            await self._start()
        except BaseException:
            await self._stop_core()
            raise

    async def _start(self) -> None:
        signer, redactor = self._load_keys()
        self.stage = health.POLICY
        load_document(self.config.policy.path)  # refuse a bad policy before touching the journal
        self.stage = health.JOURNAL
        await self._open_journal(signer, redactor)
        self.stage = "api"
        await self._start_services(signer)
        await self._serve()
        self.stage = ""
        for stage in RETRYABLE_STAGES:
            self.health.report(stage, "")  # a retried start succeeded
        await self.health.started()
        log.info("serving %s on %s (journal %s)", SERVICE_NAME, ", ".join(self.bound), self.config.journal.path)
        if self.operator_bound:
            log.info("serving %s on %s", OPERATOR_SERVICE_NAME, ", ".join(self.operator_bound))

    def _load_keys(self) -> tuple[Ed25519Signer, Redactor]:
        cfg = self.config
        self.stage = "keys"
        signer = load_signer(cfg.journal.signing_key)
        audit = cfg.audit
        redactor = Redactor.create(
            load_hmac_key(audit.hmac_key), audit.redact_fields, audit.hash_args, audit.detectors.enabled()
        )
        self._telemetry = telemetry.from_config(cfg.telemetry, signer.name)
        return signer, redactor

    async def _open_journal(self, signer: Ed25519Signer, redactor: Redactor) -> None:
        """The lock, the single writer (resumes seq and chain), the reader and the recorder over them."""
        cfg = self.config
        self._lock = _lock_journal(cfg.journal.path)
        self.writer = JournalWriter(
            cfg.journal.path,
            signer,
            max_batch=cfg.journal.max_batch,
            busy_timeout_ms=cfg.journal.busy_timeout_ms,
            on_health=lambda problem: self.health.report(health.JOURNAL, problem),
            probe_interval_s=cfg.journal.probe_interval_s,
            on_lost=lambda _why: self._alert_journal_lost(signer.name),
            signing=cfg.audit.signing,
        )
        await self.writer.start()
        self.reader = JournalReader(cfg.journal.path)
        self.recorder = AuditRecorder(self.writer, self.reader, redactor)

    def _alert_journal_lost(self, origin: str) -> None:
        """The writer lost its journal files (removed or replaced) and fails closed for good: page someone.

        The writer has logged why, once; the alert carries the reason code and ``policy_rule`` ``journal_lost``.
        """
        if self._alerts is None:
            return
        self._alerts.notify(journal_alert(reason=reasons.AUDIT_UNAVAILABLE, rule="journal_lost", origin=origin))

    async def _start_services(self, signer: Ed25519Signer) -> None:
        """Kill switches, policy, the journal_started event, approvals, alerts, forwarding, retention."""
        cfg = self.config
        assert self.writer is not None and self.reader is not None and self.recorder is not None
        recorder = self.recorder
        if cfg.alerts.webhooks:  # first: the self-check below may alert
            self._alerts = AlertDispatcher(cfg.alerts)
            await self._alerts.start()
        # The self-check reads the tail as found, before this start appends anything, and reports before anything
        # else reads the entries (a body edited into non-JSON stops the limits replay below; it is reported first).
        tail = await check_tail(self.reader, cfg.journal.path, signer.verifier, self.writer.size)
        self.tamper_gate = await report_tamper(
            tail, recorder, self.reader, on_tamper=cfg.journal.on_tamper, origin=signer.name, alerts=self._alerts
        )
        # State follows signatures (ADR 0012): what is enforced is derived from the signed events; rows that
        # disagree are ignored, logged and journaled once.
        self._trusted = await self.reader.trusted_state(signer.name, signer.verifier.verify, {signer.key_id})
        await report_state_mismatches(recorder, self._trusted)
        self.switches = KillSwitchBoard(recorder)
        await self.switches.load(self.reader, self._trusted.switches)
        self.policy = PolicyManager(
            cfg.policy.path, recorder, poll_interval_s=cfg.policy.watch_interval_s, switches=self.switches
        )
        await self.policy.replay_limits(self.reader)  # before the first Decide: a restart never widens a limit
        await recorder.record_started(
            {
                "version": __version__,
                "pid": os.getpid(),
                "key_id": signer.key_id.hex(),
                "policy_version": self.policy.engine.version,
                "resumed_at_seq": self.writer.size,
            }
        )
        await self.policy.start()
        if cfg.limits.store:  # every replica draws from one limit (ADR 0015); the replayed state is the fallback
            self.shared_limits = RedisLimits(cfg.limits.store, cfg.limits.key_prefix, cfg.limits.timeout_ms)
            await self.shared_limits.start()
        policy = self.policy
        self.approvals = ApprovalBook(recorder, self.reader, policy_version=lambda: policy.engine.version)
        await self.approvals.start(self._trusted.approvals if self._trusted else None)
        metrics.observe_state(metrics.APPROVALS_PENDING, self.approvals.pending_count)
        if cfg.forward.target:
            await self._start_forwarding(cfg, signer, recorder)
        if cfg.control.enabled:
            await self._start_control(cfg, signer, recorder)
        self.retention = RetentionJob(
            self.reader,
            recorder,
            self.forwarder,
            retention_days=cfg.audit.retention_days,
            interval_s=cfg.audit.prune_interval_s,
        )
        await self.retention.start()

    async def _serve(self) -> None:
        """The agent-facing server (GatewayService, health, reflection) and, if configured, the operator's."""
        cfg = self.config
        assert self.policy is not None and self.recorder is not None and self.approvals is not None
        forwarder, tamper = self.forwarder, self.tamper_gate

        def gate() -> str:
            """Why Decide must refuse: a detected rollback or start-up tampering awaiting acknowledgement, or ''."""
            return (forwarder.blocked if forwarder is not None else "") or (tamper.blocked if tamper else "")

        servicer = GatewayServicer(
            self.policy, self.recorder, cfg.server, self.approvals, self._alerts, gate, self.shared_limits, self.control
        )
        self._gateway = servicer
        options = [
            ("grpc.max_receive_message_length", cfg.server.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
        self._server = grpc.aio.server(options=options)
        self._server.add_generic_rpc_handlers([generic_handler(servicer, self._telemetry)])
        health_pb2_grpc.add_HealthServicer_to_server(self.health.servicer, self._server)
        add_reflection(self._server, [SERVICE_NAME, HEALTH_SERVICE_NAME])
        self.bound = self._listen(self._server, cfg.server.listen, None)
        for address in non_loopback_tcp(cfg.server.listen):
            # The agent API has no TLS: anyone who reaches the address can propose actions and report results.
            log.warning(
                "server.listen %s is not a loopback address and the agent API has no TLS: other machines can call "
                "it in plaintext; prefer a unix socket or 127.0.0.1",
                address,
            )
        if cfg.operator.listen:
            await self._serve_operator(options)
        await self._server.start()
        if cfg.server.unix_socket_mode:
            mode = int(cfg.server.unix_socket_mode, 8)
            for address in self.bound:
                if address.startswith("unix://"):
                    os.chmod(address[len("unix://") :], mode)

    async def _serve_operator(self, options: list[tuple[str, int]]) -> None:
        cfg = self.config
        assert self.recorder is not None and self.approvals is not None and self.switches is not None
        assert self.policy is not None and self.reader is not None
        operator = OperatorServicer(
            Authenticator(cfg.operator),
            self.recorder,
            self.approvals,
            self.switches,
            self.policy,
            self.reader,
            self.forwarder,
            self.tamper_gate,
        )
        self._operator_server = grpc.aio.server(options=options)
        self._operator_server.add_generic_rpc_handlers([operator_handler(operator, self._telemetry)])
        health_pb2_grpc.add_HealthServicer_to_server(self.health.servicer, self._operator_server)
        add_reflection(self._operator_server, [OPERATOR_SERVICE_NAME, HEALTH_SERVICE_NAME])
        self.operator_bound = self._listen(self._operator_server, cfg.operator.listen, _tls(cfg.operator))
        await self._operator_server.start()

    async def _start_forwarding(self, cfg: Config, signer: Ed25519Signer, recorder: AuditRecorder) -> None:
        """Starts the embedded collector (dev) if asked, then the forwarder."""
        assert self.writer is not None and self.reader is not None
        target = cfg.forward.target
        if target == "embedded":
            from gateway.collector.app import Collector  # noqa: PLC0415 - see the TYPE_CHECKING import

            socket_path = cfg.journal.path.parent / "collector.sock"
            surfaces: list[ConsoleServer] = []
            if self.console_listen != ():
                from gateway.console.server import ConsoleServer  # noqa: PLC0415 - the console extra is optional

                self.console = ConsoleServer()
                surfaces.append(self.console)
            self._collector = Collector(
                CollectorConfig(
                    listen=(f"unix://{socket_path}",),
                    store=f"sqlite://{cfg.forward.collector_db.resolve()}",
                    witness_key=cfg.forward.witness_key,
                    # The console signs in the sidecar's operators (their tokens); no fleet operator API here.
                    operator=dataclasses.replace(cfg.operator, listen=()),
                    console_listen=self.console_listen,
                ),
                embedded=True,
                surfaces=surfaces,
            )
            await self._collector.start()
            assert self._collector.store is not None
            await self._collector.store.register_origin(signer.name, [signer.verifier])
            target = f"unix://{socket_path}"
        self.forwarder = Forwarder(
            self.writer,
            self.reader,
            recorder,
            signer,
            GrpcUpstream(target, cfg.forward.tls),
            batch_max_entries=cfg.forward.batch_max_entries,
            batch_max_age_s=cfg.forward.batch_max_age_s,
            idle_checkpoint_s=cfg.forward.idle_checkpoint_s,
            backoff_initial_s=cfg.forward.backoff_initial_s,
            backoff_max_s=cfg.forward.backoff_max_s,
            fail_closed_on_rollback=cfg.forward.on_rollback == "stop",
            alerts=self._alerts,
        )
        await self.forwarder.start(self._trusted.acked_size if self._trusted else None)
        metrics.observe_state(metrics.FORWARD_BACKLOG_ENTRIES, self.forwarder.backlog_entries)
        metrics.observe_state(metrics.FORWARD_BACKLOG_AGE_SECONDS, self.forwarder.backlog_age_s)

    def _pinned_control_key(self, cfg: Config) -> tuple[str, Verifier]:
        """The control stream's target and the collector control key it pins (the embedded collector's in dev)."""
        control = cfg.control
        if control.collector == "embedded":
            if self._collector is None or self._collector.control_key is None:
                raise ConfigError("control.collector: embedded needs forward.target: embedded")
            return f"unix://{cfg.journal.path.parent / 'collector.sock'}", self._collector.control_key.verifier
        try:
            if is_key_text(control.control_key):
                return control.collector, parse_verifier(control.control_key)
            return control.collector, load_verifier(Path(control.control_key))
        except SigningKeyError as exc:
            raise ConfigError(f"control.control_key: {exc}") from exc

    async def _start_control(self, cfg: Config, signer: Ed25519Signer, recorder: AuditRecorder) -> None:
        """The fleet control channel: what the journal says was applied last, then the stream task."""
        assert self.reader is not None and self.switches is not None and self.approvals is not None
        target, pinned = self._pinned_control_key(cfg)
        trusted = self._trusted
        control = cfg.control
        self.control = ControlClient(
            target,
            cfg.forward.tls if not target.startswith("unix:") else None,
            pinned,
            signer,
            self.reader,
            self.switches,
            self.approvals,
            applied_seq=trusted.control_seqs.get(pinned.name, 0) if trusted else 0,
            switch_seq=trusted.switch_seqs.get(pinned.name, 0) if trusted else 0,
            max_staleness_s=control.max_staleness_s,
            connect_wait_s=control.connect_wait_s,
            backoff_initial_s=control.backoff_initial_s,
            backoff_max_s=control.backoff_max_s,
            keepalive_s=control.keepalive_s,
            on_health=lambda problem: self.health.report(CONTROL_HEALTH, problem),
        )
        recorder.on_approval_entry = self.control.report
        await self.control.start()
        metrics.observe_state(metrics.CONTROL_SECONDS_SINCE_CONTACT, self.control.seconds_since_contact)
        log.info(
            "control channel to collector %s at %s (applied seq %d)", pinned.name, target, self.control.applied_seq
        )

    def _listen(
        self, server: grpc.aio.Server, addresses: tuple[str, ...], tls: grpc.ServerCredentials | None
    ) -> list[str]:
        bound = []
        for address in addresses:
            unix = address.startswith("unix://")
            if unix:
                prepare_unix_socket(Path(address[len("unix://") :]))
            try:
                port = server.add_secure_port(address, tls) if tls and not unix else server.add_insecure_port(address)
            except RuntimeError as exc:  # gRPC's own text only says to set GRPC_VERBOSITY; say what to do instead
                hint = "another process holds it" if not unix else "the socket's directory is not writable"
                raise ConfigError(
                    f"cannot listen on {address}: {hint} (stop it, or choose another address with --listen)"
                ) from exc
            if port == 0:
                raise ConfigError(f"cannot listen on {address} (address in use?)")
            bound.append(f"{address.rsplit(':', 1)[0]}:{port}" if not unix and address.endswith(":0") else address)
            self._sockets.extend([address] if unix else [])
        return bound

    async def aclose(self) -> None:
        """Stops in the documented order. Safe to call more than once or after a failed start."""
        await self.health.stopping()
        await self._stop_core()
        if self._health_server is not None:
            await self._health_server.stop(None)
            self._health_server = None
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
            self._metrics_server = None
        _remove_unix_sockets(self._sockets)

    async def _stop_core(self) -> None:
        """Stops everything ``start`` started, in reverse order."""
        if self._operator_server is not None:
            await self._operator_server.stop(self.config.server.shutdown_grace_s)
            self._operator_server = None
        if self._server is not None:
            started = time.monotonic()
            if self._gateway is not None:
                self._gateway.drain()  # Session streams end once answered; else they would hold the whole grace
            await self._server.stop(self.config.server.shutdown_grace_s)
            log.info("gRPC server drained in %.3fs", time.monotonic() - started)
            self._server = None
        if self.retention is not None:
            await self.retention.aclose()
            self.retention = None
        if self.control is not None:
            if self.recorder is not None:
                self.recorder.on_approval_entry = None
            await self.control.aclose()
            self.control = None
        if self.forwarder is not None:
            await self.forwarder.aclose()  # final flush: appends receipts, so before the writer closes
            self.forwarder = None
        if self._collector is not None:
            await self._collector.aclose()
            self._collector = None
        if self._alerts is not None:
            await self._alerts.aclose()
            self._alerts = None
        if self.approvals is not None:
            await self.approvals.aclose()
        if self.shared_limits is not None:
            await self.shared_limits.aclose()
            self.shared_limits = None
        if self.policy is not None:
            await self.policy.aclose()
        if self.writer is not None:
            await self.writer.aclose()
            self.writer = None
            self.recorder = None
        if self.reader is not None:
            await self.reader.aclose()
            self.reader = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None
        if self._telemetry is not None:
            self._telemetry.shutdown()
            self._telemetry = None


def enable_fault_tracebacks() -> None:
    """A fatal signal (SIGBUS, SIGSEGV, ...) writes every thread's traceback to stderr, then ends the process.

    SQLite stores into the mapped ``-shm``; if that file turns immutable or read-only *during* a transaction (after
    the journal's checks, docs/adr/0014-shm-faults.md) the store is SIGBUS. Without this the process vanishes with
    no log line; with it the log says where, and the default action still ends the process for the supervisor to
    restart. faulthandler restores the default action before re-raising, so a fault can never turn into a loop of
    handler and re-fault (a handler that only returned would re-execute the faulting store forever: a hang).
    """
    if faulthandler.is_enabled():
        return  # already on (PYTHONFAULTHANDLER, python -X faulthandler, pytest)
    try:
        faulthandler.enable(file=sys.stderr, all_threads=True)
    except (AttributeError, ValueError, OSError) as exc:  # stderr replaced by an object with no file descriptor
        log.warning("fatal-signal tracebacks are off: %s", exc)
        return
    handler = signal.getsignal(signal.SIGBUS)
    if handler not in (signal.SIG_DFL, None):
        log.warning("a Python handler for SIGBUS is installed (%r): a fault in SQLite would hang, not exit", handler)


def install_event_loop_policy() -> None:
    """Uses uvloop when available: it cuts the per-call overhead of grpc.aio by about 15%."""
    try:
        import uvloop  # noqa: PLC0415 - optional speed-up
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def freeze_startup_objects() -> None:
    """Moves everything allocated at start-up out of the garbage collector's view.

    The long-lived objects (modules, descriptors, config, policy) would otherwise be re-scanned by every full
    collection on the request path; profiling showed ~3% of the loop thread in the collector.
    """
    gc.collect()
    gc.freeze()


RETRYABLE_STAGES = (health.POLICY, health.JOURNAL)


async def start_with_retries(sidecar: Sidecar, stop: asyncio.Event) -> bool:
    """Starts the sidecar; returns False if ``stop`` was set before it could.

    A failure on the policy or the journal is retried every ``health.retry_start_s`` when that is set, while
    the health service reports NOT_SERVING with the reason logged; otherwise (and for any other failure) the
    error propagates and the process exits.
    """
    retry_s = sidecar.config.health.retry_start_s
    while True:
        try:
            await sidecar.start()
        except (AgentAuditError, OSError) as exc:
            stage = sidecar.stage
            if not retry_s or stage not in RETRYABLE_STAGES:
                raise
            sidecar.health.report(stage, str(exc))
            log.error("start failed on the %s; retrying in %.1fs", stage, retry_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), retry_s)
            if stop.is_set():
                return False
            continue
        return True
