"""UserKeyStore: the keys users manage themselves through the publickey subsystem (RFC 4819).

One JSON file per user in a directory trissh alone writes (``[auth] user_keys_directory``,
default ``user-keys`` in the state directory), named after the user (percent-encoded, so
no name leaves the directory). JSON rather than authorized_keys lines: a comment or a
command a client sends can never turn into an option or a second key. Each change
replaces the file atomically (temporary file, fsync, rename) under a lock per user name,
so concurrent sessions of one trissh process never lose an update; instances sharing a
directory do not lock each other out (last writer wins).

The auth policy reads a user's file at each public key decision for users who opted in
(``[users.NAME] publickey_subsystem``): a key added now logs in from the next login, a
key removed no longer does. A file that cannot be read or parsed counts as no keys, and
says so in the log.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import secrets
import urllib.parse
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import structlog
import trio

from trissh.auth.authorized_keys import AuthorizedKey, KeyOptions
from trissh.protocol.errors import DecodeError
from trissh.protocol.keys import parse_public_key

log = structlog.get_logger("trissh.auth.user_keys")

#: The key types a user may add (what authorized_keys accepts; no certificates).
KEY_TYPES = frozenset(
    (
        "ssh-ed25519",
        "ssh-rsa",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    )
)
#: Bound on a user's file (32 keys of 16 KiB each, base64, fit with room to spare).
MAX_FILE_BYTES = 2 * 1024 * 1024
MAX_COMMENT = 1024
MAX_COMMAND = 4096


class KeyNotSupported(ValueError):
    """The blob is not a key a user may add; the message says why."""


@dataclass(frozen=True, slots=True)
class StoredKey:
    """A key as the subsystem lists it: algorithm, blob, and its two attributes."""

    algorithm: str
    blob: bytes
    comment: str = ""
    #: RFC 4819 ``command-override``: the key's forced command.
    command: str | None = None

    def authorized(self) -> AuthorizedKey:
        return AuthorizedKey(
            self.algorithm, self.blob, self.comment, KeyOptions(command=self.command)
        )

    def fingerprint(self) -> str:
        return parse_public_key(self.blob).fingerprint


def check_key(algorithm: str, blob: bytes) -> None:
    """Raises KeyNotSupported unless ``blob`` is a plain key of type ``algorithm``."""
    try:
        key = parse_public_key(blob)
    except DecodeError as exc:
        raise KeyNotSupported(f"invalid key: {exc.description}") from None
    if key.key_type not in KEY_TYPES:
        raise KeyNotSupported(f"key type {key.key_type!r} is not supported")
    if algorithm != key.key_type:
        raise KeyNotSupported(f"algorithm {algorithm!r} does not match a {key.key_type} key")


def _entry(key: StoredKey) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "algorithm": key.algorithm,
        "blob": base64.b64encode(key.blob).decode(),
        "comment": key.comment,
    }
    if key.command is not None:
        entry["command"] = key.command
    return entry


def _from_entry(entry: Any) -> StoredKey:
    if not isinstance(entry, dict):
        raise ValueError("an entry is not an object")
    algorithm, blob = entry.get("algorithm"), entry.get("blob")
    comment, command = entry.get("comment", ""), entry.get("command")
    if not isinstance(algorithm, str) or not isinstance(blob, str) or not isinstance(comment, str):
        raise ValueError("an entry lacks algorithm, blob or comment")
    if command is not None and not isinstance(command, str):
        raise ValueError("command is not a string")
    try:
        raw = base64.b64decode(blob, validate=True)
    except binascii.Error:
        raise ValueError("blob is not base64") from None
    check_key(algorithm, raw)
    return StoredKey(algorithm, raw, comment, command)


class _TooLarge(Exception):
    """The file would be larger than is read back."""


#: One lock per file, shared by every store: a reload (SIGHUP) makes a new store while
#: sessions of the old one still change keys.
_LOCKS: Final[defaultdict[str, trio.Lock]] = defaultdict(trio.Lock)


class UserKeyStore:
    def __init__(self, directory: Path, max_keys: int) -> None:
        self.directory = directory
        self.max_keys = max_keys

    def _lock(self, username: str) -> trio.Lock:
        return _LOCKS[str(self.path_for(username).absolute())]

    def path_for(self, username: str) -> Path:
        return self.directory / (urllib.parse.quote(username, safe="") + ".json")

    def _read(self, username: str) -> list[StoredKey]:
        path = self.path_for(username)
        try:
            with path.open("rb") as file:
                data = file.read(MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            return []
        if len(data) > MAX_FILE_BYTES:
            raise ValueError(f"larger than {MAX_FILE_BYTES} bytes")
        document = json.loads(data)
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise ValueError('not an object with a "keys" list')
        return [_from_entry(entry) for entry in document["keys"]]

    def _write(self, username: str, keys: list[StoredKey]) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.path_for(username)
        data = json.dumps({"version": 1, "keys": [_entry(key) for key in keys]}, indent=1)
        encoded = (data + "\n").encode()
        if len(encoded) > MAX_FILE_BYTES:
            raise _TooLarge
        # A name of its own: other instances may share the directory (docs/keys.md).
        temporary = path.with_name(f"{path.name}.{secrets.token_hex(4)}.tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(descriptor, "wb") as file:
                file.write(encoded)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise

    async def keys(self, username: str) -> list[StoredKey]:
        """The user's keys; none (and a log line) when the file is unusable."""
        try:
            return await trio.to_thread.run_sync(self._read, username)
        except (OSError, ValueError) as exc:
            log.warning("user_keys_unreadable", path=str(self.path_for(username)), error=str(exc))
            return []

    async def add(self, username: str, key: StoredKey, *, overwrite: bool) -> str:
        """``added``, ``replaced``, ``present`` (kept, ``overwrite`` false) or ``full``.

        Raises:
            OSError, ValueError: the file cannot be read or written.
        """
        async with self._lock(username):
            keys = await trio.to_thread.run_sync(self._read, username)
            index = next((i for i, k in enumerate(keys) if k.blob == key.blob), None)
            if index is not None and not overwrite:
                return "present"
            if index is None and len(keys) >= self.max_keys:
                return "full"
            if index is None:
                keys.append(key)
            else:
                keys[index] = key
            try:
                await trio.to_thread.run_sync(self._write, username, keys)
            except _TooLarge:  # it would not be read back: every key of the user lost
                return "full"
            return "added" if index is None else "replaced"

    async def remove(self, username: str, blob: bytes) -> StoredKey | None:
        """The key removed, or ``None`` if the user had no such key.

        Raises:
            OSError, ValueError: the file cannot be read or written.
        """
        async with self._lock(username):
            keys = await trio.to_thread.run_sync(self._read, username)
            found = next((k for k in keys if k.blob == blob), None)
            if found is not None:
                keys.remove(found)
                await trio.to_thread.run_sync(self._write, username, keys)
            return found
