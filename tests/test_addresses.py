"""Sidecar addresses: every form the docs print works, through one parser (shared vectors with the Node client)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from agentaudit_client import AddressError, GatewayClient, grpc_target
from tests.conftest import ROOT, RunningGateway

VECTORS = json.loads((ROOT / "clients" / "testdata" / "addresses.json").read_text())


@pytest.mark.parametrize(("typed", "target"), VECTORS["accepted"], ids=[v[0] or "empty" for v in VECTORS["accepted"]])
def test_each_accepted_form_becomes_a_target_grpc_takes(typed: str, target: str) -> None:
    assert grpc_target(typed, base=VECTORS["base"]) == target


@pytest.mark.parametrize("typed", VECTORS["refused"], ids=[repr(v) for v in VECTORS["refused"]])
def test_a_malformed_address_is_refused_with_the_forms_that_work(typed: str) -> None:
    with pytest.raises(AddressError, match=r"unix:|socket|address"):
        grpc_target(typed, base=VECTORS["base"])


@pytest.mark.parametrize(
    "form",
    [
        pytest.param("unix://./{rel}", id="unix-dot-slash"),
        pytest.param("unix:{rel}", id="unix-relative"),
        pytest.param("unix:///{abs}", id="unix-absolute"),
    ],
)
def test_the_client_reaches_a_real_sidecar_through_each_unix_form(
    form: str, gateway_server: RunningGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's `unix://./.agentaudit/gateway.sock` form used to abort inside gRPC; now it connects."""
    socket = Path(gateway_server.unix_target.removeprefix("unix://"))
    monkeypatch.chdir(socket.parent.parent)
    address = form.format(rel=os.path.join(socket.parent.name, socket.name), abs=str(socket).lstrip("/"))
    with GatewayClient(address, timeout=10) as client:
        run = client.run("run_addr", tenant_id="t_42", agent_id="support-agent", actor=("user", "u_1"))
        assert run.decide("crm.lookup", {"customer_id": "c_7"}).allowed
