"""Forwarding end to end: sidecars → a real collector process, faults, rollback detection, exactly once."""

from __future__ import annotations

import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from agentaudit.v1 import collector_pb2, collector_pb2_grpc, types_pb2
from gateway import devenv
from gateway.journal.entry import decode_entry
from gateway.journal.store import iter_bodies
from gateway.signing import Ed25519Signer, write_secret_file
from tests.conftest import AGENTAUDIT, ROOT, RunningGateway, free_port, run_cli, start_gateway, wait_serving
from tests.gateway_helpers import decide_request, stub
from tests.helpers import eventually

DEADLINE_S = 30.0


class CollectorProcess:
    """`agentaudit collector --config FILE` in a subprocess, restartable."""

    def __init__(self, directory: Path, origins: list[tuple[str, Path]], store: str) -> None:
        self.directory = directory
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        witness = Ed25519Signer.generate("collector.test")
        key = directory / "witness.key"
        if not key.exists():
            write_secret_file(key, witness.encode_private() + "\n")
            (directory / "witness.pub").write_text(witness.verifier.encode() + "\n")
        origins_yaml = "".join(f"    - origin: {o}\n      keys: [{k}]\n" for o, k in origins)
        (directory / "collector.yaml").write_text(
            f"collector:\n  listen: ['{self.target}']\n  store: '{store}'\n  witness_key: witness.key\n"
            f"  origins:\n{origins_yaml}"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.directory / "collector.log", "ab")  # noqa: SIM115 - owned by the subprocess
        self.proc = subprocess.Popen(
            [*AGENTAUDIT, "collector", "--config", str(self.directory / "collector.yaml")],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        wait_serving(self.target, proc=self.proc)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(15)

    def size(self, origin: str) -> int:
        with grpc.insecure_channel(self.target) as channel:
            reply = collector_pb2_grpc.CollectorServiceStub(channel).GetCheckpoint(
                collector_pb2.GetCheckpointRequest(origin=origin), timeout=10
            )
        return int(reply.size)


def sidecar_dir(directory: Path, collector_target: str) -> tuple[Path, str]:
    """A dev directory whose sidecar forwards to ``collector_target``; returns it and its origin."""
    devenv.prepare(directory, None, {})
    config_path = directory / devenv.CONFIG_FILE
    config = yaml.safe_load(config_path.read_text())
    config["forward"] = {
        "target": collector_target,
        "batch_max_age_s": 0.05,
        "backoff_initial_s": 0.05,
        "backoff_max_s": 0.5,
    }
    config_path.write_text(yaml.safe_dump(config))
    origin = (directory / "signing.pub").read_text().split("+", 1)[0]
    return directory, origin


def journal_rows(path: Path) -> list[tuple[int, bytes, bytes]]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        return [
            (r[0], bytes(r[1]), bytes(r[2]))
            for r in conn.execute("SELECT seq, entry, signature FROM journal ORDER BY seq")
        ]


def collector_rows(db: Path, origin: str) -> list[tuple[int, bytes, bytes]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return [
            (r[0], bytes(r[1]), bytes(r[2]))
            for r in conn.execute("SELECT seq, entry, signature FROM events WHERE origin = ? ORDER BY seq", (origin,))
        ]


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[tuple[CollectorProcess, list[tuple[Path, str]]]]:
    (tmp_path / "c").mkdir()
    sidecars = []
    for name in ("a", "b"):
        d = tmp_path / name
        d.mkdir()
        sidecars.append(d)
    # Origins must be known to the collector before it starts: create the sidecars' keys first.
    prepared = [sidecar_dir(d, "127.0.0.1:1") for d in sidecars]
    proc = CollectorProcess(
        tmp_path / "c", [(o, d / "signing.pub") for d, o in prepared], f"sqlite:///{tmp_path / 'c' / 'collector.db'}"
    )
    for d, _ in prepared:
        sidecar_dir(d, proc.target)
    proc.start()
    try:
        yield proc, prepared
    finally:
        proc.stop()


def load(gw: RunningGateway, n: int, run: str) -> list[str]:
    channel, gateway = stub(gw.unix_target)
    ids = []
    with channel:
        for i in range(n):
            reply = gateway.Decide(decide_request(run_id=run, step_id=i + 1, action="kb.read"), timeout=10)
            assert reply.decision == types_pb2.DECISION_ALLOW
            ids.append(reply.event_id)
    return ids


def test_two_sidecars_arrive_exactly_once_in_order_byte_identical(collector: Any) -> None:
    proc, sidecars = collector
    gws = [start_gateway(d, forward=True) for d, _ in sidecars]
    try:
        threads = [threading.Thread(target=load, args=(gw, 150, f"run_{i}")) for i, gw in enumerate(gws)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for gw in gws:
            gw.stop()
        for (d, origin), gw in zip(sidecars, gws, strict=True):
            local = journal_rows(gw.journal_path)
            # Everything up to the last acknowledged batch is at the collector, byte for byte.
            remote = collector_rows(proc.directory / "collector.db", origin)
            assert remote == local[: len(remote)]
            assert len(remote) >= len(local) - 1, "only the final receipt may be unsent"
            receipts = [b for _, b in iter_bodies(gw.journal_path, kind="cosignature")]
            assert receipts, "cosignatures were journaled as receipts"
            verified = run_cli(
                "verify",
                str(gw.journal_path),
                "--public-key",
                str(d / "signing.pub"),
                "--witness-key",
                str(proc.directory / "witness.pub"),
            )
            assert verified.returncode == 0, verified.stdout + verified.stderr
    finally:
        for gw in gws:
            gw.stop()


def test_collector_down_then_back_loses_nothing(collector: Any) -> None:
    proc, sidecars = collector
    d, origin = sidecars[0]
    gw = start_gateway(d, forward=True)
    try:
        load(gw, 30, "run_1")
        eventually(lambda: proc.size(origin) >= 30, timeout=DEADLINE_S)
        proc.stop(signal.SIGKILL)
        ids = load(gw, 60, "run_2")  # decisions keep flowing while the collector is down
        assert len(ids) == 60
        proc.start()
        eventually(lambda: proc.size(origin) >= len(journal_rows(gw.journal_path)) - 1, timeout=DEADLINE_S)
    finally:
        gw.stop()
    local = journal_rows(gw.journal_path)
    remote = collector_rows(proc.directory / "collector.db", origin)
    assert remote == local[: len(remote)] and len(remote) >= len(local) - 1


def test_sidecar_killed_mid_batch_resends_without_duplicates(collector: Any) -> None:
    proc, sidecars = collector
    d, origin = sidecars[0]
    for _ in range(3):
        gw = start_gateway(d, forward=True)
        load(gw, 40, f"run_{time.monotonic_ns()}")
        gw.stop(signal.SIGKILL)
    gw = start_gateway(d, forward=True)
    try:
        eventually(lambda: proc.size(origin) >= len(journal_rows(gw.journal_path)) - 1, timeout=DEADLINE_S)
    finally:
        gw.stop()
    local = journal_rows(gw.journal_path)
    remote = collector_rows(proc.directory / "collector.db", origin)
    assert [r[0] for r in remote] == list(range(len(remote))), "no gaps, no duplicates"
    assert remote == local[: len(remote)]


def test_a_journal_restored_from_an_old_copy_is_detected_and_fails_closed(collector: Any) -> None:
    proc, sidecars = collector
    d, origin = sidecars[0]
    gw = start_gateway(d, forward=True)
    load(gw, 10, "run_1")
    gw.stop()
    backup = d.parent / "backup"
    backup.mkdir()
    for f in d.glob("journal.db*"):
        shutil.copy(f, backup / f.name)
    gw = start_gateway(d, forward=True)
    load(gw, 30, "run_2")
    eventually(lambda: proc.size(origin) >= 40, timeout=DEADLINE_S)
    gw.stop()
    for f in d.glob("journal.db*"):
        f.unlink()
    for f in backup.glob("journal.db*"):
        shutil.copy(f, d / f.name)  # an operator restores yesterday's backup
    gw = start_gateway(d, forward=True)
    try:
        eventually(lambda: any(True for _ in iter_bodies(gw.journal_path, kind="gap_recovery")), timeout=DEADLINE_S)
        channel, gateway = stub(gw.unix_target)
        with channel:
            refused = gateway.Decide(decide_request(run_id="run_3"), timeout=10)
        assert (refused.decision, refused.reason) == (types_pb2.DECISION_STOP, "journal_recovery_required")
        ack = run_cli(
            "recovery",
            "acknowledge",
            "--comment",
            "restored on purpose",
            "--operator",
            gw.operator_target,
            "--token-file",
            str(d / "operator.token"),
        )
        assert ack.returncode == 0, ack.stderr
        channel, gateway = stub(gw.unix_target)
        with channel:
            again = gateway.Decide(decide_request(run_id="run_3", step_id=2), timeout=10)
        assert again.decision == types_pb2.DECISION_ALLOW
    finally:
        gw.stop()
    recovery = [b for _, b in iter_bodies(gw.journal_path, kind="gap_recovery")]
    assert recovery[0]["operation"] == "detected" and recovery[0]["checkpoint"]
    assert recovery[-1]["operation"] == "acknowledged"


def test_a_lost_acknowledgement_is_recovered_by_the_handshake_without_duplicates(collector: Any) -> None:
    proc, sidecars = collector
    d, origin = sidecars[0]
    gw = start_gateway(d, forward=True)
    load(gw, 20, "run_1")
    eventually(lambda: proc.size(origin) >= 20, timeout=DEADLINE_S)
    gw.stop()
    held = proc.size(origin)
    # The collector acknowledged, but the acknowledgement never reached the cursor (lost on the way back).
    with sqlite3.connect(gw.journal_path) as conn:
        conn.execute("UPDATE forwarder_state SET acked_size = acked_size - 7")
    gw = start_gateway(d, forward=True)
    try:
        load(gw, 5, "run_2")
        eventually(lambda: proc.size(origin) >= held + 5, timeout=DEADLINE_S)
    finally:
        gw.stop()
    remote = collector_rows(proc.directory / "collector.db", origin)
    assert [r[0] for r in remote] == list(range(len(remote))), "nothing duplicated or skipped"
    assert remote == journal_rows(gw.journal_path)[: len(remote)]


def test_collector_killed_repeatedly_under_load_loses_nothing(collector: Any) -> None:
    proc, sidecars = collector
    d, origin = sidecars[0]
    gw = start_gateway(d, forward=True)
    try:
        for round_ in range(3):
            before = proc.size(origin)
            worker = threading.Thread(target=load, args=(gw, 60, f"run_{round_}"))
            worker.start()
            eventually(
                lambda before=before: proc.size(origin) > before, timeout=DEADLINE_S
            )  # batches are flowing: kill mid-stream
            proc.stop(signal.SIGKILL)
            worker.join()
            proc.start()
        eventually(lambda: proc.size(origin) >= len(journal_rows(gw.journal_path)) - 1, timeout=DEADLINE_S)
    finally:
        gw.stop()
    remote = collector_rows(proc.directory / "collector.db", origin)
    assert [r[0] for r in remote] == list(range(len(remote)))
    assert remote == journal_rows(gw.journal_path)[: len(remote)]


def test_a_v1_sidecar_and_a_v2_sidecar_forward_to_one_collector(collector: Any) -> None:
    """Mixed fleet: one sidecar signs per entry (format v1), the other per commit (v2, forwarding its stored seals);
    one real collector witnesses both, and both journals verify with their receipts."""
    proc, sidecars = collector
    modes = ["per_entry", "per_commit"]
    gws = [
        start_gateway(d, forward=True, extra_env={"AGENTAUDIT_AUDIT_SIGNING": mode})
        for (d, _), mode in zip(sidecars, modes, strict=True)
    ]
    try:
        threads = [threading.Thread(target=load, args=(gw, 60, f"run_{i}")) for i, gw in enumerate(gws)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for gw in gws:
            gw.stop()
    for (d, origin), gw, mode in zip(sidecars, gws, modes, strict=True):
        local = journal_rows(gw.journal_path)
        remote = collector_rows(proc.directory / "collector.db", origin)
        assert remote == local[: len(remote)] and len(remote) >= len(local) - 1
        versions = {decode_entry(raw).version for _, raw, _ in local}
        signed = {len(sig) for _, _, sig in local}
        if mode == "per_entry":
            assert (versions, signed) == ({1}, {64})
        else:
            assert versions == {2} and 0 in signed  # pre-events carry no signature of their own
            with sqlite3.connect(f"file:{gw.journal_path}?mode=ro", uri=True) as conn:
                sizes = {int(s) for (s,) in conn.execute("SELECT size FROM journal_seals")}
            # Every batch the collector cosigned ended at a commit seal (the forwarder sends stored seals).
            receipts = [b for _, b in iter_bodies(gw.journal_path, kind="cosignature")]
            assert receipts and {b["tree_size"] for b in receipts} <= sizes
            # What was cosigned is the stored seal itself, not a checkpoint the forwarder signed afresh.
            assert all("\nagentaudit-seal " in b["checkpoint"] for b in receipts)
        verified = run_cli(
            "verify",
            str(gw.journal_path),
            "--public-key",
            str(d / "signing.pub"),
            "--witness-key",
            str(proc.directory / "witness.pub"),
            "--require-witnessed",
            "2",
        )
        assert verified.returncode == 0, verified.stdout + verified.stderr
