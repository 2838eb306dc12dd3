"""How fast stdio leaves a container through podman's REST exec stream, without any SSH.

Usage::

    python bench/podman_stream.py --url unix:///run/trissh-podman/podman.sock
        --image localhost/trissh-bench:latest --bytes 1000000000 --runs 3

Prints one JSON object: MB/s of ``head -c N /dev/zero`` (GNU head in the bench image) read
from the exec stream, per run, two ways, both in one container made by trissh's
``PodmanBackend`` (so it is created and removed exactly as trissh does it):

* ``raw``: a blocking unix socket, ``POST /exec/{id}/start`` with the ``Upgrade: tcp``
  hijack, bytes counted as they arrive (the 8-byte stream frames included, not parsed):
  the ceiling of the REST path;
* ``backend``: the same stream read through ``PodmanBackend``'s ``Process.stdout`` (frames
  demultiplexed by trissh), i.e. what a trissh session read before direct stdio;
* ``direct``: ``PodmanBackend`` with ``direct_stdio`` (the default): ``head`` writes into a
  pipe handed into the container, ``Process.stdout`` is the pipe's other end — the raw path
  a trissh session reads now (another container of the same image, with the exec helper).

Timing starts at the exec-start request and ends at EOF; exec creation is not included.
"""

from __future__ import annotations

import argparse
import json
import socket
import time
import uuid
from typing import Any

import structlog
import trio

from trissh.backend import ContainerSettings, ProcessSpec, SandboxSpec
from trissh.backend.podman import PodmanBackend
from trissh.config import ServerConfig

API = "/v4.0.0/libpod"


def _socket_path(url: str) -> str:
    if not url.startswith("unix://"):
        raise SystemExit(f"only unix:// podman URLs are supported, not {url!r}")
    return url.removeprefix("unix://")


def _request(
    path: str, method: str, target: str, body: dict[str, Any] | None, upgrade: bool = False
) -> tuple[socket.socket, int, bytes]:
    """Send one HTTP/1.1 request; return the socket, the status and what followed the head."""
    data = json.dumps(body).encode() if body is not None else b""
    head = [
        f"{method} {target} HTTP/1.1",
        "Host: d",
        f"Content-Length: {len(data)}",
        "Content-Type: application/json",
    ]
    if upgrade:
        head += ["Connection: Upgrade", "Upgrade: tcp"]
    else:
        head += ["Connection: close"]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + data)
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    header, _, rest = received.partition(b"\r\n\r\n")
    status = int(header.split(b" ", 2)[1])
    return sock, status, rest


def _json_call(path: str, method: str, target: str, body: dict[str, Any] | None) -> Any:
    sock, status, rest = _request(path, method, target, body)
    with sock:
        while chunk := sock.recv(65536):
            rest += chunk
    if status >= 300:
        raise RuntimeError(f"{method} {target}: HTTP {status}: {rest[:200]!r}")
    # podman answers with Content-Length here, no chunked encoding for these calls
    return json.loads(rest) if rest.strip() else None


def raw_exec_read(path: str, container_id: str, command: str) -> tuple[int, float]:
    """Bytes read from one exec's hijacked stream and the seconds it took."""
    created = _json_call(
        path,
        "POST",
        f"{API}/containers/{container_id}/exec",
        {
            "AttachStdout": True,
            "AttachStderr": True,
            "AttachStdin": False,
            "Cmd": ["/bin/sh", "-c", command],
        },
    )
    exec_id = created["Id"]
    start = time.perf_counter()
    sock, status, rest = _request(
        path, "POST", f"{API}/exec/{exec_id}/start", {"Detach": False, "Tty": False}, upgrade=True
    )
    if status not in (101, 200):
        raise RuntimeError(f"exec start: HTTP {status}")
    total = len(rest)
    buffer = bytearray(1 << 20)
    with sock:
        while n := sock.recv_into(buffer):
            total += n
    return total, time.perf_counter() - start


async def backend_read(sandbox: Any, command: str) -> tuple[int, float]:
    total = 0
    async with sandbox.open_process(ProcessSpec(argv=["/bin/sh", "-c", command])) as process:
        start = time.perf_counter()
        while data := await process.stdout.receive_some(1 << 20):
            total += len(data)
        elapsed = time.perf_counter() - start
        await process.wait()
    return total, elapsed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--image", default="localhost/trissh-bench:latest")
    parser.add_argument("--bytes", type=int, default=1_000_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--helper", default=ServerConfig().podman.exec_helper)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    path = _socket_path(args.url)
    backend = PodmanBackend(args.url)
    direct = PodmanBackend(args.url, exec_helper=args.helper, direct_stdio=True)
    spec = SandboxSpec(
        conn_id="bench-stream",
        username="bench",
        remote="127.0.0.1:0",
        instance=f"bench-{uuid.uuid4().hex[:8]}",
        settings=ContainerSettings(image=args.image),
    )
    command = f"exec head -c {args.bytes} /dev/zero"
    result: dict[str, list[float]] = {"raw": [], "backend": [], "direct": []}
    async with backend.open_sandbox(spec) as sandbox, direct.open_sandbox(spec) as piped:
        # warm-up: page cache, the exec path
        await trio.to_thread.run_sync(
            raw_exec_read, path, sandbox.container_id, "exec head -c 10000000 /dev/zero"
        )
        for _ in range(args.runs):
            n, seconds = await trio.to_thread.run_sync(
                raw_exec_read, path, sandbox.container_id, command
            )
            if n < args.bytes:
                raise SystemExit(f"raw exec stream: only {n} of {args.bytes} bytes")
            result["raw"].append(args.bytes / seconds / 1e6)
            n, seconds = await backend_read(sandbox, command)
            if n != args.bytes:
                raise SystemExit(f"PodmanBackend stdout: {n} of {args.bytes} bytes")
            result["backend"].append(args.bytes / seconds / 1e6)
            n, seconds = await backend_read(piped, command)
            if n != args.bytes:
                raise SystemExit(f"PodmanBackend direct stdout: {n} of {args.bytes} bytes")
            result["direct"].append(args.bytes / seconds / 1e6)
    direct.close()
    print(json.dumps(result))


if __name__ == "__main__":
    trio.run(main)
