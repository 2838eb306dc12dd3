"""A login storm: N real OpenSSH clients released at the same instant, every one timed.

Shared by the storm tests (tests/e2e/test_storm.py) and the bench's storm rows
(bench/storm.py). Each client is ``ssh -v`` under a waiting ``sh``; once all N are spawned
one write releases them together. The harness timestamps the client's own debug lines as
they arrive: TCP connected, server's version line seen (the *banner* latency, what
``ConnectTimeout`` bounds), authenticated; then the session's first output line
(``up``), which says a shell runs in the container. Everything is bounded even if the
server under test is broken: N itself (:data:`MAX_CLIENTS`), one deadline for the whole
storm after which every client still alive is killed, the processes' file descriptors,
and a ``finally`` that kills and reaps every child.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import selectors
import shutil
import signal
import statistics
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

#: No storm may start more clients than this, whatever a caller asks.
MAX_CLIENTS = 1200
#: The first line every storm command prints, once its shell runs.
UP = "up"
_BANNER = b"debug1: Remote protocol version"
_CONNECTED = b"debug1: Connection established"
_AUTHENTICATED = b"Authenticated to"
#: ``ssh -v``'s closing lines: not errors.
_CHATTER = ("debug", "Transferred:", "Bytes per second", "OpenSSH_")


@dataclass
class Client:
    """One client's life, in seconds since the storm was released."""

    index: int
    process: subprocess.Popen[bytes]
    connected: float | None = None
    banner: float | None = None
    authenticated: float | None = None
    up: float | None = None
    ended: float | None = None
    stdout: bytearray = field(default_factory=bytearray)
    stderr_tail: list[str] = field(default_factory=list)
    _partial: bytes = b""

    @property
    def ok(self) -> bool:
        return self.process.returncode == 0 and self.up is not None

    @property
    def error(self) -> str:
        """Why the client failed, as its user read it (a message from trissh, on stderr or in
        a DISCONNECT, first), with ids and numbers masked so equal causes count together."""
        lines = [line for line in self.stderr_tail if not line.startswith(_CHATTER)]
        ours = [line for line in lines if line.startswith(("trissh:", "Received disconnect"))]
        text = (ours or lines or [f"exit {self.process.returncode}, no message"])[-1]
        if self.up is None and not lines and self.process.returncode == 0:
            text = "exit 0 without the first output line"
        text = re.sub(r"\b[0-9a-f]{12,64}\b", "<id>", text.strip())
        return re.sub(r"\d+(\.\d+)?", "N", text)[:200] + f" (exit {self.process.returncode})"

    @property
    def banner_wait(self) -> float | None:
        """From TCP connected to the server's version line."""
        if self.connected is None or self.banner is None:
            return None
        return self.banner - self.connected

    def _feed_stderr(self, data: bytes, now: float) -> None:
        data = self._partial + data
        *lines, self._partial = data.split(b"\n")
        for line in lines:
            if self.connected is None and line.startswith(_CONNECTED):
                self.connected = now
            elif self.banner is None and line.startswith(_BANNER):
                self.banner = now
            elif self.authenticated is None and _AUTHENTICATED in line:
                self.authenticated = now
            if not line.startswith(b"debug"):
                self.stderr_tail = [*self.stderr_tail[-9:], line.decode(errors="replace")]

    def _feed_stdout(self, data: bytes, now: float) -> None:
        if len(self.stdout) < 4096:
            self.stdout += data
        if self.up is None and (UP + "\n").encode() in self.stdout:
            self.up = now


@dataclass
class StormResult:
    clients: list[Client]
    wall: float

    @property
    def succeeded(self) -> int:
        return sum(client.ok for client in self.clients)

    def outputs(self) -> set[str]:
        """Each successful client's last output line (``hostname``: its container)."""
        return {
            client.stdout.decode(errors="replace").split()[-1]
            for client in self.clients
            if client.ok and client.stdout.split()
        }

    def failures(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for client in self.clients:
            if not client.ok:
                counts[client.error] = counts.get(client.error, 0) + 1
        return dict(sorted(counts.items(), key=lambda item: -item[1]))

    def banner_waits(self) -> list[float]:
        return sorted(w for c in self.clients if (w := c.banner_wait) is not None)

    def login_times(self) -> list[float]:
        """Release to the session's first line, for the clients that got that far."""
        return sorted(c.up for c in self.clients if c.up is not None)

    def summary(self) -> str:
        banner, login = self.banner_waits(), self.login_times()
        return (
            f"{self.succeeded}/{len(self.clients)} in {self.wall:.1f} s; banner "
            f"p50 {percentile(banner, 50):.2f} s p99 {percentile(banner, 99):.2f} s max "
            f"{max(banner, default=0):.2f} s; login p50 {percentile(login, 50):.1f} s "
            f"p99 {percentile(login, 99):.1f} s; failures {self.failures()}"
        )


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, round(pct / 100 * len(ordered) + 0.5 - 1e-9))
    return ordered[min(rank, len(ordered)) - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


def ssh_argv(
    port: int,
    key: Path,
    command: str,
    *,
    user: str,
    kex: str | None = None,
    connect_timeout: float = 10,
    host: str = "127.0.0.1",
) -> list[str]:
    ssh = shutil.which("ssh")
    assert ssh is not None, "the OpenSSH client is not installed"
    argv = [
        ssh, "-v", "-F", "/dev/null",
        "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "IdentitiesOnly=yes",
        "-o", f"ConnectTimeout={connect_timeout:g}",
        "-o", "ServerAliveInterval=0",
        "-i", str(key),
        "-p", str(port),
    ]  # fmt: skip
    if kex:
        argv += ["-o", f"KexAlgorithms={kex}"]
    return [*argv, f"{user}@{host}", command]


def run_storm(
    argv: Sequence[str],
    count: int,
    *,
    deadline: float,
    pace: float = 0.0,
) -> StormResult:
    """Start ``count`` clients running ``argv`` at the same instant (``pace`` > 0: one every
    ``pace`` seconds instead) and wait for all, at most ``deadline`` seconds after the
    release; clients alive then are killed and count as failed.

    ``argv``'s command must print :data:`UP` first (``echo up; ...``).
    """
    if not 0 < count <= MAX_CLIENTS:
        raise ValueError(f"a storm has 1..{MAX_CLIENTS} clients, not {count}")
    _ensure_descriptors(3 * count + 64)
    clients: list[Client] = []
    selector = selectors.DefaultSelector()
    try:
        gate = 'read _ && exec "$@" </dev/null'
        for index in range(count):
            process = subprocess.Popen(
                ["sh", "-c", gate, "sh", *argv],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,  # a kill reaches the client, not only sh
            )
            clients.append(Client(index, process))
        released = time.monotonic()
        for client in clients:
            assert client.process.stdin is not None
            with contextlib.suppress(OSError):
                client.process.stdin.write(b"go\n")
                client.process.stdin.close()
            if pace:
                time.sleep(pace)
        _collect(selector, clients, released, released + deadline)
        wall = time.monotonic() - released
    finally:
        selector.close()
        _kill_all(clients)
    return StormResult(clients, wall)


def _collect(
    selector: selectors.BaseSelector, clients: list[Client], released: float, end: float
) -> None:
    """Read every client's output, timestamped, until all ended or ``end`` passed."""
    open_pipes = 0
    for client in clients:
        assert client.process.stdout is not None
        assert client.process.stderr is not None
        for stream, is_err in ((client.process.stdout, False), (client.process.stderr, True)):
            os.set_blocking(stream.fileno(), False)
            selector.register(stream, selectors.EVENT_READ, (client, is_err))
            open_pipes += 1
    while open_pipes and (left := end - time.monotonic()) > 0:
        for key, _ in selector.select(timeout=min(left, 1.0)):
            client, is_err = key.data
            now = time.monotonic() - released
            try:
                data = os.read(key.fd, 65536)
            except BlockingIOError:
                continue
            if not data:
                selector.unregister(key.fileobj)
                open_pipes -= 1
                if is_err:
                    client.ended = now
                continue
            if is_err:
                client._feed_stderr(data, now)
            else:
                client._feed_stdout(data, now)


def _kill_all(clients: list[Client]) -> None:
    for client in clients:
        if client.process.poll() is None:
            with contextlib.suppress(OSError):
                os.killpg(client.process.pid, signal.SIGKILL)
    for client in clients:
        with contextlib.suppress(subprocess.TimeoutExpired):
            client.process.wait(timeout=10)
        for stream in (client.process.stdin, client.process.stdout, client.process.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


def _ensure_descriptors(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise RuntimeError(f"a storm needs {needed} file descriptors; the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def report(result: StormResult) -> dict[str, object]:
    """What a storm's caller checks, as JSON: counts, each client's outcome and times."""
    return {
        "wall": result.wall,
        "succeeded": result.succeeded,
        "outputs": sorted(result.outputs()),
        "failures": result.failures(),
        "banner_waits": result.banner_waits(),
        "no_banner": sum(client.banner is None for client in result.clients),
        "login_times": result.login_times(),
        "summary": result.summary(),
    }


def main() -> int:
    """``python -m tests.storm --port P --key FILE --count N [--command C] [--kex K]``:
    one storm, its :func:`report` as JSON on stdout (so a test's server keeps its process
    to itself)."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--key", type=Path, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--user", default="alice")
    parser.add_argument("--command", default=f"echo {UP}; sleep 5; hostname")
    parser.add_argument("--kex")
    parser.add_argument("--deadline", type=float, default=240.0)
    args = parser.parse_args()
    argv = ssh_argv(args.port, args.key, args.command, user=args.user, kex=args.kex)
    print(json.dumps(report(run_storm(argv, args.count, deadline=args.deadline))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
