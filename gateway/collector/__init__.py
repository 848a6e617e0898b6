"""The collector: verifies every sidecar's journal batches, witnesses their checkpoints and stores them.

``ingest`` decides (pure, no I/O); ``store`` defines the storage seam that ``sqlite_store`` (embedded default)
and ``postgres_store`` (production) implement with identical behaviour.
"""
