"""Benchmark harness: the real sidecar's Decide measured against a bare gRPC echo server.

Run with ``make bench`` (``python -m bench.run``); see ``bench/README.md`` for what is measured.
"""
