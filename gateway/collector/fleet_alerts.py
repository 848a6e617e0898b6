"""The collector's alerts about the fleet, through the sidecar's webhook sinks and formats (``gateway.alerts``).

Three events become alerts (``collector.alerts``, docs/alerts.md "Collector alerts"):

* **rollback or fork evidence** at ingest: a validly signed checkpoint that contradicts the one the collector
  cosigned (the servicer calls :meth:`FleetAlerts.evidence` after the store kept the evidence row);
* **a silent sidecar**: an origin whose newest witnessed batch is older than ``silent_after_s``, checked every
  ``silent_check_s``. The time is the collector's own cosignature timestamp on the origin's latest checkpoint,
  read from the shared store and verified with the witness key, so every replica sees the same value and an
  edited row cannot fake contact. An idle sidecar still sends a heartbeat batch every
  ``forward.idle_checkpoint_s`` (60 s), so ``silent_after_s`` should be a few times that;
* **an approval opened** somewhere in the fleet (:meth:`FleetAlerts.approval_opened`, registered by the fleet
  store in ``FleetControl.on_approval_opened``).

Each is deduplicated: the same evidence (origin, code and the cosigned checkpoint contradicted), the same silence
(origin and last contact) or the same approval gives one alert however often it is seen. The key also makes
the alert's ``event_id``, which is the CloudEvents ``id``, so replicas that each see the same evidence send
events a receiver can de-duplicate. Alerts carry identifiers only, never an approval's args; webhook URLs are
never logged (the dispatcher names a webhook by position and host).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol

from gateway import reasons
from gateway.alerts import Alert, AlertDispatcher
from gateway.collector.store import CollectorStore, CollectorUnavailableError
from gateway.config.alerts import ALERT_DECISIONS
from gateway.config.collector import FleetAlertsConfig
from gateway.ids import rfc3339_nanos
from gateway.journal.note import NoteError, SignedNote, verify_cosignature
from gateway.signing import Verifier

log = logging.getLogger(__name__)

MAX_REMEMBERED = 100_000
"""Deduplication keys kept (oldest forgotten first): bounded memory however long the collector runs."""

LAYER_FLEET = "fleet"
LAYER_AUDIT = "audit"
LAYER_APPROVAL = "approval"
DECISION_STOP, DECISION_APPROVAL_REQUIRED = ALERT_DECISIONS


class OpenedApproval(Protocol):
    """What an approval-opened alert reads: a subset of ``FleetApproval``'s fields (duck-typed)."""

    @property
    def origin(self) -> str: ...
    @property
    def approval_id(self) -> str: ...
    @property
    def tenant_id(self) -> str: ...
    @property
    def agent_id(self) -> str: ...
    @property
    def run_id(self) -> str: ...
    @property
    def step_id(self) -> int: ...
    @property
    def action(self) -> str: ...
    @property
    def policy_rule(self) -> str: ...
    @property
    def policy_version(self) -> str: ...
    @property
    def created_ms(self) -> int: ...


ContactSource = Callable[[], Awaitable[Mapping[str, int | None]]]
"""Another source of last contact per origin, in unix milliseconds (the control channel's)."""


class OriginContact(Protocol):
    """What :func:`contacts_from` reads of ``OriginStatus`` (``FleetControl.origins()``), duck-typed."""

    @property
    def origin(self) -> str: ...
    @property
    def last_contact_ms(self) -> int | None: ...


def contacts_from(origins: Callable[[], Awaitable[Sequence[OriginContact]]]) -> ContactSource:
    """A contact source from ``FleetControl.origins`` (each stream's last contact), for ``FleetAlerts(contacts=)``."""

    async def read() -> Mapping[str, int | None]:
        return {o.origin: o.last_contact_ms for o in await origins()}

    return read


def _digest(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def _alert(*, decision: str, reason: str, layer: str, rule: str, origin: str, event_id: str, at_ms: int) -> Alert:
    return Alert(
        decision=decision,
        reason=reason,
        policy_layer=layer,
        policy_rule=rule,
        policy_version="",
        tenant_id="",
        run_id="",
        step_id=0,
        agent_id="",
        action="",
        event_id=event_id,
        approval_id="",
        timestamp=rfc3339_nanos(at_ms * 1_000_000),
        origin=origin,
    )


class FleetAlerts:
    """Owns the alert dispatcher and the silent check (``start`` / ``aclose``)."""

    def __init__(
        self,
        config: FleetAlertsConfig,
        store: CollectorStore,
        witness: Verifier,
        origins: Sequence[str],
        *,
        contacts: ContactSource | None = None,
        now_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        self._config = config
        self._store = store
        self._witness = witness
        self._origins = tuple(origins)
        self._contacts = contacts
        self._now_ms = now_ms
        self._dispatcher = AlertDispatcher(config.alerts)
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._pending: set[asyncio.Task[None]] = set()
        self._silent_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Starts delivery, then the silent check if ``silent_after_s`` is set."""
        await self._dispatcher.start()
        if self._config.silent_after_s > 0:
            self._silent_task = asyncio.create_task(self._silent_loop(), name="collector-silent-check")

    async def aclose(self) -> None:
        """Stops the silent check, finishes evidence look-ups in flight, then delivers what is queued (5 s)."""
        task, self._silent_task = self._silent_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        await self._dispatcher.aclose()

    def add_contacts(self, source: ContactSource) -> None:
        """Also counts ``source``'s contacts (e.g. ``contacts_from(fleet.origins)``) as hearing from an origin."""
        self._contacts = source

    def _first(self, key: str) -> bool:
        """Whether ``key`` is new (and remembers it)."""
        if key in self._seen:
            self._seen.move_to_end(key)
            return False
        self._seen[key] = None
        if len(self._seen) > MAX_REMEMBERED:
            self._seen.popitem(last=False)
        return True

    # --- rollback and fork evidence -------------------------------------------------------------------------

    def evidence(self, origin: str, code: str, note: str) -> None:
        """A batch was refused as rollback or fork evidence (already stored); alerts once per contradiction.

        Synchronous and never raising, for the servicer: the look-up of the cosigned checkpoint runs in a task
        this object owns.
        """
        task = asyncio.get_running_loop().create_task(self._evidence(origin, code, note))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _evidence(self, origin: str, code: str, note: str) -> None:
        try:
            # A rolled-back sidecar keeps sending new checkpoints that all contradict the same cosigned one: the
            # evidence table keeps each, the alert is one per contradicted checkpoint.
            size, cosigned = await self._store.latest(origin)
        except CollectorUnavailableError:
            size, cosigned = -1, note  # the store is failing: fall back to the note itself
        except Exception:
            log.exception("collector alerts: evidence for %r not alerted", origin)
            return
        key = _digest("evidence", origin, code, cosigned)
        if not self._first(key):
            return
        log.error(
            "collector alert: origin %r sent %s evidence against its cosigned checkpoint of size %d", origin, code, size
        )
        self._dispatcher.notify(
            _alert(
                decision=DECISION_STOP,
                reason=reasons.JOURNAL_RECOVERY_REQUIRED,
                layer=LAYER_AUDIT,
                rule=code,
                origin=origin,
                event_id=f"evidence-{key}",
                at_ms=self._now_ms(),
            )
        )

    # --- silent sidecars ------------------------------------------------------------------------------------

    async def last_contacts(self) -> dict[str, int | None]:
        """Unix ms of each origin's latest witnessed batch (None: nothing held), newest of every source.

        Raises:
            CollectorUnavailableError: the store cannot be read.
        """
        out: dict[str, int | None] = {}
        for origin in self._origins:
            size, note = await self._store.latest(origin)
            out[origin] = None
            if size == 0 or not note:
                continue
            try:
                seconds = verify_cosignature(SignedNote.parse(note), self._witness)
            except NoteError:
                seconds = None
            if seconds is None:  # not cosigned by this witness (a rotated key): no contact we can vouch for
                log.warning("collector alerts: %r's latest checkpoint has no valid cosignature of ours", origin)
                continue
            out[origin] = seconds * 1000
        if self._contacts is not None:
            for origin, at_ms in (await self._contacts()).items():
                if at_ms is not None and origin in out:
                    out[origin] = max(at_ms, out[origin] or 0)
        return out

    async def check_silent(self) -> list[str]:
        """One silent check: alerts (once per silence) for each origin silent too long; returns those origins."""
        now = self._now_ms()
        limit_ms = int(self._config.silent_after_s * 1000)
        alerted = []
        for origin, last in (await self.last_contacts()).items():
            if last is None or now - last < limit_ms:
                continue
            key = _digest("silent", origin, str(last))
            if not self._first(key):
                continue
            log.warning(
                "collector alert: origin %r silent for %.0f s (last witnessed batch %s)",
                origin,
                (now - last) / 1000,
                rfc3339_nanos(last * 1_000_000),
            )
            self._dispatcher.notify(
                _alert(
                    decision=DECISION_STOP,
                    reason=reasons.SIDECAR_SILENT,
                    layer=LAYER_FLEET,
                    rule="silent_after_s",
                    origin=origin,
                    event_id=f"silent-{key}",
                    at_ms=now,
                )
            )
            alerted.append(origin)
        return alerted

    async def _silent_loop(self) -> None:
        while True:
            await asyncio.sleep(self._config.silent_check_s)
            try:
                await self.check_silent()
            except CollectorUnavailableError as exc:
                log.warning("collector alerts: silent check skipped, the store failed: %s", exc)
            except Exception:
                log.exception("collector alerts: silent check failed")

    # --- approvals ------------------------------------------------------------------------------------------

    async def approval_opened(self, approval: OpenedApproval) -> None:
        """An approval was opened on a sidecar of the fleet: alerts once per (origin, approval id).

        Takes any object with ``FleetApproval``'s fields; reads identifiers only, never ``args``.
        """
        key = _digest("approval", approval.origin, approval.approval_id)
        if not self._first(key):
            return
        alert = Alert(
            decision=DECISION_APPROVAL_REQUIRED,
            reason=reasons.APPROVAL_REQUIRED,
            policy_layer=LAYER_APPROVAL,
            policy_rule=approval.policy_rule,
            policy_version=approval.policy_version,
            tenant_id=approval.tenant_id,
            run_id=approval.run_id,
            step_id=approval.step_id,
            agent_id=approval.agent_id,
            action=approval.action,
            event_id=f"approval-{key}",
            approval_id=approval.approval_id,
            timestamp=rfc3339_nanos(approval.created_ms * 1_000_000),
            origin=approval.origin,
        )
        self._dispatcher.notify(alert)
