"""What the security tests share: a private PKI, nkeys, and a real nats-server run with a
config file of the test's own (or a shipped one), secrets passed through its environment."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import nkeys
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cryobus.shared.bus.server import EmbeddedNatsServer, free_port, nats_server_binary

REPO = Path(__file__).resolve().parents[2]
NATS_DEPLOY = REPO / "deploy" / "nats"
SERVER_NAME = "nats.cryobus.test"


# ---------------------------------------------------------------------------------- PKI


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


class CertificateAuthority:
    """A private CA (EC P-256) that issues server and client certificates into ``folder``."""

    def __init__(self, folder: Path, name: str):
        self.folder = folder
        self.name = name
        folder.mkdir(parents=True, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.UTC)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                    key_encipherment=False, data_encipherment=False, key_agreement=False,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self.cert = folder / f"{name}-ca.pem"
        self.cert.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, common_name: str, *, dns: list[str] = (), ips: list[str] = (), client: bool = False) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False
            )
        )
        names = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        stem = self.folder / f"{self.name}-{common_name}"
        out = Issued(stem.with_suffix(".crt"), stem.with_suffix(".key"))
        out.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        out.key.write_bytes(
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
        out.key.chmod(0o600)
        return out


@dataclass(frozen=True)
class Pki:
    ca: CertificateAuthority
    server: Issued  # for 127.0.0.1 / localhost
    named_server: Issued  # for SERVER_NAME only (a client dialling 127.0.0.1 must say which name to verify)
    rogue_ca: CertificateAuthority  # nobody trusts it

    def client(self, name: str) -> Issued:
        return self.ca.issue(name, client=True)


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority(folder, "cryobus")
    return Pki(
        ca=ca,
        server=ca.issue("nats-server", dns=["localhost"], ips=["127.0.0.1"]),
        named_server=ca.issue("nats-named", dns=[SERVER_NAME]),
        rogue_ca=CertificateAuthority(folder, "rogue"),
    )


# ---------------------------------------------------------------------------------- nkeys


@dataclass(frozen=True)
class NKey:
    public: str  # U... (goes in the server config)
    seed_file: Path  # S... (stays with the client)

    @property
    def seed(self) -> str:
        return self.seed_file.read_text().strip()


def new_user_nkey(folder: Path, name: str) -> NKey:
    """A fresh user nkey pair; the seed is written to ``<folder>/<name>.nk`` (mode 600)."""
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    public = nkeys.from_seed(bytearray(seed)).public_key.decode()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.nk"
    path.write_bytes(seed + b"\n")
    path.chmod(0o600)
    return NKey(public, path)


# ---------------------------------------------------------------------------------- servers


def start_server(config: Path, data_dir: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> EmbeddedNatsServer:
    """A real nats-server (JetStream) with ``config`` on a random loopback port; ``env`` is the
    server's environment (the config's ``$VARIABLES``). Validated with ``nats-server -t`` first,
    so a config error is reported as such."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    check = subprocess.run([nats_server_binary(), "-t", "-c", str(config)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    server = EmbeddedNatsServer(data_dir, config_file=config, port=free_port())
    return server.start()


def write_config(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "nats-server.conf"
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------------- the shipped hardened config


def registered_services() -> list[str]:
    from cryobus.registry import SERVICES

    return sorted(SERVICES)


@dataclass
class Hardened:
    """deploy/nats/auth.conf running as shipped: nkey users, mutual TLS, generated permissions."""

    server: EmbeddedNatsServer
    keys: dict[str, NKey]
    certs: dict[str, Issued]
    ca: Path

    @property
    def url(self) -> str:
        return f"tls://127.0.0.1:{self.server.port}"

    def fields(self, user: str) -> dict[str, object]:
        """Settings fields that make ``user``'s connection (its seed and client certificate)."""
        return {
            "nats_url": self.url,
            "nats_nkey_seed_file": self.keys[user].seed_file,
            "nats_tls_ca_file": self.ca,
            "nats_tls_cert_file": self.certs[user].cert,
            "nats_tls_key_file": self.certs[user].key,
        }

    def env(self, user: str) -> dict[str, str]:
        """The same as ``CRYOBUS_*`` environment variables, for a subprocess."""
        return {f"CRYOBUS_{k.upper()}": str(v) for k, v in self.fields(user).items()}


class ShippedServer(EmbeddedNatsServer):
    """A config that names its own JetStream folder (``store_dir: $NATS_STORE_DIR``) cannot also
    take ``-sd``: start it the way its header says, with host/port flags for the test."""

    def __init__(self, config: Path, data_dir: Path):
        super().__init__(data_dir, config_file=config, port=free_port())

    def start(self, timeout_s: float = 15.0) -> ShippedServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [nats_server_binary(), "-c", str(self.config_file), "-a", self.host, "-p", str(self.port)],
                env={**os.environ, "NATS_STORE_DIR": str(self.data_dir / "jetstream")},
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.wait_listening(timeout_s)
        return self


@pytest.fixture(scope="module")
def hardened(pki, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hardened")
    users = [*registered_services(), "cli"]
    keys = {u: new_user_nkey(tmp / "keys", u) for u in users}
    certs = {u: pki.client(f"{u}-{tmp.name}") for u in users}
    env = {"NATS_TLS_CERT": str(pki.server.cert), "NATS_TLS_KEY": str(pki.server.key), "NATS_TLS_CA": str(pki.ca.cert)}
    env |= {f"NKEY_{u.upper()}": k.public for u, k in keys.items()}
    env["NATS_STORE_DIR"] = str(tmp / "nats" / "jetstream")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        check = subprocess.run([nats_server_binary(), "-t", "-c", str(NATS_DEPLOY / "auth.conf")], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        server = ShippedServer(NATS_DEPLOY / "auth.conf", tmp / "nats").start()
    yield Hardened(server, keys, certs, pki.ca.cert)
    server.stop()
