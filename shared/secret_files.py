"""Secrets from the environment or from mounted files, never from config files or flags.

A secret setting (``CRYOBUS_NATS_PASSWORD``) has a ``*_FILE`` twin (``CRYOBUS_NATS_PASSWORD_FILE``)
naming a file that holds it: a Kubernetes Secret volume, a compose/Docker secret under
``/run/secrets``. The file is read when it is needed (at connect time), so a rotated secret is
picked up by the next restart without rebuilding anything. Error messages name the setting and
the file, never the content.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import SecretStr


class ConfigError(ValueError):
    """A setting is unusable (both a secret and its file set, a file missing or unreadable...)."""


def env_name(setting: str) -> str:
    """``nats_password`` → ``CRYOBUS_NATS_PASSWORD`` (what the user sets)."""
    return f"CRYOBUS_{setting.upper()}"


def secret_value(setting: str, value: SecretStr | None, file: Path | None) -> str | None:
    """The secret given directly or in its file; None when neither is set.

    One trailing newline (``echo pw > file``) is dropped from a file's content; nothing else is
    changed.

    Args:
        setting: the settings field, e.g. ``"nats_password"`` (its file is ``<setting>_file``).
        value: the field's value.
        file: the ``<setting>_file`` field's value.

    Raises:
        ConfigError: both are set, or the file is missing, unreadable or empty.
    """
    if value is not None and file is not None:
        raise ConfigError(f"both {env_name(setting)} and {env_name(setting + '_file')} are set; set one of them")
    if value is not None:
        return value.get_secret_value()
    if file is None:
        return None
    path = readable_file(setting + "_file", file)
    text = path.read_text(encoding="utf-8")
    if text.endswith("\n"):
        text = text[:-2] if text.endswith("\r\n") else text[:-1]
    if not text:
        raise ConfigError(f"{env_name(setting + '_file')}: {path} is empty")
    return text


def readable_file(setting: str, file: Path | str) -> Path:
    """``file`` if it is a readable regular file, else a clear error naming ``setting``.

    Raises:
        ConfigError: missing, not a file, or not readable by this process.
    """
    path = Path(file)
    if not path.is_file():
        raise ConfigError(f"{env_name(setting)}: {path} does not exist or is not a file")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"{env_name(setting)}: {path} is not readable by this process")
    return path
