"""UserKeyStore (the publickey subsystem's keys) and how the auth policy reads it: only
for users who opted in, from the next decision on, never a broken file's keys."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric import ed25519

from trissh.auth.policy import AuthPolicy, LoginRequest
from trissh.auth.user_keys import StoredKey, UserKeyStore
from trissh.config import load_config
from trissh.protocol import parse_public_key, wire

from ..support import capture_module_log


def new_key() -> StoredKey:
    raw = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    return StoredKey("ssh-ed25519", wire.string("ssh-ed25519") + wire.string(raw), "c")


async def test_add_list_remove_and_the_files_modes(tmp_path: Path) -> None:
    store = UserKeyStore(tmp_path / "keys", max_keys=2)
    first, second, third = new_key(), new_key(), new_key()
    assert await store.keys("kim") == []
    assert await store.add("kim", first, overwrite=False) == "added"
    assert await store.add("kim", first, overwrite=False) == "present"
    changed = StoredKey(first.algorithm, first.blob, "new comment", "echo forced")
    assert await store.add("kim", changed, overwrite=True) == "replaced"
    assert await store.add("kim", second, overwrite=False) == "added"
    assert await store.add("kim", third, overwrite=False) == "full"
    assert await store.keys("kim") == [changed, second]
    assert await store.remove("kim", third.blob) is None
    assert await store.remove("kim", changed.blob) == changed
    assert await store.keys("kim") == [second]
    assert await store.keys("lee") == []
    path = store.path_for("kim")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert not list(path.parent.glob("*.tmp"))


def test_user_names_never_leave_the_directory(tmp_path: Path) -> None:
    store = UserKeyStore(tmp_path, max_keys=1)
    for name in ("../etc/passwd", "/abs", "..", ".", "a/b", "x\0y"):
        path = store.path_for(name)
        assert path.parent == tmp_path, (name, path)
        assert "/" not in path.name
    assert store.path_for("alice").name == "alice.json"


async def test_concurrent_changes_are_not_lost(tmp_path: Path) -> None:
    store = UserKeyStore(tmp_path, max_keys=50)
    keys = [new_key() for _ in range(20)]

    async def add(key: StoredKey) -> None:
        await store.add("kim", key, overwrite=False)

    async with trio.open_nursery() as nursery:
        for key in keys:
            nursery.start_soon(add, key)
    assert {k.blob for k in await store.keys("kim")} == {k.blob for k in keys}


async def test_changes_through_the_stores_of_two_reloads_are_not_lost(tmp_path: Path) -> None:
    """A SIGHUP makes a new store while sessions of the old one still add keys: both
    serialise on the file (before: each store had its own locks, and every writer the same
    temporary file, so adds reported "added" were lost or failed; reviewer)."""
    before, after = UserKeyStore(tmp_path, max_keys=50), UserKeyStore(tmp_path, max_keys=50)
    keys = [new_key() for _ in range(16)]

    async def add(store: UserKeyStore, key: StoredKey) -> None:
        assert await store.add("kim", key, overwrite=False) == "added"

    async with trio.open_nursery() as nursery:
        for number, key in enumerate(keys):
            nursery.start_soon(add, before if number % 2 else after, key)
    assert {k.blob for k in await after.keys("kim")} == {k.blob for k in keys}
    assert sorted(os.listdir(tmp_path)) == ["kim.json"]


async def test_a_file_that_would_grow_past_what_is_read_is_full(tmp_path: Path) -> None:
    """Long comments and commands (escaped, they grow) would make a file over the 2 MiB
    that is read back, and the user's keys would all stop working: the add that would
    cross it is answered "full" and the file stays usable (reviewer)."""
    store = UserKeyStore(tmp_path, max_keys=1000)
    answers = []
    for _ in range(200):
        key = new_key()
        long = StoredKey(key.algorithm, key.blob, "\u0001" * 1000, "\u0002" * 4000)
        answers.append(await store.add("kim", long, overwrite=False))
    assert answers[0] == "added"
    assert answers[-1] == "full"
    assert len(await store.keys("kim")) == answers.count("added")


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        '{"keys": 3}',
        '{"keys": [{"algorithm": "ssh-rsa", "blob": "%s", "comment": ""}]}',
        '{"keys": [{"algorithm": "ssh-ed25519", "blob": "!!!", "comment": ""}]}',
    ],
)
async def test_a_broken_file_counts_as_no_keys_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str
) -> None:
    import base64

    log = capture_module_log(monkeypatch, "trissh.auth.user_keys")
    store = UserKeyStore(tmp_path, max_keys=5)
    blob = base64.b64encode(new_key().blob).decode()
    store.path_for("kim").write_text(content.replace("%s", blob))
    assert await store.keys("kim") == []
    [line] = [entry for entry in log if entry["event"] == "user_keys_unreadable"]
    assert line["path"] == str(store.path_for("kim"))
    with pytest.raises((ValueError, json.JSONDecodeError), match=r"."):  # no change built on it
        await store.add("kim", new_key(), overwrite=False)


def policy(tmp_path: Path, **users: Any) -> AuthPolicy:
    settings = load_config(
        None,
        {
            "host_keys": [str(tmp_path / "host_key")],
            "users": users,
            "auth.user_keys_directory": str(tmp_path / "keys"),
            "auth.failure_delay": 0,
        },
    )
    return AuthPolicy(settings)


async def test_the_policy_reads_the_keys_of_users_who_opted_in(tmp_path: Path) -> None:
    auth = policy(
        tmp_path,
        kim={"publickey_subsystem": True},
        lee={"password_hash": None},
    )
    key = new_key()
    for user in ("kim", "lee"):
        await auth.user_keys.add(user, key, overwrite=False)
    public = parse_public_key(key.blob)
    assert (await auth.publickey(LoginRequest("kim", "192.0.2.1"), public)).ok
    assert not (await auth.publickey(LoginRequest("lee", "192.0.2.1"), public)).ok
    assert not (await auth.publickey(LoginRequest("nobody", "192.0.2.1"), public)).ok
    forced = StoredKey(key.algorithm, key.blob, "", "echo only")
    await auth.user_keys.add("kim", forced, overwrite=True)
    decision = await auth.publickey(LoginRequest("kim", "192.0.2.1"), public)
    assert decision.grant.forced_command == "echo only"
    await auth.user_keys.remove("kim", key.blob)
    assert not (await auth.publickey(LoginRequest("kim", "192.0.2.1"), public)).ok
    document = json.loads(auth.user_keys.path_for("kim").read_text())
    assert document == {"version": 1, "keys": []}
