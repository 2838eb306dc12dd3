"""Real OpenSSH logins with keys in the formats and states of issue 23: a key exported with
``ssh-keygen -e`` (RFC 4716) in an authorized keys file; keys and certificates revoked in a
KRL made by ``ssh-keygen -k``, and a new KRL picked up by a reload (in process, and by
SIGHUP to a real ``python -m trissh``)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from trissh.backend.memory import MemoryBackend
from trissh.config import ServerConfig, load_config
from trissh.server.build import build_context, reload_context

from ..support import make_context, needs, run_ssh, ssh_argv, start_server, wait_until

pytestmark = [
    needs("ssh", "ssh-keygen"),
    pytest.mark.interop,
]


def keygen(*args: str) -> str:
    return subprocess.run(
        ["ssh-keygen", "-q", *args], check=True, capture_output=True, text=True
    ).stdout


@pytest.mark.parametrize("spec", [["-t", "ed25519"], ["-t", "ecdsa"], ["-t", "rsa", "-b", "3072"]])
async def test_a_key_exported_as_rfc4716_logs_in(
    nursery: trio.Nursery, tmp_path: Path, spec: list[str]
) -> None:
    key = tmp_path / "id"
    keygen(*spec, "-N", "", "-f", str(key))
    authorized = tmp_path / "authorized_keys"
    authorized.write_text("# exported with ssh-keygen -e\n" + keygen("-e", "-f", f"{key}.pub"))
    assert "BEGIN SSH2 PUBLIC KEY" in authorized.read_text()
    ctx = make_context(MemoryBackend(), authorized, tmp_path / "host_key")
    server = await start_server(nursery, ctx)
    result = await run_ssh(server.port, key, "echo in")
    assert (result.returncode, result.stdout) == (0, b"in\n"), result.stderr
    other = tmp_path / "other"
    keygen("-t", "ed25519", "-N", "", "-f", str(other))
    refused = await run_ssh(server.port, other, "echo in")
    assert refused.returncode == 255
    await server.stop()


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    """alice and carol with plain keys, bob with a certificate (serial 7) from ca."""
    for name in ("ca", "alice", "bob", "carol"):
        keygen("-t", "ed25519", "-N", "", "-C", name, "-f", str(tmp_path / name))
    keygen(
        "-s", str(tmp_path / "ca"), "-I", "bob", "-z", "7", "-n", "bob", str(tmp_path / "bob.pub")
    )
    (tmp_path / "authorized_keys").write_text(
        (tmp_path / "alice.pub").read_text() + (tmp_path / "carol.pub").read_text()
    )
    return tmp_path


def make_krl(pki: Path, spec: str) -> None:
    """Write ``pki/krl`` anew from a KRL specification (serials and ids are ca's)."""
    (pki / "spec").write_text(spec)
    (pki / "krl").unlink(missing_ok=True)
    keygen("-k", "-f", str(pki / "krl"), "-s", str(pki / "ca.pub"), str(pki / "spec"))


def revocation_settings(pki: Path) -> Callable[[], ServerConfig]:
    def load() -> ServerConfig:
        return load_config(
            None,
            {
                "listen": ["127.0.0.1:0"],
                "host_keys": [str(pki / "host_key")],
                "authorized_keys": str(pki / "authorized_keys"),
                "auth": {
                    "trusted_user_ca_keys": [(pki / "ca.pub").read_text()],
                    "revoked_keys": str(pki / "krl"),
                    "failure_delay": 0,
                },
            },
        )

    return load


async def logins(port: int, pki: Path) -> dict[str, int]:
    return {
        name: (await run_ssh(port, pki / name, "true", user=name)).returncode
        for name in ("alice", "bob", "carol")
    }


async def test_krl_refuses_a_key_and_a_certificate_and_a_reload_reads_a_new_one(
    nursery: trio.Nursery, pki: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A reload applies the configuration's logging; the suite's own must stay in force.
    monkeypatch.setattr("trissh.server.build.set_log_level", lambda *_: None)
    make_krl(pki, f"key: {(pki / 'alice.pub').read_text()}serial: 7\n")
    load = revocation_settings(pki)
    ctx = build_context(load(), MemoryBackend())
    server = await start_server(nursery, ctx)
    assert await logins(server.port, pki) == {"alice": 255, "bob": 255, "carol": 0}
    make_krl(pki, f"key: {(pki / 'carol.pub').read_text()}serial: 8-100\n")
    reload_context(ctx, load)
    assert await logins(server.port, pki) == {"alice": 0, "bob": 0, "carol": 255}
    await server.stop()


async def test_sighup_to_a_running_server_picks_up_a_new_krl(pki: Path) -> None:
    """The operator's path: ``python -m trissh`` with JSON logs; its podman does not exist,
    so only the authentication verdict of each login is read (from the log)."""
    make_krl(pki, "serial: 7\n")
    config = pki / "trissh.toml"
    config.write_text(
        f'listen = ["127.0.0.1:0"]\nhost_keys = ["{pki / "host_key"}"]\n'
        f'authorized_keys = "{pki / "authorized_keys"}"\n'
        '[podman]\nurl = "unix:///nonexistent/podman.sock"\n'
        f'[auth]\nrevoked_keys = "{pki / "krl"}"\nfailure_delay = 0\n'
        f'trusted_user_ca_keys = ["{(pki / "ca.pub").read_text().strip()}"]\n'
    )
    log = bytearray()

    def events(name: str) -> list[dict[str, Any]]:
        found = [json.loads(line) for line in log.splitlines() if line.startswith(b"{")]
        return [event for event in found if event["event"] == name]

    argv = [sys.executable, "-m", "trissh", "--config", str(config)]
    async with trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(
            partial(trio.run_process, check=False, stderr=subprocess.PIPE), argv
        )

        async def drain() -> None:
            assert process.stderr is not None
            while chunk := await process.stderr.receive_some():
                log.extend(chunk)

        nursery.start_soon(drain)
        try:
            await wait_until(lambda: bool(events("server_started")), timeout=30)
            port = int(events("server_started")[0]["listen"][0].rsplit(":", 1)[1])

            async def verdict(name: str, count: int) -> str:
                with trio.fail_after(30):
                    await trio.run_process(
                        ssh_argv(port, pki / name, "true", user=name), check=False,
                        capture_stdout=True, capture_stderr=True,
                    )  # fmt: skip
                await wait_until(lambda: len(events("connection_closed")) >= count)
                last = [e for e in log.splitlines() if b'"auth_' in e][-1]
                return str(json.loads(last)["event"])

            assert await verdict("bob", 1) == "auth_failed"
            reasons = [event["reason"] for event in events("auth_failed")]
            assert any("certificate serial 7 revoked" in reason for reason in reasons)
            assert await verdict("alice", 2) == "auth_succeeded"
            make_krl(pki, f"key: {(pki / 'alice.pub').read_text()}")
            process.send_signal(signal.SIGHUP)
            await wait_until(lambda: len(events("revoked_keys_loaded")) == 2)
            await wait_until(lambda: bool(events("config_reloaded")))
            assert await verdict("alice", 3) == "auth_failed"
            assert await verdict("bob", 4) == "auth_succeeded"
        finally:
            process.send_signal(signal.SIGTERM)
            with trio.fail_after(30):
                await process.wait()
    assert process.returncode == 0, log.decode(errors="replace")[-2000:]
