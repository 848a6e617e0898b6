"""The console's listeners: one uvicorn server per ``collector.console_listen`` address, inside the collector's loop.

uvicorn runs as a task of the collector's event loop (no thread, no process), so a page's reads share the
collector's FleetControl and store. Its own signal handling is turned off: the collector's owner (the CLI) owns
SIGINT and SIGTERM and stops the collector, which stops the console first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Generator, Sequence
from typing import TYPE_CHECKING

import uvicorn
from starlette.routing import BaseRoute

from gateway.config.collector import DEFAULT_CONSOLE_LISTEN
from gateway.console.auth import Sessions
from gateway.console.web import Console, console_app
from gateway.errors import ConfigError
from gateway.identity import Operator

if TYPE_CHECKING:
    from gateway.collector.app import Collector

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # the collector's owner handles signals


class ConsoleServer:
    """The web console of one collector (a collector surface: started after the fleet, stopped before it).

    Args:
        extra_routes: mounted on every listener as they are (Slack's interaction endpoint, for one).
        listen: overrides ``collector.console_listen`` (``agentaudit dev --console-listen``).
    """

    def __init__(self, extra_routes: Sequence[BaseRoute] = (), listen: Sequence[str] | None = None) -> None:
        self._extra = tuple(extra_routes)
        self._listen = None if listen is None else tuple(listen)
        self.console: Console | None = None
        self.bound: list[str] = []
        self._servers: list[tuple[_Server, asyncio.Task[None]]] = []
        self.secure = False

    async def start(self, collector: Collector) -> None:
        """Binds each listener (a default address that is taken is only a warning) and starts serving."""
        cfg = collector.config
        assert collector.fleet is not None and collector.store is not None
        configured = self._listen if self._listen is not None else cfg.console_listen
        addresses = DEFAULT_CONSOLE_LISTEN if configured is None else configured
        if not addresses:
            return
        sessions = Sessions(collector.fleet.db, cfg.operator, cfg.console.session_ttl_s, dict(cfg.console.header_roles))
        if not cfg.operator.tokens and not cfg.console.header_roles:
            log.warning(
                "console: no collector.operator.tokens and no collector.console.header_roles: nobody can sign in"
            )
        self.secure = cfg.tls is not None
        self.console = Console(collector.fleet, collector.store, sessions, secure=self.secure)
        trusted = set(cfg.console.trusted_header_listen)
        for address in addresses:
            host, _, port = address.rpartition(":")
            try:
                sock = _bind(host.strip("[]"), int(port))
            except OSError as exc:
                if configured is None:
                    log.warning(
                        "console: cannot listen on the default %s (%s); set collector.console_listen",
                        address,
                        exc.strerror,
                    )
                    continue
                raise ConfigError(f"collector.console_listen: cannot listen on {address}: {exc.strerror}") from exc
            app = console_app(self.console, trust_headers=address in trusted, extra_routes=self._extra)
            config = uvicorn.Config(
                app,
                log_level="warning",
                lifespan="off",
                access_log=False,
                server_header=False,
                proxy_headers=False,
                ssl_certfile=str(cfg.tls.cert) if cfg.tls else None,
                ssl_keyfile=str(cfg.tls.key) if cfg.tls else None,
            )
            server = _Server(config)
            task = asyncio.create_task(server.serve(sockets=[sock]), name=f"console-{address}")
            self._servers.append((server, task))
            while not server.started and not task.done():  # noqa: ASYNC110 - uvicorn offers only a flag
                await asyncio.sleep(0.01)
            if task.done():
                task.result()
            bound = f"{host}:{sock.getsockname()[1]}"
            self.bound.append(bound)
            log.info(
                "console on %s://%s%s", self.scheme, bound, " (identity headers trusted)" if address in trusted else ""
            )

    @property
    def scheme(self) -> str:
        return "https" if self.secure else "http"

    @property
    def url(self) -> str:
        """The first listener's URL ("" when no console serves)."""
        return f"{self.scheme}://{self.bound[0]}" if self.bound else ""

    async def one_time_link(self, operator: Operator) -> str:
        """A sign-in URL for ``operator`` that works once, on any replica (``agentaudit dev`` prints it)."""
        if self.console is None or not self.bound:
            return ""
        return f"{self.url}/login/once/{await self.console.sessions.one_time_link(operator)}"

    async def aclose(self) -> None:
        """Stops every listener (in-flight requests finish first)."""
        servers, self._servers = self._servers, []
        for server, _ in servers:
            server.should_exit = True
        for _, task in servers:
            with contextlib.suppress(asyncio.CancelledError):
                try:
                    await asyncio.wait_for(task, 10)
                except TimeoutError:
                    task.cancel()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock
