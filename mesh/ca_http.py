"""The CA's HTTP face: ``POST /mesh/ca/sign`` for the admin listener to mount.

    request:  {"token": "<bootstrap token>", "csr": "<PEM CSR>"}
    200:      {"spiffe_id": "...", "certificate": "<PEM>", "bundle": "<PEM>", "expires": "<ISO 8601>"}
    400:      malformed body          401: token missing or rejected          422: CSR rejected

The token is the authorisation (it names the one SPIFFE ID it may obtain), so the route needs no
admin bearer token; the private key never travels, only the CSR does.
"""

from __future__ import annotations

import asyncio
import json

from cryptography import x509
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from .ca import CertificateAuthority, CsrRejected, TokenRejected

__all__ = ["MAX_SIGN_REQUEST_BYTES", "SIGN_PATH", "ca_routes"]

SIGN_PATH = "/mesh/ca/sign"
MAX_SIGN_REQUEST_BYTES = 64 * 1024  # a CSR is ~0.5 KiB; anything this big is not one


def ca_routes(ca: CertificateAuthority) -> list[Route]:
    """Starlette routes serving ``ca``; mount them on the admin listener."""

    async def sign(request: Request) -> JSONResponse:
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_SIGN_REQUEST_BYTES:
                return _error(413, f"request body over {MAX_SIGN_REQUEST_BYTES} bytes")
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return _error(400, 'body must be JSON: {"token": ..., "csr": ...}')
        if not isinstance(payload, dict):
            return _error(400, 'body must be a JSON object: {"token": ..., "csr": ...}')
        token, csr = payload.get("token"), payload.get("csr")
        if not isinstance(token, str) or not token:
            return _error(401, "a bootstrap token is required (POST /mesh/tokens issues one)")
        if not isinstance(csr, str):
            return _error(400, "csr must be a PEM string")
        try:
            # Off the event loop: redeeming commits to the CA ledger with synchronous=FULL (~10-20 ms).
            cert_pem, bundle_pem = await asyncio.to_thread(ca.redeem, token, csr.encode("utf-8"))
        except TokenRejected as exc:
            return _error(401, str(exc))
        except CsrRejected as exc:
            return _error(422, str(exc))
        leaf = x509.load_pem_x509_certificate(cert_pem)
        spiffe_id = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        return JSONResponse(
            {
                "spiffe_id": str(spiffe_id.get_values_for_type(x509.UniformResourceIdentifier)[0]),
                "certificate": cert_pem.decode("ascii"),
                "bundle": bundle_pem.decode("ascii"),
                "expires": leaf.not_valid_after_utc.isoformat(),
            }
        )

    return [Route(SIGN_PATH, sign, methods=["POST"])]


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)
