"""How fast bytes come out of a container through ``Sandbox.connect``, without any SSH.

Usage::

    python bench/forward_throughput.py --url unix:///run/trissh-podman/podman.sock
        --image localhost/trissh-bench:latest --bytes 1000000000 --runs 3

Prints one JSON object: MB/s read by this (trissh's) process, per run and the median, two
ways, in one container made by trissh's ``PodmanBackend`` with its agent:

* ``connect``: ``nc -l -p 9000 -e dd if=/dev/zero bs=1000000 count=N/10^6`` in the
  container (busybox ``nc`` only accepts; GNU ``dd`` then writes into the socket itself, 1 MB
  a write), reached with ``Sandbox.connect`` (a socket the agent made in the container's
  network namespace and handed over): the ceiling of an ``ssh -L`` tunnel's container side.
  (GNU ``head`` writes 8 KiB at a time, which caps TCP over loopback here near 150-200 MB/s
  whoever reads: that measures the writer, not trissh.)
* ``stdio``: ``head -c N /dev/zero`` as a program whose stdout is a pipe (direct stdio),
  for comparison: what a session's download reads.

Each read asks for up to 256 KiB, as a session's pump does. Timing starts at the connect
(at the process start for ``stdio``) and ends at EOF. Run ``bench/prepare-host.sh`` first
for the image with GNU tools.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import uuid

import structlog
import trio

from trissh.backend import (
    ContainerSettings,
    ForwardError,
    ProcessSpec,
    Sandbox,
    SandboxSpec,
    SocketAddress,
)
from trissh.backend.podman import PodmanBackend
from trissh.config import ServerConfig

READ_SIZE = 256 * 1024
PORT = 9000
#: The server's write size (``--bytes`` is rounded down to a multiple of it).
BLOCK = 1_000_000


async def _drain(stream: trio.abc.ReceiveStream) -> int:
    total = 0
    while data := await stream.receive_some(READ_SIZE):
        total += len(data)
    return total


async def _connect(sandbox: Sandbox) -> trio.abc.HalfCloseableStream:
    """Connect once ``nc`` listens (it is starting: refused until then; bounded)."""
    with trio.fail_after(10):
        while True:
            try:
                return await sandbox.connect(SocketAddress(host="127.0.0.1", port=PORT))
            except ForwardError as exc:
                if exc.reason != "refused":
                    raise
            await trio.sleep(0.01)


async def through_connect(sandbox: Sandbox, size: int) -> float:
    source = f"dd if=/dev/zero bs={BLOCK} count={size // BLOCK} status=none"
    spec = ProcessSpec(argv=["sh", "-c", f"exec nc -l -p {PORT} -e {source}"])
    async with sandbox.open_process(spec) as process:
        started = time.perf_counter()
        stream = await _connect(sandbox)
        async with stream:
            got = await _drain(stream)
        elapsed = time.perf_counter() - started
        await process.wait()
    if got != size:
        raise SystemExit(f"connect: read {got} bytes, expected {size}")
    return size / elapsed / 1e6


async def through_stdio(sandbox: Sandbox, size: int) -> float:
    spec = ProcessSpec(argv=["head", "-c", str(size), "/dev/zero"])
    started = time.perf_counter()
    async with sandbox.open_process(spec) as process:
        got = await _drain(process.stdout)
        elapsed = time.perf_counter() - started
        await process.wait()
    if got != size:
        raise SystemExit(f"stdio: read {got} bytes, expected {size}")
    return size / elapsed / 1e6


async def main(url: str, image: str, size: int, runs: int) -> dict[str, object]:
    helper = os.environ.get("TRISSH_EXEC_HELPER") or ServerConfig().podman.exec_helper
    backend = PodmanBackend(
        url,
        exec_helper=helper,
        direct_stdio=True,
        exec_agent=True,
        scope_labels={"trissh.bench": "forward-throughput"},
    )
    spec = SandboxSpec(
        conn_id=f"bench-{uuid.uuid4().hex[:8]}",
        username="bench",
        remote="bench",
        instance=f"bench-{uuid.uuid4().hex[:8]}",
        settings=ContainerSettings(image=image),
    )
    results: dict[str, list[float]] = {"connect": [], "stdio": []}
    try:
        async with backend.open_sandbox(spec) as sandbox:
            if sandbox.launch_path.via != "agent, pipes":
                raise SystemExit(f"no agent in the container: {sandbox.launch_path}")
            for _ in range(runs):
                results["connect"].append(round(await through_connect(sandbox, size), 1))
                results["stdio"].append(round(await through_stdio(sandbox, size), 1))
    finally:
        backend.close()
    return {
        "bytes": size,
        "mb_per_s": results,
        "median_mb_per_s": {way: statistics.median(figures) for way, figures in results.items()},
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("CONTAINER_HOST", ""))
    parser.add_argument("--image", default="localhost/trissh-bench:latest")
    parser.add_argument("--bytes", type=int, default=1_000_000_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    size = args.bytes // BLOCK * BLOCK
    figures = trio.run(main, args.url, args.image, size, args.runs)
    print(json.dumps(figures))
