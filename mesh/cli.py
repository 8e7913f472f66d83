"""``facade mesh ...`` commands: the CA (``ca init``, ``ca issue``, ``ca show``) and the sidecar.

    facade mesh sidecar --service catalog --control-plane http://127.0.0.1:9901 --bootstrap-token T \
        [--inbound 127.0.0.1:15101 --app http://127.0.0.1:8002] [--outbound 127.0.0.1:15001] [--admin 127.0.0.1:15000]
    facade mesh ca init  --state-dir .facade --trust-domain shop.local [--force]
    facade mesh ca issue --state-dir .facade --id spiffe://shop.local/ns/shop/sa/catalog --out certs/catalog
    facade mesh ca show  --state-dir .facade [--json]
    facade mesh ca revoke --state-dir .facade (--cert cert.pem | --serial HEX)

``ca issue`` is a development helper: it generates the key locally, signs a CSR with the CA in the
same process and writes ``key.pem``, ``cert.pem`` and ``bundle.pem`` (0600) into ``--out``.
Sidecars obtain their certificates with a bootstrap token instead (``POST /mesh/ca/sign``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from facade.cli.console import (
    EXIT_FAILURE,
    EXIT_INVALID,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    add_json_option,
    fail,
    print_json,
    render_table,
)
from facade.yamlfile import parse_duration

from .ca import DEFAULT_SVID_TTL, CaError, CaExists, CaNotFound, CertificateAuthority, CsrRejected
from .identity import WorkloadIdentity
from .spiffe import InvalidSpiffeId, SpiffeId

__all__ = ["register"]

DEFAULT_STATE_DIR = ".facade"
ENV_BOOTSTRAP_TOKEN = "FACADE_MESH_TOKEN"


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    mesh = subparsers.add_parser("mesh", help="service mesh: certificate authority and identities")
    mesh.set_defaults(func=lambda args: _usage(mesh))
    mesh_sub = mesh.add_subparsers(dest="mesh_command", metavar="ACTION")

    ca = mesh_sub.add_parser("ca", help="the mesh certificate authority (SPIFFE X.509-SVIDs)")
    ca.set_defaults(func=lambda args: _usage(ca))
    ca_sub = ca.add_subparsers(dest="ca_command", metavar="ACTION")

    p = ca_sub.add_parser("init", help="create the CA's ECDSA P-256 root under STATE_DIR/ca")
    _add_state_dir(p)
    p.add_argument("--trust-domain", required=True, metavar="DOMAIN", help="the SPIFFE trust domain, e.g. shop.local")
    p.add_argument("--force", action="store_true", help="replace an existing CA (invalidates every issued cert)")
    p.add_argument(
        "--drop-previous",
        action="store_true",
        help="with --force: do not keep the replaced root in the trust bundle (its SVIDs stop working at once)",
    )
    add_json_option(p)
    p.set_defaults(func=_cmd_init)

    p = ca_sub.add_parser("issue", help="issue an X.509-SVID (key generated locally; a development helper)")
    _add_state_dir(p)
    p.add_argument("--id", required=True, dest="spiffe_id", help="the SPIFFE ID, e.g. spiffe://shop.local/ns/shop/sa/x")
    p.add_argument("--out", required=True, metavar="DIR", help="directory for key.pem, cert.pem and bundle.pem (created 0700)")
    p.add_argument("--ttl", default="24h", metavar="D", help="certificate lifetime (default 24h)")
    add_json_option(p)
    p.set_defaults(func=_cmd_issue)

    p = ca_sub.add_parser("revoke", help="revoke an SVID: the control plane refuses it from now on")
    _add_state_dir(p)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--cert", help="the certificate's PEM file (e.g. cert.pem of `ca issue`)")
    which.add_argument("--serial", help="its serial number in hex (the sidecar's /config shows it)")
    add_json_option(p)
    p.set_defaults(func=_cmd_revoke)

    p = mesh_sub.add_parser("sidecar", help="run a service's sidecar: inbound mTLS + policy, outbound mTLS, admin")
    p.add_argument("--service", required=True, metavar="NAME", help="the service this sidecar fronts (a name in facade.yaml)")
    p.add_argument("--control-plane", required=True, metavar="URL", help="the facade's admin URL, e.g. http://127.0.0.1:9901")
    p.add_argument(
        "--bootstrap-token",
        default=os.environ.get(ENV_BOOTSTRAP_TOKEN),
        metavar="TOKEN",
        help=f"one-use token from POST /mesh/tokens (default: ${ENV_BOOTSTRAP_TOKEN})",
    )
    p.add_argument("--inbound", metavar="HOST:PORT", help="inbound listener (mTLS per the service's mode); needs --app")
    p.add_argument("--app", metavar="URL", help="the local app the inbound listener forwards to")
    p.add_argument("--outbound", metavar="HOST:PORT", help="outbound listener for the app's calls (Host: <service>)")
    p.add_argument("--admin", metavar="HOST:PORT", help="admin listener: /healthz, /metrics, /config")
    p.add_argument("--poll-wait", default="30s", metavar="D", help="control-plane long-poll wait (default 30s)")
    add_json_option(p)
    p.set_defaults(func=_cmd_sidecar)

    p = ca_sub.add_parser("show", help="show the CA: trust domain, fingerprint, validity")
    _add_state_dir(p)
    p.add_argument("--bundle", action="store_true", help="print the trust bundle PEM only")
    add_json_option(p)
    p.set_defaults(func=_cmd_show)


def _add_state_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state-dir", default=DEFAULT_STATE_DIR, metavar="DIR", help="state directory (default: .facade)")


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_INVALID


def _fail(args: argparse.Namespace, message: str, code: int) -> int:
    return fail(args, message, code)  # "facade mesh ca init: ...", like every command


def _describe(ca: CertificateAuthority) -> dict[str, Any]:
    from cryptography.hazmat.primitives import hashes

    cert = ca.certificate
    return {
        "trust_domain": ca.trust_domain,
        "directory": str(ca.directory),
        "subject": cert.subject.rfc4514_string(),
        "sha256": cert.fingerprint(hashes.SHA256()).hex(":"),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
    }


def _print_ca(info: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(info)
    else:
        print(render_table(["field", "value"], list(info.items())))


def _cmd_init(args: argparse.Namespace) -> int:
    try:
        ca = CertificateAuthority.init(
            args.state_dir, args.trust_domain, force=args.force, keep_previous=not args.drop_previous
        )
    except CaExists as exc:
        return _fail(args, str(exc), EXIT_REFUSED)
    except CaError as exc:
        return _fail(args, str(exc), EXIT_INVALID)
    except OSError as exc:
        return _fail(args, f"cannot write the CA: {exc}", EXIT_FAILURE)
    _print_ca(_describe(ca), args.json)
    return EXIT_OK


def _load(args: argparse.Namespace) -> CertificateAuthority | int:
    try:
        return CertificateAuthority.load(args.state_dir)
    except CaNotFound as exc:
        return _fail(args, str(exc), EXIT_NOT_FOUND)
    except CaError as exc:
        return _fail(args, str(exc), EXIT_FAILURE)


def _cmd_issue(args: argparse.Namespace) -> int:
    try:
        spiffe_id = SpiffeId.parse_workload(args.spiffe_id)
    except InvalidSpiffeId as exc:
        return _fail(args, f"--id {args.spiffe_id!r}: {exc}", EXIT_INVALID)
    try:
        ttl = timedelta(seconds=parse_duration(args.ttl)) if args.ttl else DEFAULT_SVID_TTL
    except ValueError as exc:
        return _fail(args, f"--ttl: {exc}", EXIT_INVALID)
    ca = _load(args)
    if isinstance(ca, int):
        return ca
    # The key is made here and handed to the CA only as a CSR, exactly as a sidecar would.
    key, csr_pem = WorkloadIdentity.new_csr(spiffe_id)
    try:
        cert_pem = ca.sign_csr(csr_pem, spiffe_id=spiffe_id, ttl=ttl)
    except CsrRejected as exc:
        return _fail(args, str(exc), EXIT_INVALID)
    identity = WorkloadIdentity.from_pem(key, cert_pem)
    try:
        out = identity.write(args.out, bundle_pem=ca.trust_bundle_pem)
    except OSError as exc:
        return _fail(args, f"cannot write to {args.out}: {exc}", EXIT_FAILURE)
    info = {
        "spiffe_id": str(spiffe_id),
        "serial": format(identity.leaf.serial_number, "x"),
        "not_before": identity.not_before.isoformat(),
        "not_after": identity.not_after.isoformat(),
        "rotate_at": identity.rotate_at().isoformat(),
        "files": [str(out / "key.pem"), str(out / "cert.pem"), str(out / "bundle.pem")],
    }
    if args.json:
        print_json(info)
    else:
        print(
            render_table(["field", "value"], [(k, ", ".join(v) if isinstance(v, list) else v) for k, v in info.items()])
        )
    return EXIT_OK


def _cmd_revoke(args: argparse.Namespace) -> int:
    from cryptography import x509

    ca = _load(args)
    if isinstance(ca, int):
        return ca
    try:
        if args.cert:
            with open(args.cert, "rb") as fh:
                serial = ca.revoke(x509.load_pem_x509_certificate(fh.read()))
        else:
            serial = ca.revoke_serial(args.serial)
    except OSError as exc:
        return _fail(args, f"--cert {args.cert}: {exc.strerror or exc}", EXIT_FAILURE)
    except ValueError as exc:
        return _fail(args, f"--cert {args.cert}: not a PEM certificate: {exc}", EXIT_INVALID)
    except CaError as exc:
        return _fail(args, str(exc), EXIT_INVALID)
    if args.json:
        print_json({"revoked": serial})
    else:
        print(f"revoked {serial}")
    return EXIT_OK


def _cmd_show(args: argparse.Namespace) -> int:
    ca = _load(args)
    if isinstance(ca, int):
        return ca
    if args.bundle:
        sys.stdout.write(ca.trust_bundle_pem.decode("ascii"))
        return EXIT_OK
    info = _describe(ca)
    info["expired"] = ca.certificate.not_valid_after_utc <= datetime.now(UTC)
    _print_ca(info, args.json)
    return EXIT_OK


def _cmd_sidecar(args: argparse.Namespace) -> int:
    from .sidecar import ControlPlaneError, Sidecar, SidecarOptions

    if not args.bootstrap_token:
        return _fail(args, f"--bootstrap-token (or ${ENV_BOOTSTRAP_TOKEN}) is required", EXIT_INVALID)
    if not (args.inbound or args.outbound):
        return _fail(args, "give --inbound (with --app) and/or --outbound", EXIT_INVALID)
    try:
        options = SidecarOptions(
            service=args.service,
            control_plane=args.control_plane,
            bootstrap_token=args.bootstrap_token,
            inbound=args.inbound,
            app=args.app,
            outbound=args.outbound,
            admin=args.admin,
            poll_wait=parse_duration(args.poll_wait),
        )
    except ValueError as exc:
        return _fail(args, str(exc), EXIT_INVALID)

    async def run() -> int:
        sidecar = Sidecar(options)
        try:
            await sidecar.start()
        except ControlPlaneError as exc:
            await sidecar.stop()
            return _fail(args, str(exc), EXIT_REFUSED if exc.status in (401, 403, 404) else EXIT_UNREACHABLE)
        except OSError as exc:
            await sidecar.stop()
            return _fail(args, str(exc), EXIT_FAILURE)
        ready = {
            "service": sidecar.service,
            "spiffe_id": str(sidecar.spiffe_id),
            "inbound": sidecar.inbound_url or None,
            "outbound": sidecar.outbound_url or None,
            "admin": sidecar.admin_url or None,
        }
        if args.json:
            print(json.dumps(ready), flush=True)  # one line: `facade up` and tests read it as the ready signal
        else:
            print(" ".join(f"{k}={v}" for k, v in ready.items() if v), flush=True)
        sys.stdout.flush()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await sidecar.stop()
        return EXIT_OK

    try:
        import uvloop  # uvicorn[standard] brings it; the data path is I/O-bound on the loop
    except ImportError:  # pragma: no cover
        return asyncio.run(run())
    return int(uvloop.run(run()))
