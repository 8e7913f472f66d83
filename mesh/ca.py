"""The mesh certificate authority: an ECDSA P-256 root that signs X.509-SVIDs from CSRs.

    ca = CertificateAuthority.init(".facade", "shop.local")          # once; refuses to overwrite
    ca = CertificateAuthority.load(".facade")                        # afterwards
    token = ca.issue_bootstrap_token(SpiffeId.parse("spiffe://shop.local/ns/shop/sa/catalog"))
    # ... in the sidecar, which keeps its key:  key, csr = WorkloadIdentity.new_csr(spiffe_id)
    cert_pem, bundle_pem = ca.redeem(token, csr)

Files under ``<state_dir>/ca/`` (directory 0700): ``root.crt`` (the trust bundle),
``root.key`` and ``token.key`` (both 0600). Private keys of workloads never reach the CA:
it only ever sees a CSR, whose signature proves the requester holds the key.

Bootstrap tokens are ``v1.<payload>.<mac>`` with an HMAC-SHA256 over the payload (SPIFFE ID,
expiry, nonce) keyed by ``token.key``. They are single-use, durably: the nonce of a redeemed
token is written to ``<state_dir>/ca/ledger.sqlite3`` (WAL, ``synchronous=FULL``) in the same
transaction that decides the redemption, so neither a restart, nor a second process on the
same state directory, nor two concurrent requests can redeem one token twice. Nonces are
forgotten once their token has expired (the expiry alone refuses it then). An in-memory CA
(``create``) keeps them in memory.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .identity import WorkloadIdentity
from .spiffe import InvalidSpiffeId, SpiffeId

__all__ = [
    "CA_DIRNAME",
    "CA_LEDGER_FILE",
    "DEFAULT_BACKDATE",
    "DEFAULT_ROOT_TTL",
    "DEFAULT_SVID_TTL",
    "DEFAULT_TOKEN_TTL",
    "CaError",
    "CaExists",
    "CaNotFound",
    "CertificateAuthority",
    "CsrRejected",
    "TokenRejected",
    "WorkloadIdentity",  # re-exported: the other half of issuance lives in mesh.identity
]

CA_DIRNAME = "ca"
DEFAULT_ROOT_TTL = timedelta(days=3650)
DEFAULT_SVID_TTL = timedelta(hours=24)
DEFAULT_BACKDATE = timedelta(minutes=1)
DEFAULT_TOKEN_TTL = timedelta(hours=1)
_ROOT_CERT = "root.crt"
_ROOT_KEY = "root.key"
_TOKEN_KEY = "token.key"
CA_LEDGER_FILE = "ledger.sqlite3"  # used token nonces and revoked serials
_PREVIOUS_CERT = "previous.crt"
_TOKEN_VERSION = "v1"


class CaError(Exception):
    """Base class of CA failures; the message is meant for the operator."""


class CaExists(CaError):
    """``init`` found a CA already there and ``force`` was not given."""


class CaNotFound(CaError):
    """``load`` found no CA (or an incomplete one) in the state directory."""


class CsrRejected(CaError):
    """A CSR cannot be signed: unreadable, bad signature, weak key, or a SAN other than the authorised ID."""


class TokenRejected(CaError):
    """A bootstrap token is malformed, forged, expired, or already used."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _write_private(path: Path, data: bytes) -> None:
    # Create with 0600 from the start (no window where the key is world-readable), then write.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class _TokenClaims:
    spiffe_id: SpiffeId
    expires: datetime
    nonce: str


class _Ledger:
    """Nonces of redeemed tokens and serials of revoked SVIDs. ``claim`` is a critical section:
    check, run the body, record."""

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._memory: dict[str, datetime] = {}
        self._revoked: dict[str, float] = {}  # in-memory CA only
        self._lock = threading.Lock()
        self._ready = False  # file, WAL mode and tables set up

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # Opened on the first redemption, not on load: ``ca show`` must work on a read-only directory.
        assert self._path is not None
        if not self._ready:
            fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
            os.close(fd)
        db = sqlite3.connect(self._path, timeout=10.0, isolation_level=None)
        try:
            db.execute("PRAGMA synchronous=FULL")
            if not self._ready:
                # Once per process: WAL is a property of the file, the tables stay.
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("CREATE TABLE IF NOT EXISTS used_tokens (nonce TEXT PRIMARY KEY, expires REAL NOT NULL)")
                db.execute(
                    "CREATE TABLE IF NOT EXISTS revoked "
                    "(serial TEXT PRIMARY KEY, not_after REAL NOT NULL, at REAL NOT NULL)"
                )
                self._ready = True
            yield db
        finally:
            db.close()

    @contextlib.contextmanager
    def claim(self, nonce: str, expires: datetime, now: datetime) -> Iterator[None]:
        """Refuse a used nonce; else run the body and record the nonce, atomically (a failing body records nothing)."""
        with self._lock:
            if self._path is None:
                for old in [n for n, exp in self._memory.items() if exp <= now]:
                    del self._memory[old]
                if nonce in self._memory:
                    raise TokenRejected("bootstrap token has already been used")
                yield
                self._memory[nonce] = expires
                return
            with self._connect() as db:
                # BEGIN IMMEDIATE takes the write lock first: another process redeeming the same
                # token waits here and then sees this one's nonce.
                db.execute("BEGIN IMMEDIATE")
                try:
                    db.execute("DELETE FROM used_tokens WHERE expires <= ?", (now.timestamp(),))
                    if db.execute("SELECT 1 FROM used_tokens WHERE nonce = ?", (nonce,)).fetchone():
                        raise TokenRejected("bootstrap token has already been used")
                    yield
                    db.execute("INSERT INTO used_tokens (nonce, expires) VALUES (?, ?)", (nonce, expires.timestamp()))
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise

    def revoke(self, serial: str, not_after: datetime, now: datetime) -> None:
        if self._path is None:
            self._revoked[serial] = not_after.timestamp()
            return
        with self._connect() as db:
            db.execute("DELETE FROM revoked WHERE not_after <= ?", (now.timestamp(),))
            db.execute(
                "INSERT OR IGNORE INTO revoked (serial, not_after, at) VALUES (?, ?, ?)",
                (serial, not_after.timestamp(), now.timestamp()),
            )

    def is_revoked(self, serial: str) -> bool:
        if self._path is None:
            return serial in self._revoked
        if not self._path.exists():
            return False  # nothing was ever redeemed or revoked
        with self._connect() as db:
            return db.execute("SELECT 1 FROM revoked WHERE serial = ?", (serial,)).fetchone() is not None


class CertificateAuthority:
    """A self-signed root for one trust domain. Create with ``init`` or ``load``, not directly."""

    def __init__(
        self,
        *,
        trust_domain: str,
        key: ec.EllipticCurvePrivateKey,
        certificate: x509.Certificate,
        token_secret: bytes,
        directory: Path | None = None,
    ) -> None:
        self.trust_domain = trust_domain
        self._key = key
        self.certificate = certificate
        self._token_secret = token_secret
        self.directory = directory
        self._used = _Ledger(directory / CA_LEDGER_FILE if directory is not None else None)
        self.previous: tuple[x509.Certificate, ...] = ()  # the replaced root, still trusted (see ``init``)

    def __repr__(self) -> str:
        return f"CertificateAuthority(trust_domain={self.trust_domain!r}, directory={str(self.directory)!r})"

    # -- lifecycle ----------------------------------------------------------------------

    @classmethod
    def create(
        cls, trust_domain: str, *, ttl: timedelta = DEFAULT_ROOT_TTL, now: datetime | None = None
    ) -> CertificateAuthority:
        """A new in-memory CA (``init`` persists one). Useful for tests and ephemeral meshes."""
        td = SpiffeId(trust_domain)  # validates the trust domain by the SPIFFE rules
        now = now or _utcnow()
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
                x509.NameAttribute(NameOID.COMMON_NAME, f"facade mesh root CA ({trust_domain})"),
            ]
        )
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - DEFAULT_BACKDATE)
            .not_valid_after(now + ttl)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            # A SPIFFE signing certificate may carry the trust domain's ID; ``load`` reads it back.
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(td))]), critical=False)
            .add_extension(ski, critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(trust_domain=trust_domain, key=key, certificate=cert, token_secret=secrets.token_bytes(32))

    @classmethod
    def init(
        cls,
        state_dir: str | os.PathLike[str],
        trust_domain: str,
        *,
        force: bool = False,
        keep_previous: bool = True,
        ttl: timedelta = DEFAULT_ROOT_TTL,
    ) -> CertificateAuthority:
        """Create a root under ``<state_dir>/ca`` (0700; keys 0600). Refuses to overwrite unless ``force``.

        Replacing a root keeps the replaced root's certificate as ``previous.crt`` (unless
        ``keep_previous`` is false): it stays in the trust bundle, so running workloads keep
        talking and can renew onto the new root. Delete it (or ``--drop-previous``) when the old
        key must no longer be trusted, e.g. because it leaked.
        """
        directory = Path(state_dir) / CA_DIRNAME
        existing = [p for p in (_ROOT_CERT, _ROOT_KEY, _TOKEN_KEY) if (directory / p).exists()]
        if existing and not force:
            raise CaExists(
                f"a CA already exists in {directory} ({', '.join(existing)}); "
                "replacing it invalidates every issued certificate: pass --force to do it anyway"
            )
        try:
            ca = cls.create(trust_domain, ttl=ttl)
        except InvalidSpiffeId as exc:
            raise CaError(f"invalid trust domain {trust_domain!r}: {exc}") from None
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(directory, 0o700)
        replaced = _read_root(directory / _ROOT_CERT) if keep_previous else None
        if replaced is not None and _in_domain(replaced, trust_domain):
            _write_public(directory / _PREVIOUS_CERT, replaced.public_bytes(serialization.Encoding.PEM))
        else:
            (directory / _PREVIOUS_CERT).unlink(missing_ok=True)
        key_pem = ca._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        # Keys first, certificate last: a crash in between leaves no certificate without its key.
        _write_private(directory / _ROOT_KEY, key_pem)
        _write_private(directory / _TOKEN_KEY, ca._token_secret)
        _write_public(directory / _ROOT_CERT, ca.certificate.public_bytes(serialization.Encoding.PEM))
        ca.directory = directory
        ca._used = _Ledger(directory / CA_LEDGER_FILE)
        ca.previous = _current_roots(_read_root(directory / _PREVIOUS_CERT))
        return ca

    @classmethod
    def load(cls, state_dir: str | os.PathLike[str]) -> CertificateAuthority:
        """Load the CA that ``init`` wrote under ``<state_dir>/ca``."""
        directory = Path(state_dir) / CA_DIRNAME
        try:
            cert_pem = (directory / _ROOT_CERT).read_bytes()
            key_pem = (directory / _ROOT_KEY).read_bytes()
            token_secret = (directory / _TOKEN_KEY).read_bytes()
        except FileNotFoundError as exc:
            raise CaNotFound(f"no CA in {directory}: {exc.filename} is missing (run `facade mesh ca init`)") from None
        except OSError as exc:
            raise CaError(f"cannot read the CA in {directory}: {exc.strerror or exc}") from None
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
            key = serialization.load_pem_private_key(key_pem, password=None)
        except ValueError as exc:
            raise CaError(f"the CA in {directory} is unreadable: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CaError(f"the CA key in {directory} is not an ECDSA key")
        if key.public_key().public_numbers() != cert.public_key().public_numbers():  # type: ignore[union-attr]
            raise CaError(f"the CA key and certificate in {directory} do not match")
        if len(token_secret) < 32:
            raise CaError(f"the token key in {directory} is too short")
        trust_domain = _trust_domain_of(cert)
        ca = cls(trust_domain=trust_domain, key=key, certificate=cert, token_secret=token_secret, directory=directory)
        previous = _read_root(directory / _PREVIOUS_CERT)
        if previous is not None and _in_domain(previous, trust_domain) and previous != cert:
            ca.previous = _current_roots(previous)
        return ca

    @staticmethod
    def fingerprint(state_dir: str | os.PathLike[str]) -> tuple[tuple[str, int, int, int], ...]:
        """What identifies the CA files on disk now (a re-init or a removed ``previous.crt`` changes it)."""
        directory = Path(state_dir) / CA_DIRNAME
        out = []
        for name in (_ROOT_CERT, _ROOT_KEY, _PREVIOUS_CERT):
            try:
                st = (directory / name).stat()
            except OSError:
                continue
            out.append((name, st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(out)

    # -- trust bundle -------------------------------------------------------------------

    @property
    def roots(self) -> tuple[x509.Certificate, ...]:
        """The roots an SVID may chain to: this CA's, then the one it replaced (if kept and unexpired)."""
        return (self.certificate, *self.previous)

    @property
    def trust_bundle_pem(self) -> bytes:
        """The PEM bundle peers verify against (the current root, then the replaced one, if kept)."""
        return b"".join(root.public_bytes(serialization.Encoding.PEM) for root in self.roots)

    # -- signing ------------------------------------------------------------------------

    def sign_csr(
        self,
        csr_pem: bytes,
        *,
        spiffe_id: SpiffeId,
        ttl: timedelta = DEFAULT_SVID_TTL,
        backdate: timedelta = DEFAULT_BACKDATE,
        now: datetime | None = None,
    ) -> bytes:
        """Sign ``csr_pem`` as an X.509-SVID for ``spiffe_id`` (authorised by the caller); return the PEM.

        The certificate uses the CSR's public key and nothing else from it: one URI SAN (the
        SPIFFE ID), an empty subject (so the SAN is critical, RFC 5280 4.2.1.6), cA=false,
        KeyUsage digitalSignature, EKU serverAuth + clientAuth. Validity is clamped to the root's.
        """
        if spiffe_id.trust_domain != self.trust_domain:
            raise CsrRejected(f"{spiffe_id} is not in this CA's trust domain {self.trust_domain!r}")
        try:
            spiffe_id.require_workload()
        except InvalidSpiffeId as exc:
            raise CsrRejected(str(exc)) from None
        if ttl <= timedelta(0):
            raise CsrRejected(f"ttl must be positive, got {ttl}")
        csr = _load_csr(csr_pem)
        _check_requested_names(csr, spiffe_id)
        public_key = csr.public_key()
        _check_key(public_key)
        now = now or _utcnow()
        not_before = max(now - backdate, self.certificate.not_valid_before_utc)
        not_after = min(now + ttl, self.certificate.not_valid_after_utc)
        if not_after <= now:
            raise CsrRejected("the CA root has expired; rotate the CA")
        ca_ski = self.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(spiffe_id))]), critical=True)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
                    data_encipherment=False,
                    key_agreement=isinstance(public_key, ec.EllipticCurvePublicKey),
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM)

    # -- bootstrap tokens -----------------------------------------------------------------

    def issue_bootstrap_token(
        self, spiffe_id: SpiffeId, *, ttl: timedelta = DEFAULT_TOKEN_TTL, now: datetime | None = None
    ) -> str:
        """A single-use token that lets its holder obtain one SVID for ``spiffe_id`` until it expires."""
        if spiffe_id.trust_domain != self.trust_domain:
            raise CaError(f"{spiffe_id} is not in this CA's trust domain {self.trust_domain!r}")
        try:
            spiffe_id.require_workload()
        except InvalidSpiffeId as exc:
            raise CaError(str(exc)) from None
        expires = (now or _utcnow()) + ttl
        payload = json.dumps(
            {"sub": str(spiffe_id), "exp": int(expires.timestamp()), "nonce": secrets.token_urlsafe(16)},
            separators=(",", ":"),
            sort_keys=True,
        ).encode()
        body = f"{_TOKEN_VERSION}.{_b64(payload)}"
        return f"{body}.{_b64(self._mac(body))}"

    def verify_bootstrap_token(self, token: str, *, now: datetime | None = None) -> SpiffeId:
        """The SPIFFE ID a token authorises; raises TokenRejected. Does not consume the token."""
        return self._check_token(token, now or _utcnow()).spiffe_id

    def redeem(
        self, token: str, csr_pem: bytes, *, ttl: timedelta = DEFAULT_SVID_TTL, now: datetime | None = None
    ) -> tuple[bytes, bytes]:
        """Check the token, sign the CSR for the ID it names, consume it; return (cert_pem, bundle_pem)."""
        now = now or _utcnow()
        claims = self._check_token(token, now)
        # Sign inside the claim, so a CSR mistake does not burn the token; the claim makes
        # check-sign-consume one durable transaction against a concurrent or later redeem.
        with self._used.claim(claims.nonce, claims.expires, now):
            cert_pem = self.sign_csr(csr_pem, spiffe_id=claims.spiffe_id, ttl=ttl, now=now)
        return cert_pem, self.trust_bundle_pem

    # -- revocation -----------------------------------------------------------------------

    def revoke(self, certificate: x509.Certificate, *, now: datetime | None = None) -> str:
        """Revoke an SVID this CA issued (durably, in ``ledger.sqlite3``); returns its serial (hex).

        The control plane refuses a revoked SVID for every signed request (config, renew, report),
        so its holder gets no new document and no successor certificate. Peers do not consult the
        list during a handshake: until it expires the certificate still completes mTLS, which is
        why SVIDs live 24 h by default (Istio's trade-off too); see docs/mesh.md.
        """
        if not any(_signed_by(certificate, root) for root in self.roots):
            raise CaError("this certificate was not issued by this CA")
        serial = format(certificate.serial_number, "x")
        self._used.revoke(serial, certificate.not_valid_after_utc, now or _utcnow())
        return serial

    def revoke_serial(self, serial: str, *, now: datetime | None = None) -> str:
        """Revoke by serial number (hex, as ``ca issue`` and the sidecar's ``/config`` show it), when
        the certificate itself is not at hand; remembered until the root expires."""
        try:
            normalized = format(int(serial.replace(":", ""), 16), "x")
        except ValueError:
            raise CaError(f"serial must be hexadecimal, got {serial!r}") from None
        self._used.revoke(normalized, self.certificate.not_valid_after_utc, now or _utcnow())
        return normalized

    def is_revoked(self, certificate: x509.Certificate) -> bool:
        return self._used.is_revoked(format(certificate.serial_number, "x"))

    def _mac(self, body: str) -> bytes:
        return hmac.new(self._token_secret, body.encode("ascii"), hashlib.sha256).digest()

    def _check_token(self, token: str, now: datetime) -> _TokenClaims:
        if not isinstance(token, str) or token.count(".") != 2:
            raise TokenRejected("malformed bootstrap token")
        version, payload_b64, mac_b64 = token.split(".")
        if version != _TOKEN_VERSION:
            raise TokenRejected(f"unsupported bootstrap token version {version!r}")
        try:
            mac = _unb64(mac_b64)
        except (ValueError, UnicodeEncodeError):
            raise TokenRejected("malformed bootstrap token") from None
        if not hmac.compare_digest(mac, self._mac(f"{version}.{payload_b64}")):
            raise TokenRejected("bootstrap token signature does not verify (forged, or from another CA)")
        try:
            claims = json.loads(_unb64(payload_b64))
            spiffe_id = SpiffeId.parse_workload(claims["sub"])
            expires = datetime.fromtimestamp(int(claims["exp"]), UTC)
            nonce = str(claims["nonce"])
        except (ValueError, KeyError, TypeError) as exc:
            raise TokenRejected(f"malformed bootstrap token payload: {exc}") from None
        if now >= expires:
            raise TokenRejected(f"bootstrap token expired at {expires.isoformat()}")
        return _TokenClaims(spiffe_id, expires, nonce)


def _signed_by(cert: x509.Certificate, root: x509.Certificate) -> bool:
    key = root.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or cert.signature_hash_algorithm is None:
        return False
    try:
        key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
    except InvalidSignature:
        return False
    return True


def _read_root(path: Path) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None


def _current_roots(cert: x509.Certificate | None) -> tuple[x509.Certificate, ...]:
    return (cert,) if cert is not None and cert.not_valid_after_utc > _utcnow() else ()


def _write_public(path: Path, data: bytes) -> None:
    # Write then rename: a watcher never reads half a certificate.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _in_domain(cert: x509.Certificate, trust_domain: str) -> bool:
    try:
        return _trust_domain_of(cert) == trust_domain
    except CaError:
        return False


def _trust_domain_of(cert: x509.Certificate) -> str:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        return SpiffeId.parse(uris[0]).trust_domain
    except (x509.ExtensionNotFound, IndexError, InvalidSpiffeId):
        raise CaError("the CA certificate carries no spiffe:// trust domain URI SAN") from None


def _load_csr(csr_pem: bytes) -> x509.CertificateSigningRequest:
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except (ValueError, TypeError) as exc:
        raise CsrRejected(f"not a PEM certificate signing request: {exc}") from None
    try:
        valid = csr.is_signature_valid
    except (ValueError, InvalidSignature, TypeError):
        valid = False
    if not valid:
        raise CsrRejected("the CSR signature does not verify (the requester must sign it with its own key)")
    return csr


def _check_requested_names(csr: x509.CertificateSigningRequest, spiffe_id: SpiffeId) -> None:
    """A CSR may omit the SAN (the CA fills it in); if it asks for names, they must be exactly the ID."""
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return
    requested = [str(n.value) for n in san]
    if requested != [str(spiffe_id)]:
        raise CsrRejected(f"the CSR asks for {requested} but the requester is authorised only for {str(spiffe_id)!r}")


def _check_key(public_key: object) -> None:
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if not isinstance(public_key.curve, (ec.SECP256R1, ec.SECP384R1)):
            raise CsrRejected(f"unsupported EC curve {public_key.curve.name} (use P-256 or P-384)")
        return
    if isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size < 2048:
            raise CsrRejected(f"RSA key of {public_key.key_size} bits is too weak (at least 2048)")
        return
    raise CsrRejected(f"unsupported key type {type(public_key).__name__} (use ECDSA P-256)")
