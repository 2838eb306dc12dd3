"""Measure a backend: lifecycle latencies and stdio throughput (not collected by pytest).

Usage::

    .venv/bin/python -m tests.backend.bench_backend [--memory] [--url unix:///run/...sock]
        [--bytes 200000000] [--rounds 5]

Prints create+start / exec start / first byte / leaving a program whose output is unread /
remove times (median of ``--rounds``) and MB/s of ``head -c N /dev/zero`` (and ``dd``) read
through ``Process.stdout``, with and without a pty.

busybox's ``head`` cannot produce more than ~100-230 MB/s here, so it measures itself, not
the stream. For the stream, import an image with GNU head (as root, next to busybox)::

    mkdir -p r/bin r/gnu && cp /bin/busybox r/bin/ && ln -s busybox r/bin/sh
    cp /usr/bin/head r/gnu/ && for l in $(ldd /usr/bin/head | grep -o '/lib[^ ]*'); do
        mkdir -p r$(dirname $l) && cp -L $l r$l; done
    tar -C r -c . | curl -s --unix-socket /run/trissh-podman/podman.sock -X POST \
        -H 'Content-Type: application/x-tar' --data-binary @- \
        'http://d/v4.0.0/libpod/images/import?reference=localhost/trissh-bench-gnu:latest'

and run with ``--image localhost/trissh-bench-gnu:latest --head /gnu/head``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid
from collections.abc import Callable, MutableMapping
from typing import Any

import structlog
import structlog.testing
import trio

from trissh.backend import Backend, ContainerSettings, ProcessSpec, PtySpec, SandboxSpec
from trissh.backend import TerminalSize as Size
from trissh.backend.memory import MemoryBackend
from trissh.backend.podman import PodmanBackend


def _drop(logger: object, method: str, event: MutableMapping[str, Any]) -> str:
    raise structlog.DropEvent


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000


async def lifecycle(backend: Backend, spec: SandboxSpec, rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {
        "create+start": [],
        "exec start (101)": [],
        "exec+first byte": [],
        "exit status": [],
        "leave unread": [],
        "remove": [],
    }
    for _ in range(rounds):
        start = time.perf_counter()
        manager = backend.open_sandbox(spec)
        sandbox = await manager.__aenter__()
        times["create+start"].append(_ms(start))
        try:
            start = time.perf_counter()
            with structlog.testing.capture_logs() as logs:
                async with sandbox.open_process(ProcessSpec(argv=["/bin/sh", "-c", "echo x"])) as p:
                    started = [e for e in logs if e["event"] == "process_started"]
                    if started:
                        times["exec start (101)"].append(started[0]["duration_ms"])
                    await p.stdout.receive_some()
                    times["exec+first byte"].append(_ms(start))
                    while await p.stdout.receive_some():
                        pass
                    start = time.perf_counter()
                    await p.wait()
                    times["exit status"].append(_ms(start))
            # leaving while a program still writes and nobody reads (the teardown's kill)
            start = time.perf_counter()
            async with sandbox.open_process(
                ProcessSpec(argv=["/bin/sh", "-c", "cat /dev/zero"])
            ) as p:
                await p.stdout.receive_some(10)
            times["leave unread"].append(_ms(start))
        finally:
            start = time.perf_counter()
            await manager.__aexit__(None, None, None)
            times["remove"].append(_ms(start))
    return times


async def throughput(backend: Backend, spec: SandboxSpec, command: str, tty: bool) -> float:
    pty = PtySpec(term="xterm", size=Size(columns=80, rows=24)) if tty else None
    async with backend.open_sandbox(spec) as sandbox:
        process_spec = ProcessSpec(argv=["/bin/sh", "-c", command], pty=pty)
        async with sandbox.open_process(process_spec) as process:
            total = 0
            start = time.perf_counter()
            while data := await process.stdout.receive_some(65536):
                total += len(data)
            elapsed = time.perf_counter() - start
            await process.wait()
    return total / elapsed / 1e6


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--memory", action="store_true", help="measure MemoryBackend")
    default_url = os.environ.get("CONTAINER_HOST") or "unix:///run/trissh-podman/podman.sock"
    parser.add_argument("--url", default=default_url)
    parser.add_argument("--bytes", type=int, default=200_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--image", default=ContainerSettings().image)
    parser.add_argument("--head", default="head", help="e.g. a GNU head in a bench image")
    args = parser.parse_args()
    # Quiet, but let capture_logs() see the debug-level process_started event.
    structlog.configure(processors=[_drop], wrapper_class=structlog.make_filtering_bound_logger(10))
    make: Callable[[], Backend] = MemoryBackend if args.memory else lambda: PodmanBackend(args.url)
    backend = make()
    spec = SandboxSpec(
        conn_id="bench",
        username="bench",
        remote="127.0.0.1:0",
        instance=f"bench-{uuid.uuid4().hex[:8]}",
        settings=ContainerSettings(image=args.image),
    )
    times = await lifecycle(backend, spec, args.rounds)
    for name, values in times.items():
        if not values:
            continue
        print(
            f"{name:>16}: median {statistics.median(values):7.1f} ms  (all: "
            + ", ".join(f"{v:.0f}" for v in values)
            + ")"
        )
    n = args.bytes
    for label, command in [
        (f"{args.head} -c {n}", f"exec {args.head} -c {n} /dev/zero"),
        (f"dd bs=1M ({n // 1_000_000} MB)", f"dd if=/dev/zero bs=1000000 count={n // 1_000_000}"),
    ]:
        for tty in (False, True):
            rate = await throughput(backend, spec, command + " 2>/dev/null", tty)
            print(f"{label:>24} {'tty' if tty else 'no tty':>6}: {rate:8.1f} MB/s")


if __name__ == "__main__":
    trio.run(main)
