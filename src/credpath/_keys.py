"""Fernet key material in one place: parsing key settings, generating keys, reading and writing key files.

- :func:`parse_keys`: comma-separated Fernet keys (the first encrypts, all decrypt), checked exactly as
  ``cryptography.fernet.Fernet()`` checks them (url-safe base64 of 32 bytes) without importing
  cryptography, so a bad setting is found on a read that decrypts nothing. A bad one is a
  :class:`KeySettingError` that names the setting and the key's position, never the key.
- Key files are written whole or not at all: a private (0600) temporary file in the same directory,
  fsynced, then linked (:func:`create_key_file`: of concurrent creators exactly one wins) or renamed
  (:func:`replace_key_file`) into place, and the directory fsynced so the new name survives a crash.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import stat
from pathlib import Path

from credpath.errors import ConfigError

__all__ = [
    "KeySettingError",
    "create_key_file",
    "generate_key",
    "parse_keys",
    "read_key_file",
    "replace_key_file",
]

log = logging.getLogger("credpath.keys")


class KeySettingError(ConfigError):
    """A key setting holds no key, or a key that is not a Fernet key (``position``: 1-based, or None)."""

    def __init__(self, setting: str, position: int | None) -> None:
        if position is None:
            message = f"{setting} holds no Fernet key"
        else:
            message = f"{setting}: key {position} is not a Fernet key (32 url-safe base64 bytes)"
        super().__init__(message)
        self.setting = setting
        self.position = position


def parse_keys(text: str, setting: str) -> list[bytes]:
    """The comma-separated Fernet keys of ``text`` (blanks skipped), as ``Fernet()`` takes them."""
    keys: list[bytes] = []
    for position, part in enumerate((p.strip() for p in text.split(",")), 1):
        if not part:
            continue
        try:
            raw = base64.urlsafe_b64decode(part.encode("ascii"))
        except (binascii.Error, ValueError, UnicodeEncodeError):
            raw = b""
        if len(raw) != 32:
            raise KeySettingError(setting, position)
        keys.append(part.encode("ascii"))
    if not keys:
        raise KeySettingError(setting, None)
    return keys


def generate_key() -> str:
    """A new Fernet key (url-safe base64 of 32 random bytes, as ``Fernet.generate_key()``)."""
    import secrets  # hmac and _hashlib come with it: only when a key or a name is made

    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode("ascii")


def read_key_file(path: Path, *, warn_as: str = "") -> str:
    """The key file's text, stripped. FileNotFoundError when there is none (a file where its directory
    should be counts as none); any other failure is a one-line ConfigError naming the file.
    ``warn_as``: log a warning under this name when group or others can read the file."""
    try:
        mode = path.stat().st_mode
    except NotADirectoryError:
        raise FileNotFoundError(path) from None
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ConfigError(f"cannot read the key file {path} ({type(exc).__name__})") from None
    if warn_as and mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s: key file %s is readable by group/others; chmod 600 it", warn_as, path)
    try:
        return path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the key file {path} ({type(exc).__name__})") from None


def _private_temp(path: Path, text: str) -> Path:
    """``text`` in a new 0600 file beside ``path``, flushed to disk."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    import secrets

    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(text + "\n")
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _sync_directory(directory: Path) -> None:
    """Make a rename or link in ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory; the rename itself is still atomic
    finally:
        os.close(fd)


def create_key_file(path: Path, key: str) -> str:
    """Create ``path`` holding ``key`` unless it exists; returns the key the file holds afterwards (a
    concurrent creator's, if it linked first). OSError when the directory or file cannot be made."""
    tmp = _private_temp(path, key)
    try:
        os.link(tmp, path)  # of concurrent creators exactly one wins; the others read its key
    except FileExistsError:
        return read_key_file(path)
    finally:
        tmp.unlink(missing_ok=True)
    _sync_directory(path.parent)
    return key


def replace_key_file(path: Path, text: str) -> None:
    """Replace ``path``'s content with ``text`` atomically: readers see the old file or the new one, and
    after a crash the file on disk is one of the two, never a mix or empty."""
    tmp = _private_temp(path, text)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _sync_directory(path.parent)
