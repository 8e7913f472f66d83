"""A workload's own identity: its private key (generated here, never sent anywhere) and its SVID.

    key, csr_pem = WorkloadIdentity.new_csr(spiffe_id)
    cert_pem, bundle_pem = <the CA signs csr_pem>
    identity = WorkloadIdentity.from_pem(key, cert_pem)
    if identity.should_rotate(now): ...            # at ~50 % of the lifetime, with jitter

Rotation follows Istio's agent: renew when a fraction of the lifetime (0.5) has passed, give
or take a jitter, so a fleet issued at the same moment does not renew at the same moment. The
jitter is derived from the certificate's random serial number, which keeps ``should_rotate`` a
pure function of (certificate, now).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .spiffe import InvalidSpiffeId, SpiffeId

__all__ = ["DEFAULT_ROTATE_FRACTION", "DEFAULT_ROTATE_JITTER", "IdentityError", "WorkloadIdentity"]

DEFAULT_ROTATE_FRACTION = 0.5
DEFAULT_ROTATE_JITTER = 0.05  # +/- 5 % of the lifetime around the fraction


class IdentityError(ValueError):
    """A certificate does not fit the key or is not an SVID."""


@dataclass(frozen=True, eq=False)
class WorkloadIdentity:
    """An SVID with its private key. ``chain`` is leaf first (intermediates, if any, follow)."""

    spiffe_id: SpiffeId
    key: ec.EllipticCurvePrivateKey = field(repr=False)
    chain: tuple[x509.Certificate, ...]

    def __post_init__(self) -> None:
        assert self.chain, "an identity needs at least its leaf certificate"

    @staticmethod
    def new_csr(spiffe_id: SpiffeId | None) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
        """A fresh P-256 key and a CSR for ``spiffe_id`` signed with it. The key stays with the caller.

        ``None``: a CSR without names, for a bootstrap token to name (the CA fills in its ID).
        Raises InvalidSpiffeId for a trust domain ID: no CA may sign it (X509-SVID 5.2)."""
        key = ec.generate_private_key(ec.SECP256R1())
        builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
        if spiffe_id is not None:
            spiffe_id.require_workload()
            san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(spiffe_id))])
            builder = builder.add_extension(san, critical=True)
        csr = builder.sign(key, hashes.SHA256())
        return key, csr.public_bytes(serialization.Encoding.PEM)

    @classmethod
    def from_pem(cls, key: ec.EllipticCurvePrivateKey, cert_pem: bytes) -> WorkloadIdentity:
        """Pair ``key`` with the PEM chain the CA returned; checks that the leaf is an SVID for this key."""
        try:
            chain = tuple(x509.load_pem_x509_certificates(cert_pem))
        except ValueError as exc:
            raise IdentityError(f"not a PEM certificate chain: {exc}") from None
        leaf = chain[0]
        if leaf.public_key().public_numbers() != key.public_key().public_numbers():  # type: ignore[union-attr]
            raise IdentityError("the certificate was not issued for this private key")
        uris = uri_sans(leaf)
        if len(uris) != 1:
            raise IdentityError(f"an SVID has exactly one URI SAN, this certificate has {len(uris)}")
        try:
            spiffe_id = SpiffeId.parse_workload(uris[0])
        except InvalidSpiffeId as exc:
            raise IdentityError(f"the certificate's URI SAN is not a workload SPIFFE ID: {exc}") from None
        return cls(spiffe_id=spiffe_id, key=key, chain=chain)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> WorkloadIdentity:
        """Read ``key.pem`` and ``cert.pem`` written by ``write``."""
        path = Path(directory)
        key = serialization.load_pem_private_key((path / "key.pem").read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise IdentityError(f"{path / 'key.pem'} is not an ECDSA key")
        return cls.from_pem(key, (path / "cert.pem").read_bytes())

    # -- views ----------------------------------------------------------------------------

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def not_before(self) -> datetime:
        return self.leaf.not_valid_before_utc

    @property
    def not_after(self) -> datetime:
        return self.leaf.not_valid_after_utc

    @property
    def cert_pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.chain)

    def key_pem(self, password: bytes | None = None) -> bytes:
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
        )
        return self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)

    # -- rotation -------------------------------------------------------------------------

    def rotate_at(
        self, *, fraction: float = DEFAULT_ROTATE_FRACTION, jitter: float = DEFAULT_ROTATE_JITTER
    ) -> datetime:
        """When to renew: ``not_before + lifetime * (fraction +/- jitter)``, jitter fixed per certificate."""
        assert 0 < fraction < 1 and 0 <= jitter < min(fraction, 1 - fraction), "fraction/jitter out of range"
        lifetime = self.not_after - self.not_before
        spread = ((self.leaf.serial_number % 10_007) / 10_006) * 2 - 1  # in [-1, 1]
        return self.not_before + lifetime * (fraction + jitter * spread)

    def should_rotate(
        self, now: datetime, *, fraction: float = DEFAULT_ROTATE_FRACTION, jitter: float = DEFAULT_ROTATE_JITTER
    ) -> bool:
        return now >= self.rotate_at(fraction=fraction, jitter=jitter)

    def remaining(self, now: datetime) -> timedelta:
        return self.not_after - now

    # -- files ----------------------------------------------------------------------------

    def write(self, directory: str | os.PathLike[str], *, bundle_pem: bytes | None = None) -> Path:
        """Write ``key.pem``, ``cert.pem`` (and ``bundle.pem``) into ``directory`` (0700), files 0600."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(path, 0o700)
        _write_private(path / "key.pem", self.key_pem())
        _write_private(path / "cert.pem", self.cert_pem)
        if bundle_pem is not None:
            _write_private(path / "bundle.pem", bundle_pem)
        return path


def _write_private(path: Path, data: bytes) -> None:
    # Write to a 0600 temp file then rename, so a reader never sees a half-written key or cert.
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def uri_sans(cert: x509.Certificate) -> list[str]:
    """The certificate's URI SANs (an X.509-SVID has exactly one: its SPIFFE ID)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return list(san.get_values_for_type(x509.UniformResourceIdentifier))
