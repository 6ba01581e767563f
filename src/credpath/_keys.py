"""Fernet key material in one place: parsing key settings, generating keys, reading and writing key files.

- :func:`parse_keys`: comma-separated Fernet keys (the first encrypts, all decrypt), checked exactly as
  ``cryptography.fernet.Fernet()`` checks them (url-safe base64 of 32 bytes) without importing
  cryptography, so a bad setting is found on a read that decrypts nothing. A bad one is a
  :class:`KeySettingError` that names the setting and the key's position, never the key.
- Key files are written whole or not at all: a private (0600) temporary file in the same directory,
  fsynced, then linked (:func:`create_key_file`: of concurrent creators exactly one wins) or renamed
  (:func:`replace_key_file`) into place, and the directory fsynced so the new name survives a crash.
- :class:`KeySource`: the metastore's keys over their life: the ``fernet_key`` argument, else
  ``CREDPATH_FERNET_KEY``, else ``$CREDPATH_HOME/fernet.key``, generated on the first write and noticed
  when another process replaces it (a key rotation).
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import stat
from pathlib import Path
from typing import Protocol

from credpath.errors import ConfigError

__all__ = [
    "KEY_ENV",
    "KEY_FILE_NAME",
    "KeySettingError",
    "KeySource",
    "KeyStore",
    "create_key_file",
    "generate_key",
    "parse_keys",
    "read_key_file",
    "replace_key_file",
]

log = logging.getLogger("credpath.keys")
# The metastore's voice for its key file's life (the logger its users filter on).
_store_log = logging.getLogger("credpath.backends.metastore")

#: The generated key file's name in ``$CREDPATH_HOME``.
KEY_FILE_NAME = "fernet.key"
#: The environment variable holding configured keys (comma-separated; the first encrypts).
KEY_ENV = "CREDPATH_FERNET_KEY"


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


def _file_id(path: Path) -> tuple[int, int, int] | None:
    """What changes when a file is replaced (inode, size, mtime), or None when it is missing."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


class KeyStore(Protocol):
    """What a :class:`KeySource` asks of the store whose values its keys encrypt."""

    #: The directory of the key file (``$CREDPATH_HOME``).
    home: Path

    @property
    def safe_url(self) -> str: ...

    def config_error(self, message: str) -> ConfigError: ...

    def _has_encrypted_rows(self) -> bool: ...


class KeySource:
    """Where a store's Fernet keys come from, in order: the ``fernet_key`` argument (even empty), else
    ``CREDPATH_FERNET_KEY`` (read at each use), else the key file in the store's home.

    A read never creates anything: a missing file is then the error that the key which wrote the values is
    gone. A write (``create``) generates the file, 0600 and atomically, unless the store already holds
    encrypted values: a new key could not decrypt them. Errors speak in the store's voice.
    """

    def __init__(self, argument: str | None, store: KeyStore) -> None:
        self.argument = argument
        self._store = store
        #: The key file's identity when its keys were loaded (None: not loaded from the file).
        self._loaded_id: tuple[int, int, int] | None = None

    @property
    def path(self) -> Path:
        """The key file."""
        return self._store.home / KEY_FILE_NAME

    @property
    def origin(self) -> str:
        """``"fernet_key"``, ``"CREDPATH_FERNET_KEY"`` or ``"file"``."""
        if self.argument is not None:
            return "fernet_key"
        if os.environ.get(KEY_ENV):
            return KEY_ENV
        return "file"

    def configured(self) -> tuple[str, str] | None:
        """(keys, setting) of a configured key (the argument or the environment); None: the key file."""
        if self.argument is not None:
            return self.argument, "fernet_key"
        if os.environ.get(KEY_ENV):
            return os.environ[KEY_ENV], KEY_ENV
        return None

    def load(self, create: bool = False) -> tuple[str, str]:
        """(comma-separated keys, the setting they came from); ``create``: for a write."""
        configured = self.configured()
        if configured is not None:
            return configured
        text = self._from_file(create)
        self._loaded_id = _file_id(self.path)
        return text, str(self.path)

    def replaced(self) -> bool:
        """Whether the key file was replaced since its keys were loaded (a stat)."""
        return self._loaded_id is not None and _file_id(self.path) != self._loaded_id

    def forget(self) -> None:
        """The loaded keys are dropped: the next load records the file as it is then."""
        self._loaded_id = None

    def read_file(self) -> str:
        """The key file's text; FileNotFoundError when there is none."""
        try:
            return read_key_file(self.path, warn_as="metastore")
        except ConfigError as exc:
            raise self._store.config_error(str(exc)) from None

    def missing_error(self) -> ConfigError:
        return self._store.config_error(
            f"{self._store.safe_url} holds encrypted values but no Fernet key is configured and {self.path} "
            "is missing; set CREDPATH_FERNET_KEY (or fernet_key) or restore the key file"
        )

    def _from_file(self, create: bool) -> str:
        try:
            return self.read_file()
        except FileNotFoundError:
            if not create:
                # Only a read that found an encrypted value asks: the key that wrote it is gone.
                raise self.missing_error() from None
            return self._generate()

    def _generate(self) -> str:
        # A new key cannot decrypt what an old one wrote: refuse instead of orphaning existing data.
        if self._store._has_encrypted_rows():
            # Every writer links its key file before its first row, so rows seen now mean a key file
            # that exists now, unless it was really lost (a concurrent first writer just won the race).
            try:
                return self.read_file()
            except FileNotFoundError:
                raise self.missing_error() from None
        try:
            key = create_key_file(self.path, generate_key())
        except OSError as exc:
            raise self._store.config_error(
                f"cannot create the key file {self.path}: {exc.strerror or type(exc).__name__}"
            ) from None
        _store_log.info("metastore: generated a new Fernet key in %s (mode 0600); back it up", self.path)
        return key
