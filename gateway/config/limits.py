"""Hard limits that configuration is checked against and lower layers enforce (so they live below both)."""

from __future__ import annotations

MAX_ROWS_PER_INSERT = 2000
"""Most journal entries one INSERT (and so one ``journal.max_batch``) may hold: 16 columns x 2000 rows stays
under SQLite's 32766 host parameters. ``gateway.journal.schema`` builds its statements to this bound."""
