from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from facade.cli import main
from facade.cli.console import EXIT_INVALID, EXIT_NOT_FOUND, EXIT_OK, EXIT_REFUSED
from facade.mesh.identity import WorkloadIdentity
from facade.mesh.spiffe import SpiffeId


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_init_issue_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = str(tmp_path / "state")
    code, out, _ = run(capsys, "mesh", "ca", "init", "--state-dir", state, "--trust-domain", "shop.local", "--json")
    assert code == EXIT_OK
    assert json.loads(out)["trust_domain"] == "shop.local"

    out_dir = tmp_path / "certs" / "catalog"
    spiffe_id = "spiffe://shop.local/ns/shop/sa/catalog"
    code, out, _ = run(
        capsys,
        "mesh",
        "ca",
        "issue",
        "--state-dir",
        state,
        "--id",
        spiffe_id,
        "--out",
        str(out_dir),
        "--ttl",
        "2h",
        "--json",
    )
    assert code == EXIT_OK
    info = json.loads(out)
    assert info["spiffe_id"] == spiffe_id
    identity = WorkloadIdentity.load(out_dir)
    assert identity.spiffe_id == SpiffeId.parse(spiffe_id)
    assert (identity.not_after - identity.not_before).total_seconds() == 2 * 3600 + 60  # ttl + backdate
    for name in ("key.pem", "cert.pem", "bundle.pem"):
        assert stat.S_IMODE(os.stat(out_dir / name).st_mode) == 0o600

    code, out, _ = run(capsys, "mesh", "ca", "show", "--state-dir", state, "--bundle")
    assert code == EXIT_OK
    assert out.encode() == (out_dir / "bundle.pem").read_bytes()
    code, out, _ = run(capsys, "mesh", "ca", "show", "--state-dir", state)
    assert code == EXIT_OK and "shop.local" in out and "sha256" in out


def test_init_twice_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ("mesh", "ca", "init", "--state-dir", str(tmp_path), "--trust-domain", "shop.local")
    assert run(capsys, *args)[0] == EXIT_OK
    code, _, err = run(capsys, *args)
    assert code == EXIT_REFUSED and "--force" in err
    assert run(capsys, *args, "--force")[0] == EXIT_OK


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (("init", "--trust-domain", "Shop.Local"), EXIT_INVALID, "invalid trust domain"),
        (("issue", "--id", "spiffe://shop.local/a/../b", "--out", "x"), EXIT_INVALID, "'..' segment"),
        (("issue", "--id", "spiffe://other.local/x", "--out", "x"), EXIT_INVALID, "not in this CA's trust domain"),
        (("issue", "--id", "spiffe://shop.local/x", "--out", "x", "--ttl", "2"), EXIT_INVALID, "--ttl"),
    ],
)
def test_bad_input_exits_invalid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], code: int, message: str
) -> None:
    state = str(tmp_path / "s")
    if argv[0] == "issue":
        assert run(capsys, "mesh", "ca", "init", "--state-dir", state, "--trust-domain", "shop.local")[0] == EXIT_OK
    rc, _, err = run(capsys, "mesh", "ca", argv[0], "--state-dir", state, *argv[1:])
    assert rc == code
    assert message in err


def test_show_without_a_ca_is_not_found(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "mesh", "ca", "show", "--state-dir", str(tmp_path))
    assert code == EXIT_NOT_FOUND
    assert "facade mesh ca init" in err
