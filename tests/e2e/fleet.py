"""A fleet as docs/deployment.md describes it: trissh processes behind a real HAProxy.

The balancer runs ``docs/fleet/haproxy.cfg`` and the instances ``docs/fleet/trissh.toml``
themselves, their documented addresses replaced by loopback ones, so the documentation and
what the tests run cannot drift apart. Clients connect from 127.0.0.2 (``ssh -b``), the
balancer from 127.0.0.1: a log line's ``remote`` tells which one an instance saw.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tomllib
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from ..support import free_port, require_binary, ssh_argv

DOCS = Path(__file__).resolve().parents[2] / "docs" / "fleet"
#: The balancer's and the client's addresses on loopback.
BALANCER_IP = "127.0.0.1"
CLIENT_IP = "127.0.0.2"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)  # strings, numbers and lists of them read the same in TOML


def write_toml(path: Path, settings: Mapping[str, Any]) -> None:
    """Top-level scalars, then one table per nested mapping (enough for these tests)."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in settings.items() if not isinstance(v, dict)]
    for name, table in settings.items():
        if isinstance(table, dict):
            lines.append(f"[{name}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    path.write_text("\n".join(lines) + "\n")


@dataclass
class Instance:
    """One ``python -m trissh`` process and everything it logged so far."""

    name: str
    process: trio.Process
    port: int
    metrics_port: int
    instance: str
    log: bytearray = field(default_factory=bytearray)

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        parsed = [json.loads(line) for line in self.log.splitlines() if line.startswith(b"{")]
        return [e for e in parsed if name is None or e.get("event") == name]


def instance_settings(
    tmp_path: Path, name: str, *, podman_url: str, authorized_keys: Path, **extra: Any
) -> dict[str, Any]:
    """docs/fleet/trissh.toml for a loopback balancer, plus what a test instance needs."""
    settings: dict[str, Any] = tomllib.loads((DOCS / "trissh.toml").read_text())
    settings["proxy"]["trusted_networks"] = [f"{BALANCER_IP}/32"]
    settings["metrics"]["listen"] = "127.0.0.1:0"
    settings.update(
        listen=["127.0.0.1:0"],
        host_keys=[str(tmp_path / "host_key")],  # one key for the whole fleet
        authorized_keys=str(authorized_keys),
        podman={"url": podman_url},
    )
    for dotted, value in extra.items():
        section, key = dotted.split("__")
        settings.setdefault(section, {})[key] = value
    return settings


@asynccontextmanager
async def run_instance(
    tmp_path: Path, name: str, settings: Mapping[str, Any]
) -> AsyncIterator[Instance]:
    """Start the instance; return once it listens (its ports come from its log)."""
    config = tmp_path / f"{name}.toml"
    write_toml(config, settings)
    argv = [sys.executable, "-m", "trissh", "--config", str(config)]
    async with trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(
            partial(trio.run_process, check=False, stderr=subprocess.PIPE), argv
        )
        assert process.stderr is not None
        log = bytearray()
        started: dict[str, Any] = {}
        with trio.fail_after(30):
            while "server_started" not in started:
                chunk = await process.stderr.receive_some()
                assert chunk, f"{name} exited early: {log.decode(errors='replace')}"
                log += chunk
                for line in log.splitlines():
                    if line.startswith(b"{"):
                        event = json.loads(line)
                        started.setdefault(event["event"], event)
        server = Instance(
            name=name,
            process=process,
            port=int(started["server_started"]["listen"][0].rsplit(":", 1)[1]),
            metrics_port=int(started["metrics_http_started"]["listen"][0].rsplit(":", 1)[1]),
            instance=str(started["server_started"]["instance"]),
            log=log,
        )

        async def keep_reading() -> None:
            assert process.stderr is not None
            while chunk := await process.stderr.receive_some():
                server.log += chunk

        nursery.start_soon(keep_reading)
        try:
            yield server
        finally:
            if process.returncode is None:
                process.kill()


@dataclass
class Balancer:
    process: trio.Process
    port: int
    stats_socket: Path
    output: bytearray = field(default_factory=bytearray)

    def servers(self) -> dict[str, dict[str, str]]:
        """``show stat`` of the ``trissh`` backend's servers: name -> fields."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.stats_socket))
            sock.sendall(b"show stat\n")
            raw = b""
            while chunk := sock.recv(65536):
                raw += chunk
        lines = raw.decode().splitlines()
        header = lines[0].removeprefix("# ").split(",")
        rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]
        return {
            row["svname"]: row
            for row in rows
            if row.get("pxname") == "trissh" and row["svname"] not in ("BACKEND", "FRONTEND")
        }


def haproxy_config(tmp_path: Path, front_port: int, instances: list[Instance]) -> str:
    """docs/fleet/haproxy.cfg with loopback addresses; each replaced line must be there."""
    text = (DOCS / "haproxy.cfg").read_text()
    replacements = {
        "bind 10.0.0.10:22": f"bind {BALANCER_IP}:{front_port}",
        "stats socket /run/haproxy/trissh.sock": f"stats socket {tmp_path / 'haproxy.sock'}",
    }
    for number, server in enumerate(instances, start=1):
        documented = f"server trissh{number} 10.0.0.1{number}:2222 port 9100"
        replacements[documented] = (
            f"server trissh{number} 127.0.0.1:{server.port} port {server.metrics_port}"
        )
    for old, new in replacements.items():
        assert text.count(old) == 1, f"docs/fleet/haproxy.cfg lost {old!r}"
        text = text.replace(old, new)
    return text


@asynccontextmanager
async def run_balancer(tmp_path: Path, instances: list[Instance]) -> AsyncIterator[Balancer]:
    """HAProxy in the foreground (``-db``) until the block ends."""
    port = free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(haproxy_config(tmp_path, port, instances))
    async with trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(
            partial(
                trio.run_process,
                check=False,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            ),
            [require_binary("haproxy"), "-db", "-f", str(config)],
        )
        balancer = Balancer(process, port, tmp_path / "haproxy.sock")

        async def keep_reading() -> None:
            assert process.stdout is not None
            while chunk := await process.stdout.receive_some():
                balancer.output += chunk

        nursery.start_soon(keep_reading)
        try:
            with trio.fail_after(10):
                while not balancer.stats_socket.exists():
                    if process.returncode is not None:
                        await trio.sleep(0.5)  # its last words
                        pytest.fail(f"haproxy: {balancer.output.decode(errors='replace')}")
                    await trio.sleep(0.01)
            yield balancer
        finally:
            if process.returncode is None:
                process.kill()


def client_argv(port: int, key: Path, *command: str, source: str = CLIENT_IP) -> list[str]:
    """The OpenSSH client bound to ``source``, to the balancer."""
    argv = ssh_argv(port, key, *command)
    return [argv[0], "-b", source, *argv[1:]]


async def ssh_through(
    port: int, key: Path, *command: str, source: str = CLIENT_IP, timeout: float = 60
) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(timeout):
        return await trio.run_process(
            client_argv(port, key, *command, source=source),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
