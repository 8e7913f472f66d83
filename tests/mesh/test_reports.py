"""Sidecar inbound reports: the control plane's bounded memory of them, and the signed POST /mesh/report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from facade.mesh.ca import CertificateAuthority
from facade.mesh.identity import WorkloadIdentity
from facade.mesh.reports import MAX_INSTANCES, InboundReports, ReportError, parse_report
from facade.mesh.spiffe import SpiffeId
from facade.mesh.svid_auth import sign_request

from .pki import TD
from .test_controlplane import env


def seg(version: int, plaintext: int = 0, refused: int = 0, tls: int = 0, epoch: str = "e1") -> dict[str, Any]:
    return {
        "epoch": epoch,
        "version": version,
        "mode": "STRICT",
        "plaintext_requests": plaintext,
        "tls_requests": tls,
        "plaintext_refused": refused,
    }


def report(instance: str, *segments: dict[str, Any]) -> Any:
    return parse_report({"service": "catalog", "instance": instance, "segments": list(segments)})


def test_counts_per_version_are_cumulative_so_repeats_and_reordering_change_nothing() -> None:
    reports = InboundReports("e1")
    reports.record(report("a", seg(1, plaintext=5), seg(2, refused=1)), now=10.0)
    reports.record(report("a", seg(1, plaintext=5), seg(2, refused=3)), now=11.0)
    reports.record(report("a", seg(2, refused=2)), now=12.0)  # an older report arriving late
    reports.record(report("b", seg(2, plaintext=1, tls=9)), now=12.0)
    assert reports.plaintext_seen("catalog", [2], since=0.0, now=12.0) == 3 + 1
    assert reports.plaintext_seen("catalog", [1, 2], since=0.0, now=12.0) == 5 + 3 + 1
    assert reports.plaintext_seen("catalog", [3], since=0.0, now=12.0) is None  # nobody on v3 yet
    assert reports.plaintext_seen("orders", [2], since=0.0, now=12.0) is None


def test_other_epochs_are_ignored_and_a_lagging_sidecar_makes_it_unknown() -> None:
    reports = InboundReports("e2")
    reports.record(report("a", seg(2, plaintext=7, epoch="e1")), now=5.0)  # before a control-plane restart
    assert reports.plaintext_seen("catalog", [2], since=0.0, now=5.0) is None
    reports.record(report("a", seg(2, tls=4, epoch="e2")), now=6.0)
    assert reports.plaintext_seen("catalog", [2], since=0.0, now=6.0) == 0
    # A second sidecar heard after the step started still runs v1 only: its silence proves nothing.
    reports.record(report("b", seg(1, epoch="e2")), now=7.0)
    assert reports.plaintext_seen("catalog", [2], since=6.5, now=7.0) is None
    # ...unless it went quiet long ago (a stopped process).
    assert reports.plaintext_seen("catalog", [2], since=6.5, now=7.0 + 61) == 0


def test_instances_and_versions_are_bounded() -> None:
    reports = InboundReports("e1")
    for i in range(MAX_INSTANCES + 10):
        reports.record(report(f"i{i}", seg(1, plaintext=1)), now=float(i))
    assert reports.plaintext_seen("catalog", [1], since=0.0, now=100.0) == MAX_INSTANCES
    reports.record(report("x", *(seg(v) for v in range(1, 30))), now=200.0)
    assert len(reports.view("catalog")["x"]) == 16


@pytest.mark.parametrize(
    "bad",
    [
        [],
        {"service": "catalog", "segments": []},
        {"service": "catalog", "instance": "a", "segments": [seg(1, plaintext=-1)]},
        {"service": "catalog", "instance": "a", "segments": [{"version": 1}]},
        {"service": "catalog", "instance": "a", "segments": [seg(1)] * 33},
    ],
)
def test_malformed_reports_are_refused(bad: Any) -> None:
    with pytest.raises(ReportError):
        parse_report(bad)


def _signed(identity: WorkloadIdentity, payload: dict[str, Any], *, sign_other: bool = False) -> dict[str, Any]:
    """httpx.post keyword arguments: the body and a request signed by ``identity`` (mesh.svid_auth)."""
    content = json.dumps({"report": json.dumps(payload)}).encode()
    signed = b"other" if sign_other else content
    return {
        "content": content,
        "headers": {"authorization": sign_request(identity, "POST", "/mesh/report", {}, signed)},
    }


async def test_report_endpoint_takes_signed_reports_about_the_holders_own_service_only(tmp_path: Path) -> None:
    async with env(tmp_path) as e, httpx.AsyncClient(base_url=e.runtime.admin_url) as client:
        since = 0.0
        identity = e.sidecar.identity
        assert identity is not None
        good = {
            "service": "catalog",
            "instance": "forged",
            "segments": [seg(e.feature.version, plaintext=50, epoch=e.feature.epoch)],
        }
        # Someone else's service, a signature over other bytes, a certificate of another CA: all refused.
        other = dict(good, service="orders")
        assert (await client.post("/mesh/report", **_signed(identity, other))).status_code == 403
        assert (await client.post("/mesh/report", **_signed(identity, good, sign_other=True))).status_code == 401
        stranger_ca = CertificateAuthority.init(str(tmp_path / "other-ca"), TD)
        key, csr = WorkloadIdentity.new_csr(SpiffeId.workload(TD, "shop", "catalog"))
        stranger = WorkloadIdentity.from_pem(
            key, stranger_ca.sign_csr(csr, spiffe_id=SpiffeId.workload(TD, "shop", "catalog"))
        )
        assert (await client.post("/mesh/report", **_signed(stranger, good))).status_code == 401
        assert (await client.post("/mesh/report", json={"report": "{}"})).status_code == 401
        assert not e.feature.plaintext_seen("catalog", since=since)
        # The holder of catalog's SVID may report (this is what the sidecar does).
        assert (await client.post("/mesh/report", **_signed(identity, good))).status_code == 204
        assert e.feature.plaintext_seen("catalog", since=since) == 50
