"""Forwarding over TLS against plaintext: the same batches through the forwarder's upstream, same run.

Run as ``python -m bench.collector_tls``. A journal of realistic ``pre_exec`` entries (bench.collector_ingest's) is
sent in batches of 500 with their signed checkpoints through ``GrpcUpstream`` (the forwarder's client, which dials
with ``gateway.rpc.net.collector_channel``) to an in-process collector on a fresh SQLite store, once over loopback
plaintext and once over TLS (a P-256 certificate made here; the channel verifies it against its CA), alternating,
best of each kept. Every entry is verified and stored in both, so the ratio is what TLS adds to real forwarding.
The connection (and handshake) is made inside the timed span: a forwarder opens one per start.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.collector_ingest import ORIGIN, ORIGIN_KEY, WITNESS, Batch, signed_batches, write_journal
from gateway.collector.app import Collector
from gateway.config import CollectorConfig
from gateway.config.collector import CollectorTlsConfig
from gateway.config.sidecar import CollectorTlsClientConfig
from gateway.sidecar.forwarder import GrpcUpstream
from gateway.signing import write_secret_file

DEFAULT_EVENTS = 10_000
BATCH_SIZE = 500
ROUNDS = 2


def make_certificates(directory: Path) -> tuple[CollectorTlsConfig, CollectorTlsClientConfig]:
    """A CA and a server certificate for 127.0.0.1 (key 0600), as the collector and the sidecar configure them."""
    import ipaddress  # noqa: PLC0415

    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
    from cryptography.x509.oid import NameOID  # noqa: PLC0415

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())

    def certificate(cn: str, public: Any, *, ca: bool) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench-ca")]))
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
            builder = builder.add_extension(san, critical=False)
        return builder.sign(ca_key, hashes.SHA256())

    pem = serialization.Encoding.PEM
    (directory / "ca.crt").write_bytes(certificate("bench-ca", ca_key.public_key(), ca=True).public_bytes(pem))
    (directory / "tls.crt").write_bytes(certificate("collector", key.public_key(), ca=False).public_bytes(pem))
    pkcs8, plain = serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    write_secret_file(directory / "tls.key", key.private_bytes(pem, pkcs8, plain).decode())
    return CollectorTlsConfig(directory / "tls.crt", directory / "tls.key"), CollectorTlsClientConfig(
        ca=directory / "ca.crt"
    )


async def _forward(workdir: Path, batches: Sequence[Batch], tls: tuple[CollectorTlsConfig, Any] | None) -> float:
    """Seconds to send every batch to a fresh collector (plaintext if ``tls`` is None)."""
    store = workdir / f"c-{time.monotonic_ns()}.db"
    config = CollectorConfig(
        listen=("127.0.0.1:0",),
        store=f"sqlite://{store}",
        witness_key=workdir / "witness.key",
        max_batch_entries=BATCH_SIZE,
        tls=None if tls is None else tls[0],
    )
    collector = Collector(config, embedded=True)
    await collector.start()
    try:
        assert collector.store is not None
        await collector.store.register_origin(ORIGIN, [ORIGIN_KEY.verifier])
        upstream = GrpcUpstream(collector.bound[0], None if tls is None else tls[1])
        started = time.perf_counter()
        for rows, note in batches:
            size, _ = await upstream.ingest(ORIGIN, rows, note)
            assert size == rows[-1][0] + 1, size
        elapsed = time.perf_counter() - started
        await upstream.aclose()
    finally:
        await collector.aclose()
    return elapsed


def run(events: int, rounds: int) -> dict[str, Any]:
    """Alternates plaintext and TLS ``rounds`` times; keeps the best of each."""
    with tempfile.TemporaryDirectory(prefix="aa-bench-tls-") as tmp:
        workdir = Path(tmp)
        write_secret_file(workdir / "witness.key", WITNESS.encode_private() + "\n")
        batches = signed_batches(write_journal(workdir / "journal.db", events), BATCH_SIZE)
        certificates = make_certificates(workdir)
        runs: dict[str, list[float]] = {"plaintext": [], "tls": []}
        for _ in range(rounds):
            runs["plaintext"].append(asyncio.run(_forward(workdir, batches, None)))
            runs["tls"].append(asyncio.run(_forward(workdir, batches, certificates)))
    best = {mode: min(times) for mode, times in runs.items()}
    return {
        "events": events,
        "batch_size": BATCH_SIZE,
        "collector_tls.events_per_s.plaintext": round(events / best["plaintext"], 1),
        "collector_tls.events_per_s.tls": round(events / best["tls"], 1),
        "collector_tls.ratio_tls_over_plaintext": round(best["plaintext"] / best["tls"], 3),
        "runs_s": {mode: [round(t, 3) for t in times] for mode, times in runs.items()},
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Prints a line per mode, then the figures as one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=DEFAULT_EVENTS, help=f"entries (default {DEFAULT_EVENTS})")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help=f"alternations (default {ROUNDS})")
    args = parser.parse_args(argv)
    if args.events < BATCH_SIZE or args.rounds < 1:
        parser.error(f"--events must be at least {BATCH_SIZE} and --rounds at least 1")
    result = run(args.events, args.rounds)
    print(f"forwarding {result['events']} events in batches of {BATCH_SIZE} to a collector (SQLite), events/s")
    for mode in ("plaintext", "tls"):
        times = " ".join(f"{t:.3f}" for t in result["runs_s"][mode])
        print(f"  {mode:<10} {result[f'collector_tls.events_per_s.{mode}']:>10.1f}   runs (s) {times}")
    print(f"  TLS / plaintext {result['collector_tls.ratio_tls_over_plaintext']:.3f}x")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
