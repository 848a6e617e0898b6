"""What the gRPC health service reports, so kubelet probes and load balancers can tell starting from broken.

One :class:`Health` owns one ``HealthServicer`` shared by every listener (agent, operator, health-only). Its
services and what they answer:

==================================  ==========  ===========  =====================================
service                             starting    serving      broken
==================================  ==========  ===========  =====================================
``""``, ``agentaudit.v1.Gateway…``  UNKNOWN     SERVING      NOT_SERVING  (readiness)
``liveness``                        SERVING     SERVING      NOT_SERVING only if the journal is broken
==================================  ==========  ===========  =====================================

Readiness uses UNKNOWN, a legal status of grpc.health.v1, for "not ready yet" so a probe client can tell it from
NOT_SERVING ("broken, look at the logs"); Kubernetes treats both as not ready. Liveness fails only for a problem a
restart may cure (the journal cannot be written: a stale lock, a remounted volume); a policy that does not load is
fixed by its author, and restarting would only hide the reason.

Problems are named by component (``journal``, ``policy``; the collector's ``store``) and cleared by the component
that raised them. The collector uses the same states: readiness NOT_SERVING while its database is unavailable.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer

from gateway import metrics

log = logging.getLogger(__name__)

LIVENESS = "liveness"
JOURNAL = "journal"
POLICY = "policy"
STORE = "store"  # the collector's database

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
_UNKNOWN = health_pb2.HealthCheckResponse.UNKNOWN


class Health:
    """The sidecar's (or collector's) health state, published to a shared ``HealthServicer``."""

    def __init__(self, readiness_services: Iterable[str], *, export_metric: bool = True) -> None:
        self.servicer = HealthServicer()
        # One agentaudit_health_state per process: an embedded collector (dev) leaves it to the sidecar.
        self._export_metric = export_metric
        self._readiness = ("", *readiness_services)
        self._started = False
        self._stopping = False
        self._problems: dict[str, str] = {}
        self._publishing: set[asyncio.Task[None]] = set()  # strong references until each update is done

    @property
    def state(self) -> str:
        """``starting``, ``serving`` or ``broken`` (what readiness reports, in words)."""
        if self._problems:
            return "broken"
        return "serving" if self._started else "starting"

    @property
    def problems(self) -> dict[str, str]:
        """Component → message of every current problem."""
        return dict(self._problems)

    async def publish(self) -> None:
        """Sets every service's status from the current state."""
        if self._stopping:
            return
        state = self.state
        readiness = {"starting": _UNKNOWN, "serving": _SERVING, "broken": _NOT_SERVING}[state]
        for name in self._readiness:
            await self.servicer.set(name, readiness)
        await self.servicer.set(LIVENESS, _NOT_SERVING if JOURNAL in self._problems else _SERVING)
        if self._export_metric:
            metrics.HEALTH_STATE.state(state)

    async def started(self) -> None:
        """Start-up finished: ready unless a problem is open."""
        self._started = True
        await self.publish()

    async def stopping(self) -> None:
        """Shutdown began: every service answers NOT_SERVING from now on, whatever happens next."""
        self._stopping = True
        if self._export_metric:
            metrics.HEALTH_STATE.state("stopping")
        await self.servicer.enter_graceful_shutdown()

    def report(self, component: str, problem: str) -> None:
        """Opens (non-empty ``problem``) or clears (empty) a problem; callable from synchronous code on the loop."""
        before = self._problems.get(component, "")
        if problem == before:
            return
        if problem:
            self._problems[component] = problem
            log.error("health: %s is broken: %s", component, problem)
        else:
            del self._problems[component]
            log.warning("health: %s recovered", component)
        # Publishing awaits the servicer's lock; schedule it so synchronous callers (the journal writer) can call.
        task = asyncio.get_running_loop().create_task(self.publish())
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)
