"""Server CPU per handshake for each kex, and bulk throughput per cipher/MAC (not a test).

Runs trissh in this process (memory backend, every algorithm enabled, one host key of each
type) and real clients as subprocesses, so ``time.process_time()`` deltas are the server's
CPU alone. OpenSSH 9.2 ``ssh`` drives everything it has; ``mlkem768x25519-sha256`` (which it
lacks) is driven by asyncssh in a subprocess.

    .venv/bin/python bench/kex_cpu.py [--handshakes 20] [--megabytes 300]

Prints two Markdown tables. Also reports the bare server-side kex computation per method
(no network, no signature), which is the part each method adds.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.sshpeer.kex import HashPrefix, start_client_kex  # noqa: E402
from tests.support import make_context, start_server, write_ed25519_key  # noqa: E402
from trissh.backend.memory import MemoryBackend  # noqa: E402
from trissh.ops.log import configure_logging  # noqa: E402
from trissh.protocol.ciphers import CIPHERS, MACS  # noqa: E402
from trissh.protocol.kex import KEX_METHODS, KexContext, KexReply, KexTranscript  # noqa: E402
from trissh.protocol.keys import HostKey  # noqa: E402

SSH = shutil.which("ssh") or "ssh"

ASYNCSSH_CLIENT = """
import asyncio, sys, asyncssh
async def main():
    async with asyncssh.connect("127.0.0.1", int(sys.argv[1]), username="alice",
            client_keys=[sys.argv[2]], known_hosts=None, agent_path=None,
            kex_algs=[sys.argv[3]]) as conn:
        await conn.run("true")
asyncio.run(main())
"""


def ssh_argv(port: int, key: Path, *extra: str) -> list[str]:
    return [
        SSH, "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "IdentitiesOnly=yes",
        "-i", str(key), "-p", str(port), *extra,
    ]  # fmt: skip


def write_host_keys(directory: Path) -> list[str]:
    keys = {
        "ed25519": ed25519.Ed25519PrivateKey.generate(),
        "rsa": rsa.generate_private_key(public_exponent=65537, key_size=3072),
        "nistp256": ec.generate_private_key(ec.SECP256R1()),
    }
    paths = []
    for name, key in keys.items():
        path = directory / f"host_{name}"
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.OpenSSH,
                serialization.NoEncryption(),
            )
        )
        paths.append(str(path))
    return paths


def bare_kex_ms(name: str, rounds: int = 5) -> float:
    """The server's computation for one exchange (plus an ed25519 signature), in ms."""
    host_key = HostKey(ed25519.Ed25519PrivateKey.generate())
    transcript = KexTranscript(
        client_version=b"c",
        server_version=b"s",
        client_kexinit=b"i",
        server_kexinit=b"j",
        host_key=host_key.public_blob,
    )
    best = float("inf")
    for _ in range(rounds):
        client = start_client_kex(name, HashPrefix(b"c", b"s", b"i", b"j"), os.urandom)
        [first] = client.first_messages()
        exchange = KEX_METHODS[name].start(
            KexContext(transcript=transcript, sign=host_key.sign, rng=os.urandom)
        )
        started = time.process_time()
        step = exchange.receive(first[0], first)
        elapsed = time.process_time() - started
        if isinstance(step, KexReply):  # group exchange: time the second round too
            [second] = client.receive(step.payload[0], step.payload)  # type: ignore[misc]
            started = time.process_time()
            exchange.receive(second[0], second)
            elapsed += time.process_time() - started
        best = min(best, elapsed)
    return best * 1000


async def handshakes(port: int, key: Path, kex: str, count: int) -> tuple[float, float]:
    """(server CPU ms, wall ms) per complete `ssh true` with ``kex``."""
    if kex == "mlkem768x25519-sha256":
        argv = [sys.executable, "-c", ASYNCSSH_CLIENT, str(port), str(key), kex]
    else:
        argv = [*ssh_argv(port, key, "-o", f"KexAlgorithms={kex}"), "alice@127.0.0.1", "true"]
    await trio.run_process(argv, capture_stdout=True, capture_stderr=True)  # warm up
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(count):
        await trio.run_process(argv, capture_stdout=True, capture_stderr=True)
    return (
        (time.process_time() - cpu) * 1000 / count,
        (time.perf_counter() - wall) * 1000 / count,
    )


async def download(port: int, key: Path, options: list[str], size: int) -> tuple[float, float]:
    """(MB/s, server CPU seconds per GB) for `head -c size /dev/zero` to the client."""
    argv = [*ssh_argv(port, key, *options), "alice@127.0.0.1", f"head -c {size} /dev/zero"]
    cpu, wall = time.process_time(), time.perf_counter()
    await trio.run_process(argv, stdout=subprocess.DEVNULL, capture_stderr=True)
    elapsed = time.perf_counter() - wall
    return size / elapsed / 1e6, (time.process_time() - cpu) / (size / 1e9)


async def main(args: argparse.Namespace) -> None:
    configure_logging("console", "error")
    with tempfile.TemporaryDirectory() as temp:
        directory = Path(temp)
        client = write_ed25519_key(directory / "id")
        (directory / "authorized_keys").write_text(client.public_line + "\n")
        overrides = {
            "host_keys": write_host_keys(directory),
            "ssh.kex": list(KEX_METHODS),
            "ssh.ciphers": list(CIPHERS),
            "ssh.macs": list(MACS),
        }
        ctx = make_context(
            MemoryBackend(), directory / "authorized_keys", directory / "unused", **overrides
        )
        async with trio.open_nursery() as nursery:
            server = await start_server(nursery, ctx)
            print("| kex | bare server kex (ms) | server CPU per `ssh true` (ms) | wall (ms) |")
            print("|---|---:|---:|---:|")
            for kex in KEX_METHODS:
                bare = bare_kex_ms(kex)
                cpu, wall = await handshakes(server.port, client.path, kex, args.handshakes)
                print(f"| {kex} | {bare:.2f} | {cpu:.1f} | {wall:.1f} |")
            print()
            print("| cipher | MAC | download MB/s | server CPU s/GB |")
            print("|---|---|---:|---:|")
            size = args.megabytes * 1_000_000
            rows = [(name, None) for name, spec in CIPHERS.items() if spec.aead]
            rows += [
                (name, "hmac-sha2-256-etm@openssh.com") for name, s in CIPHERS.items() if not s.aead
            ]
            rows += [("aes128-ctr", mac) for mac in MACS if mac != "hmac-sha2-256-etm@openssh.com"]
            for cipher, mac in rows:
                options = ["-c", cipher] + (["-o", f"MACs={mac}"] if mac else [])
                rate, cpu_per_gb = await download(server.port, client.path, options, size)
                print(f"| {cipher} | {mac or '(AEAD)'} | {rate:.0f} | {cpu_per_gb:.2f} |")
            await server.stop()
            nursery.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--handshakes", type=int, default=20)
    parser.add_argument("--megabytes", type=int, default=300)
    trio.run(main, parser.parse_args())
