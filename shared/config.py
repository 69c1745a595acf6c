"""One settings object for every service, from environment (``CRYOBUS_*``) and CLI flags.

Secrets (NATS credentials, S3 keys) come only from the environment or mounted files: the S3
keys are read by the store library from the standard ``AWS_*`` variables and never logged.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Runtime configuration shared by all services.

    Every field can be set as ``CRYOBUS_<FIELD>`` (e.g. ``CRYOBUS_NATS_URL``); list fields take
    JSON (``CRYOBUS_WATCH='["/data/a","/data/b"]'``).
    """

    model_config = SettingsConfigDict(env_prefix="CRYOBUS_", extra="ignore")

    nats_url: str = Field(default="nats://127.0.0.1:4222", description="NATS server URL(s), comma separated.")
    nats_user: str | None = None
    nats_password: SecretStr | None = None
    nats_creds_file: Path | None = Field(default=None, description="NATS .creds file (JWT + nkey seed).")
    nats_nkey_seed_file: Path | None = None
    nats_tls_ca_file: Path | None = None
    nats_tls_cert_file: Path | None = None
    nats_tls_key_file: Path | None = None
    # Secrets may also come from mounted files (Kubernetes/compose secrets), read at connect
    # time; set the value or its file, not both (docs/security.md).
    nats_password_file: Path | None = Field(
        default=None, description="File holding the NATS password (instead of nats_password)."
    )
    nats_token: SecretStr | None = Field(default=None, description="NATS authentication token.")
    nats_token_file: Path | None = Field(default=None, description="File holding the NATS token (instead of nats_token).")
    nats_tls_hostname: str | None = Field(
        default=None, description="Name to verify in the NATS server's certificate when it differs from the URL's host."
    )
    connect_timeout_s: float = Field(default=120.0, description="How long to retry the initial connect.")

    store_url: str = Field(default="file://./cryobus-artifacts", description="Artifact store root URL.")
    state_dir: Path = Field(default=Path("./cryobus-state"), description="Local state: embedded NATS data, ingest ledger, logs.")

    watch: list[Path] = Field(default_factory=list, description="Folders ingest watches (each is also an allowed root).")
    roots: list[Path] = Field(
        default_factory=list, description="Further folders ingest may read on request (`cryobus ingest PATH`) but does not watch."
    )
    dataset: str | None = Field(default=None, description="Dataset name override for every watched root.")
    poll_interval_s: float = Field(default=2.0, description="Polling rescan interval (NFS/GPFS fallback).")
    settle_s: float = Field(default=0.5, description="A file must keep its size/mtime this long to count as complete.")
    truncated_after_s: float = Field(
        default=30.0, description="An MRC shorter than its header promises, unchanged this long, is refused as truncated."
    )

    max_in_flight: int = Field(default=2, ge=1, description="Messages one replica processes at once.")
    ack_wait_s: float = Field(default=30.0, description="Redelivery timeout without heartbeat.")
    max_deliver: int = Field(default=5, ge=2, description="Deliveries before a message is dead-lettered.")
    nak_backoff_s: list[float] = Field(default_factory=lambda: [1.0, 2.0, 5.0, 10.0])
    shutdown_grace_s: float = Field(default=25.0, description="On SIGTERM, time to finish in-flight work.")
    max_image_bytes: int = Field(default=8 << 30, description="Refuse inputs whose header promises more than this.")
    metadata_pool_threshold: int = Field(
        default=2000, description="Parse at least this many new NextPYP pkls in a pool of worker processes."
    )

    labelling_host: str = Field(
        default="127.0.0.1", description="Address the labelling web app binds (loopback unless told otherwise)."
    )
    labelling_port: int = Field(default=8080, description="Port of the labelling web app (`cryobus up --http-port`); 0: a free one.")
    labelling_db_url: SecretStr | None = Field(
        default=None,
        description="Label store, a SQLAlchemy URL (sqlite:///file or postgresql://user:pass@host/db); "
        "default <state_dir>/labelling/labels.sqlite.",
    )
    labelling_access_token: SecretStr | None = Field(
        default=None,
        description="Shared access token of the labelling sign-in form; unset: one is generated into "
        "<state_dir>/labelling/access_token (unless a trusted proxy header is configured).",
    )
    labelling_trusted_header: str | None = Field(
        default=None, description="Header with the labeler's e-mail set by a trusted reverse proxy (e.g. X-Forwarded-Email)."
    )
    labelling_trusted_proxies: list[str] = Field(
        default_factory=lambda: ["127.0.0.1", "::1"], description="Client addresses whose trusted header is believed."
    )
    labelling_cookie_secure: bool = Field(default=False, description="Mark labelling session cookies Secure (HTTPS).")

    convert_params: Path | None = Field(
        default=None,
        description="CryoLike params .npz the convert service uses for particle jobs ingest announces; "
        "unset: a descriptor built from the particles with CryoLike's defaults (docs/convert.md).",
    )

    stream_replicas: int = Field(
        default=1, ge=1, le=5,
        description="JetStream replicas of the cryobus streams (3 on a 3-node cluster); services create and update "
        "the streams with it, one-shot CLI commands only create missing ones.",
    )

    http_host: str = "127.0.0.1"
    http_port: int = Field(default=0, description="Port for /metrics, /healthz, /readyz (0: pick a free one).")
    log_level: str = "INFO"

    def __repr_args__(self):  # type: ignore[override]
        # SecretStr fields already print as '**********'; a URL may still carry a password or
        # token (nats://user:pass@host), so repr()/str() of the settings mask it too.
        from cryobus.shared.logging import redact

        for name, value in super().__repr_args__():
            yield name, redact(value) if isinstance(value, str) and "://" in value else value
