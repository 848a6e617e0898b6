"""Operator kill switches: engaged and released through the operator API, persisted, every change journaled.

A switch stops every Decide in its scope (global, or one tenant, agent or run) from the next request on; the
policy engine consults the board before anything else. Switches live in the ``kill_switches`` state table and
survive restarts (``gateway.journal.state`` owns its SQL); each engage or release is a signed ``kill_switch``
event committed in the same transaction.

A fleet switch (engaged on the collector, applied by the control channel, ``gateway.sidecar.control``) carries
``via``, the collector's control key name, and the control message's seq in its event. There is one switch per
scope and target: a fleet engage at a key a local operator engaged takes it over (the collector then owns its
release), and a local operator cannot release a fleet switch (it would come back with the next complete set).
"""

from __future__ import annotations

from gateway.errors import FailedPreconditionError, NotFoundError
from gateway.journal import state as state_tables
from gateway.journal.state import EngagedSwitch
from gateway.journal.store import JournalReader
from gateway.journal.writer import now_nanos
from gateway.sidecar.recorder import AuditRecorder, RecordedEvent


class KillSwitchBoard:
    """The engaged operator switches, in memory (loaded at start) and in the state table."""

    def __init__(self, recorder: AuditRecorder) -> None:
        self._recorder = recorder
        self._switches: dict[tuple[str, str], EngagedSwitch] = {}

    async def load(self, reader: JournalReader, trusted: list[EngagedSwitch] | None = None) -> None:
        """Loads the switches engaged by earlier runs: ``trusted`` (derived from the signed kill_switch events,
        ``state.trusted_state``) when given, else the table's rows."""
        for switch in trusted if trusted is not None else await reader.engaged_switches():
            self._switches[(switch.scope, switch.target)] = switch

    def find(self, tenant_id: str, agent_id: str, run_id: str) -> EngagedSwitch | None:
        """The switch that stops this request, if any (global first)."""
        if not self._switches:
            return None
        for key in (("global", ""), ("tenant", tenant_id), ("agent", agent_id), ("run", run_id)):
            switch = self._switches.get(key)
            if switch is not None:
                return switch
        return None

    def find_exact(self, scope: str, target: str) -> EngagedSwitch | None:
        """The switch engaged at exactly this scope and target, if any."""
        return self._switches.get((scope, target))

    def scrubbed(self, reason: str) -> str:
        """A reason as :meth:`engage` stores it (detected values replaced)."""
        return self._recorder.scrub_text(reason)

    def engaged(self) -> list[EngagedSwitch]:
        """Every engaged switch, oldest first."""
        return sorted(self._switches.values(), key=lambda s: s.engaged_ns)

    async def engage(
        self,
        scope: str,
        target: str,
        reason: str,
        operator: str,
        *,
        via: str = "",
        control_seq: int = 0,
        control_kind: str = "",
    ) -> tuple[EngagedSwitch, RecordedEvent]:
        """Engages (or re-engages with a new reason) a switch; journaled with the operator as actor.

        ``via``/``control_seq``/``control_kind``: a fleet switch applied from that collector's control message.
        """
        reason = self._recorder.scrub_text(reason)  # free text: detected PII never reaches the state table
        current = self._switches.get((scope, target))
        if current is not None and current.reason == reason and current.via == via:
            raise FailedPreconditionError(f"kill switch {scope}:{target or '*'} is already engaged")
        switch = EngagedSwitch(scope, target, reason, operator, now_nanos(), via)
        event = await self._recorder.record_kill_switch(
            "engage",
            scope,
            target,
            reason,
            operator,
            switch.engaged_ns,
            state=[state_tables.engage_switch(switch)],
            via=via,
            control_seq=control_seq,
            control_kind=control_kind,
        )
        self._switches[(scope, target)] = switch
        return switch, event

    async def release(
        self,
        scope: str,
        target: str,
        reason: str,
        operator: str,
        *,
        via: str = "",
        control_seq: int = 0,
        control_kind: str = "",
    ) -> RecordedEvent:
        """Releases an engaged switch; journaled with the operator as actor.

        Raises:
            NotFoundError: none is engaged there.
            FailedPreconditionError: it was engaged elsewhere than ``via`` says (a local operator releasing a
                fleet switch, or a collector releasing a local one): release it where it was engaged.
        """
        current = self._switches.get((scope, target))
        if current is None:
            raise NotFoundError(f"no kill switch engaged at {scope}:{target or '*'}")
        if current.via != via:
            where = f"a fleet switch engaged via {current.via}" if current.via else "engaged on this sidecar"
            raise FailedPreconditionError(f"kill switch {scope}:{target or '*'} is {where}; release it there")
        event = await self._recorder.record_kill_switch(
            "release",
            scope,
            target,
            reason,
            operator,
            now_nanos(),
            state=[state_tables.release_switch(scope, target)],
            via=via,
            control_seq=control_seq,
            control_kind=control_kind,
        )
        del self._switches[(scope, target)]
        return event
