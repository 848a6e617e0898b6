"""The signed, hash-chained, append-only journal (see docs/journal.md)."""
