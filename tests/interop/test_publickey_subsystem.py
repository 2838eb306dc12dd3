"""The RFC 4819 publickey subsystem, from a client written here from the RFC (it shares no
code with trissh's own packets), over paramiko channels; logins with the real OpenSSH
client. A key added logs in; removed, it is refused; every status code trissh sends."""

from __future__ import annotations

import base64
import json
import os
import struct
from collections.abc import AsyncIterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import trio

from trissh.auth.passwords import hash_password
from trissh.backend.memory import MemoryBackend

from ..support import (
    ClientKey,
    RunningServer,
    capture_module_log,
    make_context,
    needs_ssh,
    require_module,
    run_ssh,
    start_server,
    write_ed25519_key,
)

paramiko = require_module("paramiko")
pytestmark = [pytest.mark.interop]

PASSWORD = "subsystem pw"
# RFC 4819 §3.3 status codes.
SUCCESS, ACCESS_DENIED, STORAGE_EXCEEDED, VERSION_NOT_SUPPORTED = 0, 1, 2, 3
KEY_NOT_FOUND, KEY_NOT_SUPPORTED, KEY_ALREADY_PRESENT, GENERAL_FAILURE = 4, 5, 6, 7
REQUEST_NOT_SUPPORTED, ATTRIBUTE_NOT_SUPPORTED = 8, 9


def string(value: bytes | str) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return struct.pack(">I", len(raw)) + raw


def uint32(value: int) -> bytes:
    return struct.pack(">I", value)


def boolean(value: bool) -> bytes:
    return b"\x01" if value else b"\x00"


class Fields:
    """Reads a response's fields in order."""

    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def uint32(self) -> int:
        (value,) = struct.unpack_from(">I", self.data, self.at)
        self.at += 4
        return int(value)

    def string(self) -> bytes:
        length = self.uint32()
        value = self.data[self.at : self.at + length]
        assert len(value) == length, "truncated response"
        self.at += length
        return value

    def boolean(self) -> bool:
        self.at += 1
        return self.data[self.at - 1] != 0

    def end(self) -> None:
        assert self.at == len(self.data), "trailing bytes in a response"


class PublicKeyClient:
    """RFC 4819's client side: each packet ``uint32 length, string name, fields``."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel

    def send(self, *fields: bytes) -> None:
        body = b"".join(fields)
        self.channel.sendall(uint32(len(body)) + body)

    def _exactly(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.channel.recv(size - len(data))
            if not chunk:
                raise EOFError(f"channel closed after {len(data)} of {size} bytes")
            data += chunk
        return data

    def receive(self) -> tuple[str, Fields]:
        (length,) = struct.unpack(">I", self._exactly(4))
        fields = Fields(self._exactly(length))
        return fields.string().decode(), fields

    def status(self) -> tuple[int, str]:
        name, fields = self.receive()
        assert name == "status", name
        code, description = fields.uint32(), fields.string().decode()
        fields.string()  # language tag
        fields.end()
        return code, description

    def version(self, version: int = 2) -> int:
        self.send(string("version"), uint32(version))
        name, fields = self.receive()
        assert name == "version", name
        agreed = fields.uint32()
        fields.end()
        return agreed

    def add(
        self,
        algorithm: str,
        blob: bytes,
        *,
        overwrite: bool = False,
        attributes: tuple[tuple[str, str, bool], ...] = (),
    ) -> tuple[int, str]:
        encoded = b"".join(string(n) + string(v) + boolean(c) for n, v, c in attributes)
        self.send(
            string("add"), string(algorithm), string(blob), boolean(overwrite),
            uint32(len(attributes)), encoded,
        )  # fmt: skip
        return self.status()

    def remove(self, algorithm: str, blob: bytes) -> tuple[int, str]:
        self.send(string("remove"), string(algorithm), string(blob))
        return self.status()

    def list_keys(self) -> list[tuple[str, bytes, dict[str, str]]]:
        self.send(string("list"))
        keys: list[tuple[str, bytes, dict[str, str]]] = []
        while True:
            name, fields = self.receive()
            if name == "status":
                assert fields.uint32() == SUCCESS
                return keys
            assert name == "publickey", name
            algorithm, blob = fields.string().decode(), fields.string()
            attributes = {}
            for _ in range(fields.uint32()):
                key = fields.string().decode()
                attributes[key] = fields.string().decode()
            fields.end()
            keys.append((algorithm, blob, attributes))

    def list_attributes(self) -> list[tuple[str, bool]]:
        self.send(string("listattributes"))
        found: list[tuple[str, bool]] = []
        while True:
            name, fields = self.receive()
            if name == "status":
                assert fields.uint32() == SUCCESS
                return found
            assert name == "attribute", name
            found.append((fields.string().decode(), fields.boolean()))


def blob_of(key: ClientKey) -> bytes:
    return base64.b64decode(key.public_line.split()[1])


@pytest.fixture
async def server(
    nursery: trio.Nursery, tmp_path: Path, client_key: ClientKey
) -> AsyncIterator[RunningServer]:
    users = {
        "kim": {"password_hash": hash_password(PASSWORD), "publickey_subsystem": True},
        "lee": {"password_hash": hash_password(PASSWORD)},
        "nora": {
            "authorized_keys": [f'command="echo forced" {client_key.public_line}'],
            "publickey_subsystem": True,
        },
    }
    ctx = make_context(
        MemoryBackend(), Path(os.devnull), tmp_path / "host_key", users=users,
        **{
            "auth.failure_delay": 0,
            "auth.user_keys_directory": str(tmp_path / "user-keys"),
            "auth.max_user_keys": 2,
        },
    )  # fmt: skip
    running = await start_server(nursery, ctx)
    yield running
    await running.stop()


def with_subsystem(port: int, user: str, script: Any, name: str = "publickey", **auth: Any) -> Any:
    """Log in with paramiko, open the subsystem, run ``script(client)``."""
    ssh = paramiko.SSHClient()
    ssh.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    try:
        auth = auth or {"password": PASSWORD}
        ssh.connect(
            "127.0.0.1", port=port, username=user, allow_agent=False, look_for_keys=False,
            timeout=20, **auth,
        )  # fmt: skip
        channel = ssh.get_transport().open_session(timeout=20)
        channel.settimeout(20)
        channel.invoke_subsystem(name)
        return script(PublicKeyClient(channel))
    finally:
        ssh.close()


async def subsystem(port: int, user: str, script: Any, **options: Any) -> Any:
    with trio.fail_after(60):
        return await trio.to_thread.run_sync(lambda: with_subsystem(port, user, script, **options))


def events(log: list[MutableMapping[str, Any]], name: str) -> list[MutableMapping[str, Any]]:
    return [line for line in log if line["event"] == name]


@needs_ssh
async def test_add_log_in_remove_refused(
    server: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The acceptance test: add a key, log in with it (real ssh), remove it, refused."""
    log = capture_module_log(monkeypatch, "trissh.channels.publickey")
    new = write_ed25519_key(tmp_path / "added")
    refused = await run_ssh(server.port, new.path, "echo in", user="kim")
    assert refused.returncode == 255  # not yet

    def add(client: PublicKeyClient) -> Any:
        assert client.version() == 2
        added = client.add("ssh-ed25519", blob_of(new), attributes=(("comment", "laptop", False),))
        return added, client.list_keys()

    added, listed = await subsystem(server.port, "kim", add)
    assert added == (SUCCESS, "success")
    assert listed == [("ssh-ed25519", blob_of(new), {"comment": "laptop"})]
    result = await run_ssh(server.port, new.path, "echo in", user="kim")
    assert (result.returncode, result.stdout) == (0, b"in\n"), result.stderr

    def remove(client: PublicKeyClient) -> Any:
        client.version()
        return client.remove("ssh-ed25519", blob_of(new)), client.list_keys()

    removed, listed = await subsystem(server.port, "kim", remove)
    assert (removed, listed) == ((SUCCESS, "success"), [])
    again = await run_ssh(server.port, new.path, "echo in", user="kim")
    assert again.returncode == 255
    assert b"Permission denied" in again.stderr
    changes = events(log, "user_key_changed")
    assert [line["action"] for line in changes] == ["added", "removed"]
    fingerprint = changes[0]["key_fingerprint"]
    assert fingerprint.startswith("SHA256:")
    assert changes[1]["key_fingerprint"] == fingerprint
    assert all(line["user"] == "kim" for line in changes)


async def test_status_codes(server: RunningServer, tmp_path: Path) -> None:
    """Each refusal with its RFC 4819 status; the store keeps at most max_user_keys."""
    keys = [write_ed25519_key(tmp_path / f"k{i}") for i in range(3)]
    comment_x = ("comment", "x", True)

    def script(client: PublicKeyClient) -> list[int]:
        client.version(3)  # a newer client: trissh answers with the version it speaks
        blob = blob_of(keys[0])
        codes = [
            client.add("ssh-ed25519", blob)[0],
            client.add("ssh-ed25519", blob)[0],
            client.add("ssh-ed25519", blob, overwrite=True, attributes=(comment_x,))[0],
            client.add("ssh-rsa", blob_of(keys[1]))[0],
            client.add("ssh-ed25519", b"\x00\x00\x00\x0bssh-ed25519garbage")[0],
            client.add("ssh-ed25519", blob_of(keys[1]), attributes=(("x509", "?", True),))[0],
            client.add("ssh-ed25519", blob_of(keys[1]), attributes=(("x509", "?", False),))[0],
            client.add("ssh-ed25519", blob_of(keys[2]))[0],
            client.remove("ssh-ed25519", blob_of(keys[2]))[0],
        ]
        client.send(string("frobnicate"))
        codes.append(client.status()[0])
        client.send(string("add"), string("ssh-ed25519"))  # truncated
        codes.append(client.status()[0])
        assert client.list_attributes() == [
            ("comment", False), ("comment-language", False), ("command-override", False),
        ]  # fmt: skip
        codes.append(len(client.list_keys()))
        return codes

    codes = await subsystem(server.port, "kim", script)
    assert codes == [
        SUCCESS, KEY_ALREADY_PRESENT, SUCCESS, KEY_NOT_SUPPORTED, KEY_NOT_SUPPORTED,
        ATTRIBUTE_NOT_SUPPORTED, SUCCESS, STORAGE_EXCEEDED, KEY_NOT_FOUND,
        REQUEST_NOT_SUPPORTED, GENERAL_FAILURE, 2,
    ]  # fmt: skip
    stored = json.loads((tmp_path / "user-keys" / "kim.json").read_text())
    assert [entry["comment"] for entry in stored["keys"]] == ["x", ""]


async def test_version_one_and_oversized_packets_close_the_channel(server: RunningServer) -> None:
    def old(client: PublicKeyClient) -> tuple[int, bytes]:
        client.send(string("version"), uint32(1))
        return client.status()[0], client.channel.recv(10)

    assert await subsystem(server.port, "kim", old) == (VERSION_NOT_SUPPORTED, b"")

    def huge(client: PublicKeyClient) -> tuple[int, bytes]:
        client.version()
        client.channel.sendall(uint32(1 << 20))
        return client.status()[0], client.channel.recv(10)

    assert await subsystem(server.port, "kim", huge) == (GENERAL_FAILURE, b"")


@needs_ssh
async def test_vandyke_name_and_the_command_override(server: RunningServer, tmp_path: Path) -> None:
    """``publickey@vandyke.com`` is the same subsystem; command-override becomes the key's
    forced command (listed back as it was given)."""
    new = write_ed25519_key(tmp_path / "restricted")

    def script(client: PublicKeyClient) -> Any:
        client.version()
        client.add(
            "ssh-ed25519", blob_of(new), attributes=(("command-override", "echo only", True),)
        )
        return client.list_keys()

    listed = await subsystem(server.port, "kim", script, name="publickey@vandyke.com")
    assert listed == [("ssh-ed25519", blob_of(new), {"command-override": "echo only"})]
    result = await run_ssh(server.port, new.path, "echo asked", user="kim")
    assert result.stdout == b"only\n", result.stderr


async def test_users_without_the_subsystem_and_restricted_logins(
    server: RunningServer, tmp_path: Path, client_key: ClientKey
) -> None:
    """lee did not opt in: the request is any subsystem's, and none is configured under
    that name (CHANNEL_FAILURE); nora logged in with a forced-command key: refused (RFC
    4819 §3.1). Neither gets a key file."""

    def try_it(client: PublicKeyClient) -> Any:
        return client.version()

    def outcome(client: PublicKeyClient) -> tuple[int, bytes]:
        status = client.channel.recv_exit_status()
        return status, client.channel.makefile_stderr().read()

    with pytest.raises(paramiko.SSHException):  # no such subsystem: CHANNEL_FAILURE
        await subsystem(server.port, "lee", outcome)
    with pytest.raises(paramiko.SSHException):
        await subsystem(server.port, "nora", try_it, key_filename=str(client_key.path))
    assert not (tmp_path / "user-keys").exists()


@pytest.mark.parametrize(
    "options",
    ["no-port-forwarding", "no-pty", 'from="127.0.0.0/8"', 'permitopen="localhost:80"',
     "no-agent-forwarding", 'expiry-time="29991231"', 'environment="A=b"'],
)  # fmt: skip
async def test_a_restricted_key_s_login_may_not_add_keys(
    nursery: trio.Nursery, tmp_path: Path, client_key: ClientKey, options: str
) -> None:
    """Any restriction, not only a forced command: a key it added would carry none of it
    (a no-port-forwarding login could add a key that forwards)."""
    users = {
        "rita": {
            "authorized_keys": [f"{options} {client_key.public_line}"],
            "publickey_subsystem": True,
        }
    }
    ctx = make_context(
        MemoryBackend(), Path(os.devnull), tmp_path / "host_key", users=users,
        **{"auth.failure_delay": 0, "auth.user_keys_directory": str(tmp_path / "user-keys")},
    )  # fmt: skip
    running = await start_server(nursery, ctx)
    try:
        with pytest.raises(paramiko.SSHException):
            await subsystem(
                running.port, "rita", lambda c: c.version(), key_filename=str(client_key.path)
            )
        assert not (tmp_path / "user-keys").exists()
    finally:
        await running.stop()
