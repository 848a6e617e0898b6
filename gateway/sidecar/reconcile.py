"""State rows that contradict the signed journal: logged at ERROR and journaled once as ``state_mismatch``.

``gateway.journal.state.trusted_state`` derives what is enforced from the signed events and lists the rows that
disagree (docs/adr/0012); this reports them. A mismatch journaled by an earlier start is logged again but not
journaled again, so a restart loop cannot flood the journal.
"""

from __future__ import annotations

import logging

from gateway.journal.state import TrustedState
from gateway.sidecar.recorder import AuditRecorder

log = logging.getLogger(__name__)


async def report_state_mismatches(recorder: AuditRecorder, trusted: TrustedState) -> int:
    """Logs every mismatch and journals the new ones; returns how many were journaled."""
    journaled = 0
    for mismatch in trusted.mismatches:
        log.error(
            "state table %s, key %s, contradicts the signed journal (%s): the signed events are enforced",
            mismatch.table,
            mismatch.key,
            mismatch.detail,
        )
        if (mismatch.table, mismatch.key) in trusted.reported:
            continue
        await recorder.record_state_mismatch(mismatch.table, mismatch.key, mismatch.detail)
        journaled += 1
    return journaled
