"""The collector process (``agentaudit collector --config FILE``) and the embedded collector of ``agentaudit dev``.

Configuration (YAML; parsed by :mod:`gateway.config.collector`)::

    collector:
      listen: ["127.0.0.1:7430"]          # unix:///path or HOST:PORT
      store: "postgresql://user@db/agentaudit"   # or sqlite:///abs/path/collector.db (the embedded default)
      witness_key: witness.key            # the collector's Ed25519 key (C2SP signer key, mode 0600)
      origins:                            # every sidecar journal it accepts, with its public key(s)
        - origin: agentaudit-dev/host
          keys: [sidecar-1.pub]
      max_batch_entries: 10000
      max_inflight: 8
      retention_days: 90                  # optional: delete events older than this (absent: keep forever)
      prune_interval_s: 3600              # how often retention runs
      control_key: control.key            # signs control_log rows and control messages (default: witness_key)
      operator:                           # the fleet operator API (docs/fleet.md); the sidecar's operator shape
        listen: ["127.0.0.1:7432"]
        tokens: [{identity: alice, roles: [approver], sha256: ...}]
      tls: {cert: tls.crt, key: tls.key, client_ca: sidecars-ca.crt}   # optional; client_ca optional too
      health_listen: ["0.0.0.0:7431"]     # optional: plaintext grpc.health.v1 only (kubelet probes)
      console_listen: ["127.0.0.1:7421"]  # the web console (gateway.console, a surface the CLI passes); []: off
      console: {trusted_header_listen: [], header_roles: {}, session_ttl_s: 28800}

Start order: witness and control keys → store (migrations) → origins registered → fleet tables
(:class:`~gateway.collector.fleet.FleetControl`) → fleet alerts (webhooks, silent check; told of opened approvals
and of control-channel contact) → the control streams' act feed → gRPC server (collector, control, health,
reflection; TLS on TCP when ``tls`` is set; keepalive pings every 10 s) →
health-only listener → the fleet operator API (if ``operator.listen`` is set) → surfaces (the web console,
``gateway.console``, given by the caller) → retention task (if ``retention_days`` is set). Stop: retention task
cancelled → health NOT_SERVING → surfaces → operator API drained → control streams ended (UNAVAILABLE) → server
drained
→ health listener → fleet alerts (queued ones delivered, 5 s) → fleet and store closed. Stateless apart from its
database, so several replicas can serve one address.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import grpc
from grpc_health.v1 import health_pb2_grpc

from gateway.collector.control_service import KEEPALIVE_OPTIONS, ControlServicer, control_handler
from gateway.collector.control_service import SERVICE_NAME as CONTROL_SERVICE_NAME
from gateway.collector.fleet import FleetControl, open_fleet
from gateway.collector.fleet_alerts import FleetAlerts, contacts_from
from gateway.collector.operator_api import FleetOperatorServicer, operator_credentials, operator_handlers
from gateway.collector.service import SERVICE_NAME, CollectorServicer, collector_handler
from gateway.collector.store import CollectorStore, CollectorUnavailableError
from gateway.config import CollectorConfig
from gateway.config.collector import CollectorTlsConfig
from gateway.config.sidecar import non_loopback_tcp
from gateway.errors import ConfigError
from gateway.rpc.auth import Authenticator
from gateway.rpc.health import STORE, Health
from gateway.rpc.net import collector_server_credentials, prepare_unix_socket
from gateway.rpc.reflection import add_reflection
from gateway.signing import Ed25519Signer, Verifier, load_signer, load_verifier

log = logging.getLogger(__name__)


def open_store(url: str, check_workers: int | None = None) -> CollectorStore:
    """The store for a URL: sqlite:///path or postgresql://...

    ``check_workers`` (``collector.check_workers``): processes checking large batches' entries. Unset, the SQLite
    store (the embedded collector of ``agentaudit dev``, one sidecar) checks in its own thread, and PostgreSQL (a
    fleet's collector) uses one worker per core but one (ADR 0018).
    """
    if url.startswith("sqlite:///"):
        from gateway.collector.sqlite_store import SqliteCollectorStore  # noqa: PLC0415

        return SqliteCollectorStore(Path(url[len("sqlite://") :]), check_workers=check_workers or 0)
    from gateway.collector.postgres_store import PostgresCollectorStore  # noqa: PLC0415

    return PostgresCollectorStore(url, check_workers=check_workers)


NANOS_PER_DAY = 86_400 * 10**9


async def retention_loop(
    store: CollectorStore, retention_days: int, interval_s: float, *, now_ns: Callable[[], int] = time.time_ns
) -> None:
    """Deletes events older than ``retention_days`` now, then every ``interval_s`` seconds, until cancelled.

    A database failure is logged and retried at the next interval.
    """
    while True:
        cutoff = now_ns() - retention_days * NANOS_PER_DAY
        try:
            deleted = await store.prune(cutoff)
        except CollectorUnavailableError as exc:
            log.warning("collector retention: prune failed, retrying in %.0fs: %s", interval_s, exc)
        else:
            log.info("collector retention: deleted %d event(s) older than %d day(s)", deleted, retention_days)
        await asyncio.sleep(interval_s)


def _listen(server: grpc.aio.Server, addresses: tuple[str, ...], tls: CollectorTlsConfig | None) -> list[str]:
    """Binds ``addresses``; TCP ones over TLS when ``tls`` is set (a unix socket is local: never TLS)."""
    credentials = collector_server_credentials(tls) if tls is not None else None
    bound = []
    for address in addresses:
        unix = address.startswith("unix://")
        if unix:
            prepare_unix_socket(Path(address[len("unix://") :]))
        if credentials is not None and not unix:
            port = server.add_secure_port(address, credentials)
        else:
            port = server.add_insecure_port(address)
        if port == 0:
            raise ConfigError(f"collector cannot listen on {address}")
        bound.append(f"{address.rsplit(':', 1)[0]}:{port}" if address.endswith(":0") else address)
    return bound


class Surface(Protocol):
    """Something more the collector serves over its fleet and store (the web console): started after the fleet
    and the gRPC servers, stopped before them."""

    async def start(self, collector: Collector) -> None:
        """Starts serving; ``collector.fleet`` and ``collector.store`` are open."""

    async def aclose(self) -> None:
        """Stops serving."""


class Collector:
    """A running collector (own gRPC server)."""

    def __init__(self, config: CollectorConfig, *, embedded: bool = False, surfaces: Sequence[Surface] = ()) -> None:
        self.config = config
        self.surfaces = tuple(surfaces)
        self._started_surfaces: list[Surface] = []
        self.bound: list[str] = []
        self.health_bound: list[str] = []
        self.store: CollectorStore | None = None
        self.servicer: CollectorServicer | None = None
        self.control: ControlServicer | None = None  # the sidecars' control streams
        self.fleet: FleetControl | None = None
        self.control_key: Ed25519Signer | None = None
        self.operator_bound: list[str] = []
        self._server: grpc.aio.Server | None = None
        self._operator_server: grpc.aio.Server | None = None
        self.alerts: FleetAlerts | None = None  # fleet alerts; FleetControl.on_approval_opened takes approval_opened
        self._health_server: grpc.aio.Server | None = None
        self.health = Health([SERVICE_NAME, CONTROL_SERVICE_NAME], export_metric=not embedded)
        self._retention: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Starts in the documented order; on failure stops what started."""
        try:
            await self._start()
        except BaseException:
            await self.aclose()
            raise

    async def _start(self) -> None:
        cfg = self.config
        witness: Ed25519Signer = load_signer(cfg.witness_key)
        self.store = open_store(cfg.store, cfg.check_workers)
        await self.store.start()
        for origin, key_paths in cfg.origins:
            verifiers: list[Verifier] = [load_verifier(p) for p in key_paths]
            await self.store.register_origin(origin, verifiers)
        self.control_key = witness if cfg.control_key is None else load_signer(cfg.control_key)
        self.fleet = open_fleet(self.store, self.control_key, replica=f"{socket.gethostname()}:{os.getpid()}")
        await self.fleet.start()
        self.alerts = FleetAlerts(cfg.alerts, self.store, witness.verifier, [origin for origin, _ in cfg.origins])
        self.fleet.on_approval_opened.append(self.alerts.approval_opened)
        self.alerts.add_contacts(contacts_from(self.fleet.origins))
        await self.alerts.start()
        self.servicer = CollectorServicer(
            self.store,
            witness,
            max_batch_entries=cfg.max_batch_entries,
            max_inflight=cfg.max_inflight,
            search_tokens=cfg.search_tokens,
            on_store_health=lambda problem: self.health.report(STORE, problem),
            fleet=self.fleet,
            on_evidence=self.alerts.evidence,
        )
        self.control = ControlServicer(self.fleet, self.control_key, ttl_s=cfg.control_ttl_s)
        await self.control.start()
        self._server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 << 20), *KEEPALIVE_OPTIONS])
        self._server.add_generic_rpc_handlers([collector_handler(self.servicer), control_handler(self.control)])
        health_pb2_grpc.add_HealthServicer_to_server(self.health.servicer, self._server)
        add_reflection(self._server, [SERVICE_NAME, CONTROL_SERVICE_NAME])
        self.bound = _listen(self._server, cfg.listen, cfg.tls)
        if cfg.tls is None and (exposed := non_loopback_tcp(cfg.listen)):
            log.warning("collector: %s serves without TLS (collector.tls is not set)", ", ".join(exposed))
        await self._server.start()
        if cfg.operator.listen:
            await self._serve_operator()
        if cfg.health_listen:
            self._health_server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])  # a taken port fails
            health_pb2_grpc.add_HealthServicer_to_server(self.health.servicer, self._health_server)
            self.health_bound = _listen(self._health_server, cfg.health_listen, None)
            await self._health_server.start()
        for surface in self.surfaces:
            await surface.start(self)
            self._started_surfaces.append(surface)
        await self.health.started()
        if cfg.retention_days is not None:
            self._retention = asyncio.create_task(
                retention_loop(self.store, cfg.retention_days, cfg.prune_interval_s), name="collector-retention"
            )
        log.info(
            "collector serving on %s%s (store %s)",
            ", ".join(self.bound),
            "" if cfg.tls is None else " over TLS" + (" with client certificates" if cfg.tls.client_ca else ""),
            cfg.store.split("@")[-1],
        )

    async def _serve_operator(self) -> None:
        """The fleet operator API on its own listener (tokens or mutual TLS, like the sidecar's)."""
        assert self.fleet is not None
        cfg = self.config.operator
        servicer = FleetOperatorServicer(self.fleet, Authenticator(cfg))
        self._operator_server = grpc.aio.server()
        self._operator_server.add_generic_rpc_handlers(operator_handlers(servicer))
        health_pb2_grpc.add_HealthServicer_to_server(self.health.servicer, self._operator_server)
        tls = operator_credentials(cfg)
        for address in cfg.listen:
            unix = address.startswith("unix://")
            if unix:
                prepare_unix_socket(Path(address[len("unix://") :]))
            port = (
                self._operator_server.add_secure_port(address, tls)
                if tls and not unix
                else (self._operator_server.add_insecure_port(address))
            )
            if port == 0:
                raise ConfigError(f"collector.operator cannot listen on {address}")
            self.operator_bound.append(f"{address.rsplit(':', 1)[0]}:{port}" if address.endswith(":0") else address)
        await self._operator_server.start()
        log.info("collector fleet operator API on %s", ", ".join(self.operator_bound))

    async def aclose(self) -> None:
        """Stops retention and serving, then closes the store."""
        task, self._retention = self._retention, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.health.stopping()
        surfaces, self._started_surfaces = self._started_surfaces, []
        for surface in reversed(surfaces):
            await surface.aclose()
        if self._operator_server is not None:
            await self._operator_server.stop(5)
            self._operator_server = None
        if self.control is not None:
            await self.control.aclose()  # ends the control streams at once: their sidecars reconnect elsewhere
            self.control = None
        if self._server is not None:
            await self._server.stop(5)
            self._server = None
        if self.fleet is not None:
            await self.fleet.aclose()
            self.fleet = None
        if self._health_server is not None:
            await self._health_server.stop(None)
            self._health_server = None
        if self.alerts is not None:
            await self.alerts.aclose()  # after the server: no more evidence; before the store: the silent check
            self.alerts = None
        if self.store is not None:
            await self.store.aclose()
            self.store = None
