"""The collector's fleet control plane: approvals across every sidecar, fleet kill switches, the central journal of
operator acts (``control_log``), and the wake-up that carries an act to every replica's control streams.

Every surface goes through :class:`FleetControl`: the gRPC operator API (:mod:`gateway.collector.operator_api`),
the console, Slack and the control stream. The rules it enforces and why are in ADR 0016 and docs/fleet.md:

- The fleet's view of an approval is built from the sidecar's **signed** entries, each verified against the
  origin's registered keys before it is believed (:meth:`FleetControl.record_entries`); the sidecar's entries win
  over the collector's own view, because the sidecar is the enforcer.
- A vote is decided under the fleet-wide write lock (:mod:`gateway.collector.fleet_db`), so two replicas
  resolving one approval at once yield exactly one resolution; the loser gets ``approval_already_resolved``.
- Every accepted act is one ``control_log`` row signed by the control key over its canonical JSON; a row whose
  signature no longer verifies (the database was edited) is never sent to a sidecar.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.canonical import canonical_json
from gateway.collector.fleet_db import FleetDb, Row, Tx
from gateway.collector.fleet_mirror import apply_change, verified_changes
from gateway.collector.fleet_model import (
    KIND_OPERATOR_DENIED,
    MAX_COMMENT_BYTES,
    PENDING,
    STATES,
    ActDraft,
    ControlAct,
    FleetApproval,
    FleetSwitch,
    FleetVote,
    OriginStatus,
    act_message,
    check_filters,
    check_switch,
    check_vote_request,
    draft_of_row,
    might_concern_approvals,
    plan_vote,
    voter_key,
)
from gateway.collector.fleet_sql import (
    INSERT_ACT,
    INSERT_VOTE,
    SELECT_ACTS,
    SELECT_APPROVAL,
    SELECT_VOTES,
    UPSERT_ORIGIN,
    approval_of,
    kind_byte,
    now_ms,
    switch_act,
    switch_of,
    vote_of,
)
from gateway.collector.ingest import is_storable_text
from gateway.collector.store import CollectorStore, CollectorUnavailableError, decode_keys
from gateway.errors import FailedPreconditionError, FieldViolation, InvalidRequestError, NotFoundError
from gateway.identity import Operator
from gateway.signing import Ed25519Signer, Verifier

__all__ = [
    "ControlAct",
    "FleetApproval",
    "FleetControl",
    "FleetSwitch",
    "FleetVote",
    "OriginStatus",
    "open_fleet",
    "open_fleet_db",
]

log = logging.getLogger(__name__)

POLL_S = 1.0
"""The bound on how late a waiter learns of an act whose notification was lost."""
MAX_LIST = 1000
MAX_ACTS = 10_000
"""Acts returned by one :meth:`FleetControl.acts_since` call; call again from the last one's seq."""
_THREAD_THRESHOLD = 16  # entries verified in a worker thread from this many on (Ed25519 is ~60 µs each)


class FleetControl:
    """The fleet API over the collector's database (both dialects); one per collector process.

    Args:
        db: the fleet tables' transactions.
        control_key: signs every ``control_log`` row (and, in the control stream, every message).
        replica: this process's name in ``fleet_origins`` (which replica holds a sidecar's stream).
    """

    def __init__(self, db: FleetDb, control_key: Ed25519Signer, *, replica: str) -> None:
        self._db = db
        self._key = control_key
        self.replica = replica
        self.on_approval_opened: list[Callable[[FleetApproval], Awaitable[None]]] = []
        self.on_approval_voted: list[Callable[[FleetApproval], None]] = []
        """Called after each accepted vote with the approval as it now is; must not block (e.g. enqueue)."""
        # One watcher per process reads the head of control_log when poked (an act here, a NOTIFY from another
        # replica) or every POLL_S, and wakes every waiting stream once: N streams cost one query, not N.
        self._seen_head = 0
        self._advanced = asyncio.Event()
        self._poke = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None
        self.refused_entries = 0
        """Entries refused by :meth:`record_entries` (bad signature, unknown key, malformed) since start."""
        self.tampered_acts = 0
        """``control_log`` rows whose signature did not verify, seen by :meth:`acts_since` since start."""

    @property
    def db(self) -> FleetDb:
        """The fleet tables' transactions (the console keeps its sessions there too)."""
        return self._db

    @property
    def control_verifier(self) -> Verifier:
        """The public half of the control key (what sidecars pin)."""
        return self._key.verifier

    async def start(self) -> None:
        """Opens the fleet connections (after the store applied the migrations) and starts the head watcher."""
        await self._db.start()
        await self._db.listen(self._wake)
        self._seen_head = await self.head_seq()
        self._watcher = asyncio.create_task(self._watch(), name="fleet-head-watcher")

    async def aclose(self) -> None:
        """Stops the watcher, then closes the connections."""
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        await self._db.aclose()

    def _wake(self) -> None:
        """An act was committed (here, or by another replica's NOTIFY): the watcher reads the head now."""
        self._poke.set()

    async def _watch(self) -> None:
        while True:
            # asyncio.timeout, not wait_for: on 3.11 wait_for loses a cancel that meets the poke, and aclose hangs.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_S):
                    await self._poke.wait()
            self._poke.clear()  # before the read: a poke during it makes the next round read again
            try:
                await self._db.listen(self._wake)  # reopens a dropped LISTEN connection
                head = await self.head_seq()
            except CollectorUnavailableError as exc:
                log.warning("fleet: cannot read the head of control_log (retrying in %.0f s): %s", POLL_S, exc)
                continue
            if head > self._seen_head:
                self._seen_head = head
                advanced, self._advanced = self._advanced, asyncio.Event()
                advanced.set()

    # --- the sidecars' signed entries ----------------------------------------------------------------------

    async def record_entries(self, origin: str, entries: list[tuple[int, bytes, bytes]]) -> int:
        """Updates the fleet's approvals from an origin's journal entries; returns the changes applied.

        1. Entries that cannot concern an approval are skipped on their bytes, unparsed.
        2. Each other entry must pass :func:`~gateway.journal.check.check_entry` against the keys registered for
           ``origin`` (signature bound to the origin, seq as signed, canonical body, kind): an unsigned or wrongly
           signed entry is counted in :attr:`refused_entries`, logged, and changes nothing.
        3. What the verified entries say is applied in one transaction, idempotently: an entry seen twice (from
           the control stream and again from the forwarder) changes nothing the second time.
        """
        candidates = [(s, e, sig) for s, e, sig in entries if might_concern_approvals(kind_byte(e), e)]
        if not candidates:
            return 0
        keys = await self._origin_keys(origin)
        if not keys:
            self.refused_entries += len(candidates)
            log.warning("fleet: %d approval entries from unregistered origin %r ignored", len(candidates), origin[:80])
            return 0
        if len(candidates) >= _THREAD_THRESHOLD:
            changes, refused = await asyncio.to_thread(verified_changes, origin, keys, candidates)
        else:
            changes, refused = verified_changes(origin, keys, candidates)
        self.refused_entries += refused
        if not changes:
            return 0
        async with self._db.write() as tx:
            applied, opened = 0, []
            for change in changes:
                done, new = await apply_change(tx, origin, change)
                applied += done
                opened += new
        for approval_id in opened:
            await self._announce(approval_id)
        return applied

    async def origin_keys(self, origin: str) -> list[Verifier]:
        """The public keys registered for ``origin`` (empty: not registered), e.g. to verify a control hello."""
        if not is_storable_text(origin):
            return []
        async with self._db.read() as tx:
            rows = await tx.fetch("SELECT keys FROM origins WHERE origin = ?", origin)
        return decode_keys(str(rows[0]["keys"])) if rows else []

    async def _origin_keys(self, origin: str) -> dict[bytes, list[Verifier]]:
        keys: dict[bytes, list[Verifier]] = {}
        for verifier in await self.origin_keys(origin):
            keys.setdefault(verifier.key_id, []).append(verifier)
        return keys

    async def _announce(self, approval_id: str) -> None:
        if not self.on_approval_opened:
            return
        approval = await self.get_approval(approval_id)
        for hook in self.on_approval_opened:
            try:
                await hook(approval)
            except Exception:  # an alert channel failing must not fail the entry's recording
                log.exception("fleet: approval-opened hook %r failed for %s", hook, approval_id)

    # --- approvals -----------------------------------------------------------------------------------------

    async def list_approvals(
        self,
        *,
        state: str = PENDING,
        tenant_id: str = "",
        agent_id: str = "",
        action: str = "",
        policy_rule: str = "",
        origin: str = "",
        min_age_s: int = 0,
        limit: int = 100,
    ) -> list[FleetApproval]:
        """Approvals newest first; every filter is exact and optional (``state=""``: every state)."""
        if state and state not in STATES:
            raise InvalidRequestError([FieldViolation("state", f"must be one of {', '.join(STATES)}")])
        check_filters(tenant_id=tenant_id, agent_id=agent_id, action=action, policy_rule=policy_rule, origin=origin)
        where: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("state", state),
            ("tenant_id", tenant_id),
            ("agent_id", agent_id),
            ("action", action),
            ("policy_rule", policy_rule),
            ("origin", origin),
        ):
            if value:
                where.append(f"{column} = ?")
                params.append(value)
        if min_age_s > 0:
            where.append("created_ms <= ?")
            params.append(now_ms() - min_age_s * 1000)
        conditions = " AND ".join(where) or "1 = 1"
        limit = min(limit or MAX_LIST, MAX_LIST)
        async with self._db.read() as tx:
            rows = await tx.fetch(
                f"{SELECT_APPROVAL} WHERE {conditions} ORDER BY created_ms DESC, approval_id LIMIT ?",
                *params,
                limit,
            )
            votes = await self._votes(tx, [str(r["approval_id"]) for r in rows])
        return [approval_of(r, votes.get(str(r["approval_id"]), [])) for r in rows]

    @staticmethod
    async def _votes(tx: Tx, approval_ids: list[str]) -> dict[str, list[FleetVote]]:
        if not approval_ids:
            return {}
        marks = ", ".join("?" * len(approval_ids))
        rows = await tx.fetch(
            f"{SELECT_VOTES} WHERE approval_id IN ({marks}) ORDER BY at_ms, act, approver_key",
            *approval_ids,
        )
        out: dict[str, list[FleetVote]] = {}
        for row in rows:
            out.setdefault(str(row["approval_id"]), []).append(vote_of(row))
        return out

    async def get_approval(self, approval_id: str) -> FleetApproval:
        """One approval with its votes.

        Raises:
            NotFoundError: the fleet knows no such approval.
        """
        async with self._db.read() as tx:
            return await self._locked_approval(tx, approval_id, lock="")

    async def _locked_approval(self, tx: Tx, approval_id: str, *, lock: str) -> FleetApproval:
        if not is_storable_text(approval_id):
            raise NotFoundError(f"no approval {approval_id[:128]!r} in the fleet")
        rows = await tx.fetch(f"{SELECT_APPROVAL} WHERE approval_id = ?{lock}", approval_id)
        if not rows:
            raise NotFoundError(f"no approval {approval_id[:128]!r} in the fleet")
        votes = await self._votes(tx, [approval_id])
        return approval_of(rows[0], votes.get(approval_id, []))

    async def vote(
        self, approval_id: str, *, grant: bool, operator: Operator, comment: str, channel: str
    ) -> FleetApproval:
        """Records one approver's grant or denial and, at the deciding vote, the resolution; returns the approval.

        Decided by :func:`~gateway.collector.fleet_model.plan_vote` on the approval as read under the fleet's write
        lock (and the row's ``FOR UPDATE`` in PostgreSQL), so exactly one resolution is recorded across replicas.
        The vote, the new state and the signed ``control_log`` act commit together; then every waiter wakes.

        Raises:
            InvalidRequestError: a bad field, or a denial without a comment.
            NotFoundError: no such approval.
            PermissionDeniedError: self-approval, or not among the rule's approvers.
            FailedPreconditionError: already resolved (``approval_already_resolved``), expired, or already voted.
        """
        check_vote_request(approval_id, grant, comment, channel)
        async with self._db.write() as tx:
            approval = await self._locked_approval(tx, approval_id, lock=self._db.for_update)
            plan = plan_vote(
                approval, grant=grant, operator=operator, comment=comment, channel=channel, now_ms=now_ms()
            )
            act = await tx.next_act_id()
            v = plan.vote
            inserted = await tx.execute(
                INSERT_VOTE,
                approval_id,
                voter_key(v.approver),
                v.approver,
                v.grant,
                v.channel,
                v.comment,
                v.at_ms,
                act,
            )
            if not inserted:  # check_approver saw no prior vote under the lock: only a spelling it missed lands here
                raise FailedPreconditionError(f"{operator.identity} has already answered {approval_id}")
            if plan.state != PENDING:
                await tx.execute(
                    "UPDATE fleet_approvals SET state = ?, resolved_by = ?, resolved_ms = ?, comment = ? "
                    "WHERE approval_id = ?",
                    plan.state, v.approver, v.at_ms, v.comment, approval_id,
                )  # fmt: skip
            await self._append(tx, act, plan.act)
            result = await self._locked_approval(tx, approval_id, lock="")
        self._wake()
        log.info(
            "fleet: %s %s approval %s of %s via %s (act %d, now %s)",
            operator.identity, "granted" if grant else "denied", approval_id, approval.origin, channel, act,
            result.state,
        )  # fmt: skip
        for hook in self.on_approval_voted:
            try:
                hook(result)
            except Exception:
                log.exception("fleet: approval-voted hook %r failed for %s", hook, approval_id)
        return result

    # --- kill switches -------------------------------------------------------------------------------------

    async def engage_switch(
        self, scope: str, target: str, reason: str, operator: Operator, channel: str
    ) -> FleetSwitch:
        """Engages a fleet kill switch (one act for every sidecar).

        Raises:
            InvalidRequestError: a bad scope, target, reason or channel.
            FailedPreconditionError: it is already engaged.
        """
        check_switch(scope, target, reason, channel, reason_required=True)
        now = now_ms()
        async with self._db.write() as tx:
            rows = await tx.fetch(
                "SELECT operator FROM fleet_kill_switches WHERE scope = ? AND target = ?", scope, target
            )
            if rows:
                raise FailedPreconditionError(
                    f"fleet kill switch {scope}:{target or '*'} is already engaged by {rows[0]['operator']}"
                )
            act = await tx.next_act_id()
            await tx.execute(
                "INSERT INTO fleet_kill_switches (scope, target, reason, operator, channel, engaged_ms, act) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                scope, target, reason, operator.identity, channel, now, act,
            )  # fmt: skip
            await self._append(tx, act, switch_act("engage", scope, target, reason, operator, channel, now))
        self._wake()
        log.info(
            "fleet: %s engaged kill switch %s:%s via %s (act %d)", operator.identity, scope, target or "*", channel, act
        )
        return FleetSwitch(scope, target, reason, operator.identity, channel, now)

    async def release_switch(self, scope: str, target: str, reason: str, operator: Operator, channel: str) -> None:
        """Releases a fleet kill switch.

        Raises:
            InvalidRequestError: a bad field.
            NotFoundError: no such fleet switch is engaged.
        """
        check_switch(scope, target, reason, channel, reason_required=False)
        now = now_ms()
        async with self._db.write() as tx:
            deleted = await tx.execute("DELETE FROM fleet_kill_switches WHERE scope = ? AND target = ?", scope, target)
            if not deleted:
                raise NotFoundError(f"no fleet kill switch engaged at {scope}:{target or '*'}")
            act = await tx.next_act_id()
            await self._append(tx, act, switch_act("release", scope, target, reason, operator, channel, now))
        self._wake()
        log.info(
            "fleet: %s released kill switch %s:%s via %s (act %d)",
            operator.identity,
            scope,
            target or "*",
            channel,
            act,
        )

    async def switches(self) -> list[FleetSwitch]:
        """The engaged fleet switches."""
        return (await self.switch_set())[1]

    async def switch_set(self) -> tuple[int, list[FleetSwitch]]:
        """The head of ``control_log`` and the engaged switches, read in one snapshot (a ``kill_switch_set``)."""
        async with self._db.read() as tx:
            head = await self._head(tx)
            rows = await tx.fetch(
                "SELECT scope, target, reason, operator, channel, engaged_ms FROM fleet_kill_switches "
                "ORDER BY scope, target"
            )
        return head, [switch_of(r) for r in rows]

    # --- refused attempts ----------------------------------------------------------------------------------

    async def record_denied(self, *, identity: str, what: str, reason: str, channel: str, detail: str = "") -> int:
        """Journals a refused attempt (no session, wrong role, bad CSRF token, unsigned Slack request) as a signed
        ``operator_denied`` act in ``control_log``; returns its id.

        The act is evidence for people (who tried what, and why it was refused); :meth:`acts_since` never sends
        one to a sidecar. Text is truncated to what a column holds; ``identity`` "" is an unknown caller.
        """

        def clip(text: str, limit: int) -> str:
            text = text if is_storable_text(text) else text.encode("utf-8", "replace").decode().replace("\0", "")
            return text.encode()[:limit].decode("utf-8", "ignore")

        fields = {
            "identity": clip(identity, 256),
            "what": clip(what, 256),
            "reason": clip(reason, 64),
            "detail": clip(detail, MAX_COMMENT_BYTES),
        }
        draft = ActDraft(KIND_OPERATOR_DENIED, "", fields, fields["identity"], clip(channel, 32), now_ms())
        async with self._db.write() as tx:
            act = await tx.next_act_id()
            await self._append(tx, act, draft)
        log.warning("fleet: %s refused (%s) for %s via %s (act %d)", fields["what"], fields["reason"],
                    fields["identity"] or "-", channel, act)  # fmt: skip
        return act

    async def denied_acts(self, limit: int = 100) -> list[ControlAct]:
        """The newest verified ``operator_denied`` acts, newest first (for the console)."""
        async with self._db.read() as tx:
            rows = await tx.fetch(f"{SELECT_ACTS} WHERE kind = ? ORDER BY id DESC LIMIT ?", KIND_OPERATOR_DENIED, limit)
        return [act for act in map(self._verified_act, rows) if act is not None]

    # --- the central journal of acts -----------------------------------------------------------------------

    async def _append(self, tx: Tx, act_id: int, draft: ActDraft) -> None:
        signature = self._key.sign(act_message(act_id, draft))
        fields = canonical_json(draft.fields).decode()
        await tx.execute(
            INSERT_ACT, act_id, draft.kind, draft.origin, fields, draft.operator, draft.channel, draft.at_ms, signature
        )
        await tx.notify(act_id)

    def _verified_act(self, row: Row) -> ControlAct | None:
        act_id = int(row["id"])
        try:
            draft = draft_of_row(dict(row))
        except (ValueError, TypeError):
            draft = None
        if draft is None or not self._key.verifier.verify(act_message(act_id, draft), bytes(row["signature"])):
            self.tampered_acts += 1
            log.error("fleet: control_log row %d does not verify against the control key: the database was edited; "
                      "it is not sent to any sidecar", act_id)  # fmt: skip
            return None
        return ControlAct(act_id, draft.kind, draft.origin, {**draft.fields, "act": act_id})

    async def acts_since(self, seq: int, origin: str) -> list[ControlAct]:
        """Verified acts with id above ``seq`` for ``origin`` (and for all), or every act (``origin=""``), in order.

        At most :data:`MAX_ACTS`; a row whose signature does not verify is left out and logged at ERROR. Refused
        attempts (``operator_denied``) are never among them: they are for people, not for sidecars.
        """
        async with self._db.read() as tx:
            rows = await tx.fetch(
                f"{SELECT_ACTS} WHERE id > ? AND (? = '' OR origin = ? OR origin = '') AND kind <> ? ORDER BY id "
                "LIMIT ?",
                seq, origin, origin, KIND_OPERATOR_DENIED, MAX_ACTS,
            )  # fmt: skip
        return [act for act in map(self._verified_act, rows) if act is not None]

    async def verify_log(self) -> list[int]:
        """The ids of every ``control_log`` row whose signature does not verify (empty: the log is intact)."""
        bad: list[int] = []
        after = 0
        while True:
            async with self._db.read() as tx:
                rows = await tx.fetch(f"{SELECT_ACTS} WHERE id > ? ORDER BY id LIMIT ?", after, MAX_ACTS)
            for row in rows:
                after = int(row["id"])
                if self._verified_act(row) is None:
                    bad.append(after)
            if len(rows) < MAX_ACTS:
                return bad

    @staticmethod
    async def _head(tx: Tx) -> int:
        rows = await tx.fetch("SELECT COALESCE(MAX(id), 0) AS head FROM control_log")
        return int(rows[0]["head"])

    async def head_seq(self) -> int:
        """The highest ``control_log`` id (0 before the first act)."""
        async with self._db.read() as tx:
            return await self._head(tx)

    async def wait_for_act(self, after_seq: int, timeout_s: float) -> None:
        """Returns once an act above ``after_seq`` is committed (by any replica), or after ``timeout_s``.

        Woken by this process's watcher, which reads the head at once after an act of this process or a PostgreSQL
        notification, and at least every :data:`POLL_S` (so a lost notification delays a wake by at most that).
        Call it after :meth:`start`.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self._seen_head <= after_seq:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            advanced = self._advanced
            with contextlib.suppress(TimeoutError):  # not wait_for: it may lose a cancel that meets the wake
                async with asyncio.timeout(remaining):
                    await advanced.wait()

    # --- the sidecars' streams -----------------------------------------------------------------------------

    async def set_connected(self, origin: str, connected: bool, applied_seq: int) -> None:
        """Records that ``origin``'s control stream is (dis)connected on this replica, and what it applied last."""
        async with self._db.write() as tx:
            await tx.execute(UPSERT_ORIGIN, origin, connected, self.replica, now_ms(), applied_seq)

    async def set_disconnected(self, origin: str, applied_seq: int) -> None:
        """Records that ``origin``'s stream on this replica ended, unless another replica holds it by now."""
        async with self._db.write() as tx:
            await tx.execute(
                "UPDATE fleet_origins SET connected = ?, last_contact_ms = ?, applied_seq = ? "
                "WHERE origin = ? AND replica = ?",
                False, now_ms(), applied_seq, origin, self.replica,
            )  # fmt: skip

    async def origins(self) -> list[OriginStatus]:
        """Every sidecar that ever held a control stream."""
        async with self._db.read() as tx:
            rows = await tx.fetch(
                "SELECT origin, connected, replica, last_contact_ms, applied_seq FROM fleet_origins ORDER BY origin"
            )
        return [
            OriginStatus(
                str(r["origin"]),
                bool(r["connected"]),
                None if r["last_contact_ms"] is None else int(r["last_contact_ms"]),
                int(r["applied_seq"]),
                str(r["replica"]),
            )
            for r in rows
        ]


def open_fleet(store: CollectorStore, control_key: Ed25519Signer, *, replica: str) -> FleetControl:
    """The fleet API on the database ``store`` uses (call :meth:`FleetControl.start` after ``store.start``)."""
    return FleetControl(open_fleet_db(store), control_key, replica=replica)


def open_fleet_db(store: CollectorStore, *, max_connections: int = 4) -> FleetDb:
    """Transactions of their own on the database ``store`` uses (``start`` it after ``store.start``).

    Also for the collector's other tables kept beside the fleet's (the Slack bridge's, ``gateway.slack.store``).
    """
    from gateway.collector.sqlite_store import SqliteCollectorStore  # noqa: PLC0415

    if isinstance(store, SqliteCollectorStore):
        from gateway.collector.fleet_sqlite import SqliteFleetDb  # noqa: PLC0415

        return SqliteFleetDb(store.path)
    from gateway.collector.fleet_postgres import PostgresFleetDb  # noqa: PLC0415
    from gateway.collector.postgres_store import PostgresCollectorStore  # noqa: PLC0415

    if not isinstance(store, PostgresCollectorStore):
        raise TypeError(f"no fleet tables for {type(store).__name__}")
    return PostgresFleetDb(store.dsn, store.schema, max_connections=max_connections)
