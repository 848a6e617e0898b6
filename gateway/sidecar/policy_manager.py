"""The active policy: loaded at start, reloaded on SIGHUP or when the file changes, every change journaled.

A reload that fails to read, parse or compile is rejected with the file, line and rule in the log, and the
previous policy keeps answering. An accepted change is first journaled as ``policy_changed`` (old and new
version, actor, trigger) and only then takes effect, so every decision under the new version comes after the
event that introduced it. If the event cannot be journaled, the change is not applied.

On start, :meth:`PolicyManager.replay_limits` rebuilds the limit state from the journal before the first Decide,
so a restart never widens a limit (ADR 0011).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from gateway import metrics
from gateway.errors import ConfigError, JournalUnavailableError
from gateway.journal.store import JournalReader
from gateway.policy.document import PolicyDocument, parse_policy
from gateway.policy.engine import Clock, LayeredPolicy, SwitchLookup
from gateway.policy.limits import LimitState, ReplaySummary, replay_since
from gateway.sidecar.recorder import AuditRecorder

log = logging.getLogger(__name__)

TRIGGER_SIGHUP = "sighup"
TRIGGER_FILE_CHANGE = "file_change"
TRIGGER_OPERATOR = "operator_api"


@dataclass(frozen=True)
class ReloadOutcome:
    """What a reload did: whether the version changed, the versions, and the error if it was rejected."""

    changed: bool
    old_version: str
    new_version: str
    error: str = ""
    event_id: str = ""


def load_document(path: Path) -> PolicyDocument:
    """Reads and parses a policy file."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read policy {path}: {exc.strerror}") from exc
    return parse_policy(text, str(path))


def _replace_file(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` atomically (temporary file, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def process_user() -> str:
    """The local user this process runs as (the actor of file-triggered policy changes)."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return f"uid:{os.getuid()}"


class PolicyManager:
    """Owns the active :class:`LayeredPolicy`, its shared limit state, the SIGHUP handler and the file watch."""

    def __init__(
        self,
        path: Path,
        recorder: AuditRecorder,
        *,
        clock: Clock = time.time,
        poll_interval_s: float = 1.0,
        switches: SwitchLookup | None = None,
    ) -> None:
        self.path = path
        self._recorder = recorder
        self._clock = clock
        self._poll_interval_s = poll_interval_s
        self._switches = switches
        self._state = LimitState()
        self.document_text = path.read_text()
        self.engine = LayeredPolicy(parse_policy(self.document_text, str(path)), self._state, clock, switches)
        self._stamp = self._file_stamp()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._sighup = False
        self._reloads: set[asyncio.Task[ReloadOutcome]] = set()  # SIGHUP reloads, held until done

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    async def reload(
        self, trigger: str, actor: str | None = None, *, document_text: str | None = None
    ) -> ReloadOutcome:
        """Re-reads the file (or takes ``document_text``); applies it if valid and different from the active one.

        A submitted document is validated, then written to the policy file (atomically) so it survives a
        restart, then journaled and applied. ``actor`` is an operator identity; None means the process user.
        """
        async with self._lock:
            old = self.engine.version
            try:
                if document_text is None:
                    text = await asyncio.to_thread(self.path.read_text)
                else:
                    text = document_text
                document = parse_policy(text, str(self.path) if document_text is None else "<submitted policy>")
            except OSError as exc:
                log.error("policy reload (%s) rejected, keeping %s: cannot read %s: %s", trigger, old, self.path, exc)
                metrics.POLICY_RELOADS.labels("rejected").inc()
                return ReloadOutcome(False, old, old, f"cannot read {self.path}: {exc.strerror}")
            except ConfigError as exc:
                log.error("policy reload (%s) rejected, keeping %s: %s", trigger, old, exc)
                metrics.POLICY_RELOADS.labels("rejected").inc()
                if document_text is not None:
                    raise
                self._stamp = self._file_stamp()
                return ReloadOutcome(False, old, old, str(exc))
            if document.version == old:
                self._stamp = self._file_stamp()
                metrics.POLICY_RELOADS.labels("unchanged").inc()
                return ReloadOutcome(False, old, old)
            if document_text is not None:
                await asyncio.to_thread(_replace_file, self.path, text)
            self._stamp = self._file_stamp()
            actor_id, actor_type = (actor, "operator") if actor else (process_user(), "process_user")
            try:
                event = await self._recorder.record_policy_changed(
                    old, document.version, actor_id, trigger, str(self.path), actor_type
                )
            except JournalUnavailableError as exc:
                log.error("policy change (%s) not applied: it could not be journaled: %s", trigger, exc)
                metrics.POLICY_RELOADS.labels("rejected").inc()
                return ReloadOutcome(False, old, old, f"journal unavailable: {exc}")
            self.engine = LayeredPolicy(document, self._state, self._clock, self._switches)
            self.document_text = text
            self._state.retain(limit.fingerprint for limit in document.limits)
            log.info("policy %s active (was %s; %s by %s)", document.version, old, trigger, actor_id)
            metrics.POLICY_RELOADS.labels("applied").inc()
            metrics.set_policy_version(document.version)
            return ReloadOutcome(True, old, document.version, event_id=event.event_id)

    async def replay_limits(self, reader: JournalReader) -> ReplaySummary:
        """Rebuilds the limit state from the journal's pre-events; call before the first Decide.

        Reads only the span the active policy's limits depend on (``replay_since``), on the reader's thread.
        """
        limits = self.engine.document.limits
        now = self._clock()
        since = replay_since(limits, now)
        if since is None:
            return ReplaySummary()
        since_nanos = int(since * 1e9)
        started = time.monotonic()

        start, summary = await reader.scan_pre_events(
            since_nanos, lambda events: self._state.replay(events, limits, now)
        )
        if summary.runs:
            self._state.add_steps(await reader.count_pre_events_before(sorted(summary.runs), start))
        log.info(
            "limit state rebuilt from %d pre-events (%d allowed) in %.3fs",
            summary.events,
            summary.allowed,
            time.monotonic() - started,
        )
        if summary.unknown_amounts:
            log.warning(
                "%d journaled amounts of sum budgets were redacted, so each counts as its budget's whole max until "
                "the window ends: do not redact a field a sum budget adds up",
                summary.unknown_amounts,
            )
        return summary

    async def start(self) -> None:
        """Starts watching the file and, when running in the main thread, handling SIGHUP."""
        metrics.set_policy_version(self.engine.version)
        loop = asyncio.get_running_loop()
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
            loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
            self._sighup = True
        self._task = asyncio.create_task(self._watch(), name="policy-watch")

    def _on_sighup(self) -> None:
        task = asyncio.get_running_loop().create_task(self.reload(TRIGGER_SIGHUP))
        self._reloads.add(task)  # asyncio holds tasks weakly
        task.add_done_callback(self._reloads.discard)
        task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._poll_interval_s)
            if self._file_stamp() != self._stamp:
                await self.reload(TRIGGER_FILE_CHANGE)

    async def aclose(self) -> None:
        """Stops the watch and the SIGHUP handler."""
        if self._sighup:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            self._sighup = False
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
