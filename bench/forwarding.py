"""The forwarding rows of the benchmark (``bench/run.py --only forwarding``).

* ``ssh -L`` throughput: 1 GB (200 MB with ``--quick``) from a server to the client through
  a local forward, read by this process from the forward's local port. For trissh+podman
  the server runs inside the user's container (busybox ``nc -ll -e`` running GNU ``dd``,
  which writes 1 MB at a time, from the bench image); for sshd the same command on the host.
  Timing starts at the local connect and ends at EOF: the tunnel alone, no login.
* ``ssh -N -L`` ready: wall time from starting the client until its local port listens
  (the kernel's socket table, so no connection is made).
"""

from __future__ import annotations

import socket
import statistics
import subprocess
import time
from collections.abc import Callable
from typing import Any

#: Where the server listens, inside the container or on the host.
SERVER_PORT = 9000
BLOCK = 1_000_000
READ = 1 << 20


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listens(port: int) -> bool:
    """Whether something listens on 127.0.0.1:port, read from /proc (no connection)."""
    wanted = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as table:
        return any(
            line.split()[1] == wanted and line.split()[3] == "0A" for line in table.readlines()[1:]
        )


def wait_listening(port: int, timeout: float = 60) -> float:
    start = time.perf_counter()
    while not listens(port):
        if time.perf_counter() - start > timeout:
            raise RuntimeError(f"nothing listens on {port} after {timeout} s")
        time.sleep(0.002)
    return time.perf_counter() - start


def read_all(port: int) -> tuple[int, float]:
    """Connect, read to EOF; (bytes, seconds)."""
    buffer = bytearray(READ)
    total = 0
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        while got := sock.recv_into(buffer):
            total += got
    return total, time.perf_counter() - start


def tunnel_rate(bench: Any, server: Any, *, cipher: str, size: int, inside: bool) -> float:
    """MB/s of one ``size``-byte transfer through a fresh ``ssh -L``."""
    local = free_port()
    serve = f"nc -ll -p {SERVER_PORT} -e dd if=/dev/zero bs={BLOCK} count={size // BLOCK}"
    command = serve if inside else "sleep 600"
    argv = bench.ssh_argv(
        server,
        command,
        cipher=cipher,
        kex="curve25519-sha256",
        options=["-o", "ExitOnForwardFailure=yes", "-L", f"{local}:127.0.0.1:{SERVER_PORT}"],
    )
    client = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        wait_listening(local)
        deadline = time.monotonic() + 60
        while True:  # until the server behind the forward is up
            got, seconds = read_all(local)
            if got >= size // BLOCK * BLOCK:
                return got / 1e6 / seconds
            if time.monotonic() > deadline:
                raise RuntimeError(f"{server.name}: -L carried {got} bytes")
            time.sleep(0.1)
    finally:
        client.kill()
        client.wait()


def ready_seconds(bench: Any, server: Any) -> float:
    """Seconds until ``ssh -N -L`` listens locally."""
    local = free_port()
    argv = bench.ssh_argv(
        server, kex="curve25519-sha256", options=["-N", "-L", f"{local}:127.0.0.1:{SERVER_PORT}"]
    )
    client = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        return wait_listening(local)
    finally:
        client.kill()
        client.wait()


def host_server(size: int) -> subprocess.Popen[bytes]:
    """The sshd side's server: the same busybox nc and GNU dd, on the host."""
    return subprocess.Popen(
        ["busybox", "nc", "-ll", "-p", str(SERVER_PORT), "-e",
         "dd", "if=/dev/zero", f"bs={BLOCK}", f"count={size // BLOCK}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def measure_forwarding(
    bench: Any,
    figures: dict[str, Any],
    interleaved: Callable[..., dict[str, list[float]]],
    names: tuple[str, str],
) -> None:
    """Fill the ``fwd_*`` figures for trissh+podman and sshd (``names``), interleaved."""
    podman_name, sshd_name = names
    if podman_name not in bench.servers:
        return
    size = 200_000_000 if bench.quick else 1_000_000_000
    runs = 3
    host = host_server(size)
    try:
        for key, cipher in (("fwd_aes", "aes128-gcm@openssh.com"),
                            ("fwd_chacha", "chacha20-poly1305@openssh.com")):  # fmt: skip
            got = interleaved(
                bench,
                [podman_name, sshd_name],
                runs,
                lambda s, c=cipher: tunnel_rate(
                    bench, s, cipher=c, size=size, inside=s.name == podman_name
                ),
            )
            for name, values in got.items():
                figures[key].set(name, values)
        got = interleaved(
            bench, [podman_name, sshd_name], 10, lambda s: ready_seconds(bench, s) * 1000
        )
        for name, values in got.items():
            figures["fwd_ready"].set(name, values)
        figures["fwd_ready"].note = (
            f"median trissh+podman {statistics.median(got[podman_name]):.1f} ms "
            f"(no container yet: it starts at the first forwarded connection)"
        )
    finally:
        host.kill()
        host.wait()
