"""trissh vs AsyncSSH vs OpenSSH sshd, side by side on loopback, in one run.

Run it with ``scripts/nox -s bench`` (as root: it starts its own sshd, makes cgroups, and
needs the podman set-up); ``-- --quick`` for a fast pass, ``-- --profile`` to profile
trissh's SSH layer instead (bench/profile_ssh.py). It is a benchmark, never a test.

Servers (all on 127.0.0.1, all with the same ed25519 host key and client key):

* ``trissh``: bench/trissh_server.py with the in-process MemoryBackend: the SSH layer alone;
* ``trissh+podman``: the same runner with the podman backend and the bench image
  (localhost/trissh-bench:latest, GNU head/cat/true): end to end, one container per
  connection, with trissh's default warm pool (sized by demand; ``WARM_POOL`` fixes it);
* ``AsyncSSH``: bench/asyncssh_server.py, stock AsyncSSH with the same synthetic commands;
* ``sshd``: Debian's OpenSSH sshd started by hand on a free port with its own config
  (UsePAM no, user trissh-bench with /bin/sh, real GNU ``head``/``cat``), never the system
  service.

The load generator is the OpenSSH client (``ssh``), one process per operation; every
figure is the median of several runs, servers interleaved run by run so that drift on a
shared machine hits all of them alike. Each server runs in its own cpuacct cgroup (cgroup
v1) from its first instruction: sshd's forked children are inside it; for the end-to-end
CPU figure the podman service (and the conmon/runc/container processes it starts) is moved
into trissh's group for that measurement only.

Writes BENCHMARKS.md and bench/plots/*.png unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import select
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import storm as storm_rows  # bench/storm.py: the storm and container-capacity rows
from forwarding import measure_forwarding  # bench/ is the script's directory

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PYTHON = sys.executable
BENCH_IMAGE = "localhost/trissh-bench:latest"
SSHD = "/usr/sbin/sshd"
SSHD_USER = "trissh-bench"
CGROUP_ROOT = Path("/sys/fs/cgroup/cpuacct")
AES = "aes128-gcm@openssh.com"
CHACHA = "chacha20-poly1305@openssh.com"
CURVE = "curve25519-sha256"
SNTRUP = "sntrup761x25519-sha512@openssh.com"

TRISSH, ASYNCSSH, OPENSSH, PODMAN = "trissh", "AsyncSSH", "sshd", "trissh+podman"
#: trissh+podman with its default configuration (warm pool sized by demand): the storm rows.
PODMAN_DEFAULT = "trissh+podman default"
#: Containers trissh+podman keeps started ahead of logins ([podman] warm_pool); None: the
#: default configuration's (sized by demand).
WARM_POOL: int | None = None


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------ accounting


class Accounting:
    """CPU and memory of one server's processes: a cpuacct cgroup, or /proc as a fallback."""

    _made = 0

    def __init__(self, name: str) -> None:
        self.group: Path | None = None
        self.pid: int | None = None
        if os.geteuid() == 0 and (CGROUP_ROOT / "cgroup.procs").exists():
            Accounting._made += 1
            label = f"{name.replace('+', '-')}-{os.getpid()}-{Accounting._made}"
            group = CGROUP_ROOT / f"trissh-bench-{label}"
            try:
                group.mkdir()
                self.group = group
            except OSError as exc:
                log(f"no cgroup for {name} ({exc}); falling back to /proc accounting")

    @property
    def method(self) -> str:
        if self.group is not None:
            return "cgroup v1 cpuacct.usage"
        return "/proc/PID/stat utime+stime+cutime+cstime"

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """Start ``argv`` inside the cgroup, so every descendant is counted."""
        if self.group is None:
            return list(argv)
        return ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(self.group), *argv]

    def pids(self) -> list[int]:
        if self.group is not None:
            text = (self.group / "cgroup.procs").read_text()
            return [int(p) for p in text.split()]
        return [self.pid] if self.pid else []

    def cpu_seconds(self) -> float:
        if self.group is not None:
            return int((self.group / "cpuacct.usage").read_text()) / 1e9
        assert self.pid is not None
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = sum(int(x) for x in fields[11:15])
        return ticks / os.sysconf("SC_CLK_TCK")

    def pss_kib(self) -> int:
        total = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
        return total

    def adopt(self, pid: int) -> None:
        """Move a running process (all its threads) into the group."""
        if self.group is not None:
            (self.group / "cgroup.procs").write_text(str(pid))

    def release(self) -> None:
        """Hand every process still in the group back to the root group; remove the group."""
        if self.group is None:
            return
        for _ in range(50):
            for pid in self.pids():
                with contextlib.suppress(OSError):
                    (CGROUP_ROOT / "cgroup.procs").write_text(str(pid))
            try:
                self.group.rmdir()
                self.group = None
                return
            except OSError:
                time.sleep(0.1)
        log(f"could not remove {self.group}")


# ------------------------------------------------------------------------ servers


@dataclass
class Server:
    name: str
    user: str
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    accounting: Accounting | None = None
    log_path: Path | None = None
    instance: str | None = None
    kex_offered: tuple[str, ...] = ()
    default_kex: str = ""
    version: str = ""
    #: Where /metrics, /healthz and /readyz answer (trissh only), 0: nowhere.
    metrics_port: int = 0

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def read_port_line(process: subprocess.Popen[bytes], timeout: float = 30) -> int:
    """The ``PORT n`` line a runner prints first on stdout."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    line = b""
    while not line.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or process.poll() is not None:
            raise RuntimeError("the server did not print its port")
        ready, _, _ = select.select([process.stdout], [], [], remaining)
        if ready:
            byte = os.read(process.stdout.fileno(), 1)
            if not byte:
                raise RuntimeError("the server closed stdout before printing its port")
            line += byte
    words = line.decode().split()
    if words[:1] != ["PORT"]:
        raise RuntimeError(f"unexpected first line {line!r}")
    return int(words[1])


def probe_kexinit(port: int) -> tuple[str, tuple[str, ...]]:
    """The server's version line and the kex algorithms in its (cleartext) KEXINIT."""
    with socket.create_connection(("127.0.0.1", port), 10) as sock:
        sock.sendall(b"SSH-2.0-trissh_bench_probe\r\n")
        data = b""
        version = ""
        while True:
            while b"\n" not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    raise RuntimeError("closed during version exchange")
                data += chunk
            line, data = data.split(b"\n", 1)
            if line.startswith(b"SSH-"):
                version = line.decode(errors="replace").strip()
                break
        while len(data) < 5:
            data += sock.recv(65536)
        (length,) = struct.unpack(">I", data[:4])
        while len(data) < 4 + length:
            chunk = sock.recv(65536)
            if not chunk:
                raise RuntimeError("closed during KEXINIT")
            data += chunk
        payload = data[5 : 4 + length]
        if payload[0] != 20:
            raise RuntimeError(f"expected KEXINIT, got message {payload[0]}")
        (n,) = struct.unpack(">I", payload[17:21])
        kex = payload[21 : 21 + n].decode().split(",")
    return version, tuple(kex)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.quick: bool = args.quick
        self.work = Path(tempfile.mkdtemp(prefix="trissh-bench-"))
        self.work.chmod(0o755)  # sshd reads authorized_keys as the bench user
        self.servers: dict[str, Server] = {}
        #: every server process started, registered or not, so close() stops them all
        self.started: list[Server] = []
        self.podman_url = os.environ.get("CONTAINER_HOST", "")
        self.notes: list[str] = []
        self._make_keys()

    # -- keys and files -------------------------------------------------------------

    def _make_keys(self) -> None:
        (self.work / "client").mkdir(mode=0o700)
        self.host_key = self.work / "host_ed25519"
        self.client_key = self.work / "client" / "id_ed25519"
        for path in (self.host_key, self.client_key):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bench", "-f", str(path)],
                check=True,
            )
        self.authorized_keys = self.work / "authorized_keys"
        shutil.copy(f"{self.client_key}.pub", self.authorized_keys)
        self.authorized_keys.chmod(0o644)
        self.upload_file = self.work / "upload.bin"

    def upload_source(self, size: int) -> Path:
        """A sparse file of zeros: read at memory speed, occupies nothing."""
        with open(self.upload_file, "wb") as f:
            f.truncate(size)
        return self.upload_file

    # -- starting and stopping --------------------------------------------------------

    def start_trissh(
        self, name: str, backend: str, register: bool = True, *, pool: int | None = -1
    ) -> Server:
        """``pool``: [podman] warm_pool; -1: the bench's WARM_POOL, None: trissh's default."""
        acct = Accounting(name)
        log_path = self.work / f"{name}.{time.monotonic_ns()}.log"
        argv = [
            PYTHON,
            str(BENCH / "trissh_server.py"),
            "--authorized-keys",
            str(self.authorized_keys),
            "--host-key",
            str(self.host_key),
            "--backend",
            backend,
        ]
        if backend == "podman":
            argv += ["--podman-url", self.podman_url, "--image", BENCH_IMAGE]
            warm = WARM_POOL if pool == -1 else pool
            if warm is not None:
                argv += ["--warm-pool", str(warm)]
        metrics_port = free_port()
        argv += ["--metrics-listen", f"127.0.0.1:{metrics_port}"]
        server = Server(
            name, "bench", accounting=acct, log_path=log_path, metrics_port=metrics_port
        )
        with open(log_path, "wb") as errors:
            server.process = subprocess.Popen(
                acct.wrap(argv), stdout=subprocess.PIPE, stderr=errors
            )
        acct.pid = server.process.pid
        self.started.append(server)
        server.port = read_port_line(server.process)
        wait_port(server.port)
        for line in log_path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if event.get("event") == "server_started":
                    server.instance = event.get("instance")
        return self._register(server, register)

    def start_asyncssh(self, register: bool = True) -> Server:
        acct = Accounting(ASYNCSSH)
        argv = [
            PYTHON,
            str(BENCH / "asyncssh_server.py"),
            "--authorized-keys",
            str(self.authorized_keys),
            "--host-key",
            str(self.host_key),
        ]
        server = Server(
            ASYNCSSH,
            "bench",
            accounting=acct,
            log_path=self.work / f"asyncssh.{time.monotonic_ns()}.log",
        )
        with open(server.log_path, "wb") as errors:  # type: ignore[arg-type]
            server.process = subprocess.Popen(
                acct.wrap(argv), stdout=subprocess.PIPE, stderr=errors
            )
        acct.pid = server.process.pid
        self.started.append(server)
        server.port = read_port_line(server.process)
        wait_port(server.port)
        return self._register(server, register)

    def start_sshd(self, register: bool = True) -> Server:
        acct = Accounting(OPENSSH)
        port = free_port()
        config = self.work / f"sshd_config.{port}"
        config.write_text(f"""\
ListenAddress 127.0.0.1:{port}
HostKey {self.host_key}
PidFile {self.work}/sshd.{port}.pid
AuthorizedKeysFile {self.authorized_keys}
UsePAM no
StrictModes no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
AllowUsers {SSHD_USER}
MaxStartups 1000
MaxSessions 100
PrintMotd no
PrintLastLog no
UseDNS no
X11Forwarding no
LogLevel ERROR
Subsystem sftp internal-sftp
""")
        server = Server(
            OPENSSH, SSHD_USER, port=port, accounting=acct, log_path=self.work / f"sshd.{port}.log"
        )
        with open(server.log_path, "wb") as errors:  # type: ignore[arg-type]
            server.process = subprocess.Popen(
                acct.wrap([SSHD, "-D", "-e", "-f", str(config)]), stderr=errors
            )
        acct.pid = server.process.pid
        self.started.append(server)
        wait_port(port)
        return self._register(server, register)

    def _register(self, server: Server, register: bool = True) -> Server:
        server.version, server.kex_offered = probe_kexinit(server.port)
        result = self.ssh(server, "true", verbose=True)
        for line in result.stderr.decode(errors="replace").splitlines():
            if line.startswith("debug1: kex: algorithm:"):
                server.default_kex = line.split("algorithm:", 1)[1].strip()
        if result.returncode != 0:
            raise RuntimeError(f"{server.name}: `ssh true` failed: {result.stderr[-2000:]!r}")
        if not register:
            return server
        self.servers[server.name] = server
        log(
            f"{server.name} on port {server.port} ({server.version}); default kex with "
            f"the OpenSSH client: {server.default_kex}"
        )
        return server

    def stop(self, server: Server) -> None:
        if server.process is not None and server.process.poll() is None:
            server.process.send_signal(signal.SIGTERM)
            try:
                server.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.process.kill()
                server.process.wait()
        if server.name == OPENSSH and server.accounting and server.accounting.group:
            # forked session children of a stopped listener may linger a moment
            for pid in server.accounting.pids():
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGTERM)
        if server.accounting is not None:
            server.accounting.release()

    def close(self) -> None:
        for server in self.started:
            with contextlib.suppress(Exception):
                self.stop(server)
        shutil.rmtree(self.work, ignore_errors=True)

    # -- the client ---------------------------------------------------------------------

    def ssh_argv(
        self,
        server: Server,
        *command: str,
        cipher: str | None = None,
        kex: str | None = None,
        options: Sequence[str] = (),
    ) -> list[str]:
        argv = [
            "ssh", "-F", "/dev/null",
            "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR",
            "-o", "IdentitiesOnly=yes",
            "-o", "HostKeyAlgorithms=ssh-ed25519",
            "-o", "ConnectTimeout=60",
            "-i", str(self.client_key),
            "-p", str(server.port),
        ]  # fmt: skip
        if cipher:
            argv += ["-o", f"Ciphers={cipher}"]
        if kex:
            argv += ["-o", f"KexAlgorithms={kex}"]
        argv += [*options, f"{server.user}@127.0.0.1", *command]
        return argv

    def ssh(
        self, server: Server, command: str, *, verbose: bool = False, **kw: str
    ) -> subprocess.CompletedProcess[bytes]:
        argv = self.ssh_argv(server, command, **kw)
        if verbose:
            argv[argv.index("LogLevel=ERROR")] = "LogLevel=DEBUG1"
        return subprocess.run(argv, capture_output=True, timeout=120, check=False)

    def timed(
        self,
        server: Server,
        command: str,
        *,
        stdin: Path | None = None,
        cipher: str | None = None,
        kex: str | None = None,
    ) -> float:
        """Wall seconds of one ``ssh`` run (stdout to /dev/null); fails on a non-zero exit."""
        argv = self.ssh_argv(server, command, cipher=cipher, kex=kex)
        with open(stdin or os.devnull, "rb") as source:
            start = time.perf_counter()
            result = subprocess.run(
                argv,
                stdin=source,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                timeout=600,
                check=False,
            )
            elapsed = time.perf_counter() - start
        if result.returncode != 0:
            raise RuntimeError(
                f"{server.name}: {command!r} exited {result.returncode}: {result.stderr[-1000:]!r}"
            )
        return elapsed


# ------------------------------------------------------------------------ figures


@dataclass
class Figure:
    key: str
    title: str
    unit: str
    higher_is_better: bool
    target: str = ""
    values: dict[str, float | None] = field(default_factory=dict)
    samples: dict[str, list[float]] = field(default_factory=dict)
    text: dict[str, str] = field(default_factory=dict)
    note: str = ""

    def set(self, server: str, samples: list[float]) -> None:
        self.samples[server] = samples
        self.values[server] = statistics.median(samples) if samples else None


def interleaved(
    bench: Bench,
    names: Sequence[str],
    runs: int,
    measure: Callable[[Server], float],
    warmup: bool = True,
) -> dict[str, list[float]]:
    servers = [bench.servers[n] for n in names if n in bench.servers]
    if warmup:
        for server in servers:
            measure(server)
    out: dict[str, list[float]] = {s.name: [] for s in servers}
    for _ in range(runs):
        for server in servers:
            out[server.name].append(measure(server))
    return out


def measure_throughput(bench: Bench, figures: dict[str, Figure]) -> None:
    size = 200_000_000 if bench.quick else 1_000_000_000
    runs = 3 if bench.quick else 5
    names = [TRISSH, ASYNCSSH, OPENSSH]
    command = f"head -c {size} /dev/zero"
    for key, cipher in (("down_aes", AES), ("down_chacha", CHACHA)):
        log(f"download {size / 1e6:.0f} MB, {cipher}, {runs} runs")
        cpu: dict[str, list[float]] = {}

        def download(server: Server, c: str = cipher, cpu: dict[str, list[float]] = cpu) -> float:
            """MB/s of one download; the server's CPU seconds per GB noted on the side."""
            assert server.accounting is not None
            before = server.accounting.cpu_seconds()
            rate = size / 1e6 / bench.timed(server, command, cipher=c, kex=CURVE)
            spent = server.accounting.cpu_seconds() - before
            cpu.setdefault(server.name, []).append(spent / (size / 1e9))
            return rate

        got = interleaved(bench, names, runs, download)
        for name, samples in got.items():
            figures[key].set(name, samples)
        per_gb = ", ".join(  # [1:]: interleaved's warm-up run is each list's first
            f"{name} {statistics.median(cpu[name][1:]):.2f}" for name in got if name in cpu
        )
        figures[key].note = (
            f"server CPU seconds per GB (median, the data source it runs included: trissh's "
            f"and AsyncSSH's in-process `head`, sshd's forked `head`): {per_gb}"
        )
    log(f"upload {size / 1e6:.0f} MB, {AES}, {runs} runs")
    source = bench.upload_source(size)
    got = interleaved(
        bench,
        names,
        runs,
        lambda s: (
            size / 1e6 / bench.timed(s, "cat > /dev/null", stdin=source, cipher=AES, kex=CURVE)
        ),
    )
    for name, samples in got.items():
        figures["up_aes"].set(name, samples)


def timed_logins(
    bench: Bench, servers: list[Server], runs: int, kex: str
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """``runs`` sequential `ssh true` per server: wall ms each, and server CPU ms per login."""
    for server in servers:  # warm-up
        bench.timed(server, "true", kex=kex)
    samples: dict[str, list[float]] = {s.name: [] for s in servers}
    cpu: dict[str, float] = {}
    for server in servers:
        assert server.accounting is not None
        before = server.accounting.cpu_seconds()
        for _ in range(runs):
            samples[server.name].append(bench.timed(server, "true", kex=kex) * 1000)
        time.sleep(0.3)  # let forked children finish exiting
        cpu[server.name] = (server.accounting.cpu_seconds() - before) / runs * 1000
    return samples, cpu


def measure_logins(bench: Bench, figures: dict[str, Figure]) -> None:
    runs = 8 if bench.quick else 25
    servers = [bench.servers[n] for n in (TRISSH, ASYNCSSH, OPENSSH)]
    log(f"`ssh true` with {CURVE}, {runs} runs (server CPU in the same runs)")
    samples, cpu = timed_logins(bench, servers, runs, CURVE)
    for name, values in samples.items():
        figures["true_curve"].set(name, values)
        figures["cpu_true"].set(name, [cpu[name]])
    method = servers[0].accounting.method  # type: ignore[union-attr]
    figures["cpu_true"].note = f"over {runs} logins, {method}"

    offered = [s for s in servers if SNTRUP in s.kex_offered]
    for server in servers:
        if server not in offered:
            figures["true_sntrup"].text[server.name] = "not offered"
            figures["cpu_sntrup"].text[server.name] = "not offered"
    if offered:
        log(f"`ssh true` with {SNTRUP}, {runs} runs ({', '.join(s.name for s in offered)})")
        samples, cpu = timed_logins(bench, offered, runs, SNTRUP)
        for name, values in samples.items():
            figures["true_sntrup"].set(name, values)
            figures["cpu_sntrup"].set(name, [cpu[name]])


def open_idle(bench: Bench, server: Server, count: int) -> list[subprocess.Popen[bytes]]:
    """``count`` authenticated connections without a session (``ssh -N``)."""
    clients = []
    argv = bench.ssh_argv(
        server,
        kex=CURVE,
        options=["-N", "-o", "PermitLocalCommand=yes", "-o", "LocalCommand=echo ready"],
    )
    for _ in range(count):
        clients.append(
            subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL
            )
        )
    deadline = time.monotonic() + 120
    for client in clients:
        assert client.stdout is not None
        ready, _, _ = select.select([client.stdout], [], [], max(0.1, deadline - time.monotonic()))
        if not ready or not client.stdout.readline().startswith(b"ready"):
            raise RuntimeError(f"{server.name}: an idle connection did not authenticate")
    return clients


def close_clients(clients: list[subprocess.Popen[bytes]]) -> None:
    for client in clients:
        with contextlib.suppress(OSError):
            client.terminate()
    for client in clients:
        try:
            client.wait(timeout=10)
        except subprocess.TimeoutExpired:
            client.kill()
            client.wait()


def measure_memory(bench: Bench, figures: dict[str, Figure]) -> None:
    """On fresh servers (earlier figures leave freed buffers that new connections would reuse):
    one warm-up connection, then two batches of ``count`` idle connections; the figure is
    the second batch's PSS increase / count (the first batch is in the note)."""
    count = 50 if bench.quick else 100
    log(
        f"memory: PSS increase per idle authenticated connection (ssh -N), fresh servers, "
        f"2 x {count} connections"
    )
    starters: dict[str, Callable[[], Server]] = {
        TRISSH: lambda: bench.start_trissh(TRISSH, "memory", register=False),
        ASYNCSSH: lambda: bench.start_asyncssh(register=False),
        OPENSSH: lambda: bench.start_sshd(register=False),
    }
    first: list[str] = []
    for name, start in starters.items():
        server = start()
        acct = server.accounting
        assert acct is not None
        try:
            close_clients(open_idle(bench, server, 1))
            time.sleep(1)
            base = acct.pss_kib()
            batch1 = open_idle(bench, server, count)
            time.sleep(1.5)
            middle = acct.pss_kib()
            batch2 = open_idle(bench, server, count)
            time.sleep(1.5)
            after = acct.pss_kib()
            processes = len(acct.pids())
            close_clients(batch1 + batch2)
        finally:
            bench.stop(server)
        per = (after - middle) / count
        figures["mem_idle"].set(name, [per])
        figures["mem_idle"].text[name] = f"{per:,.0f}"
        first.append(f"{name} {(middle - base) / count:,.0f}")
        log(f"  {name}: {base} -> {middle} -> {after} KiB PSS ({processes} processes at the end)")
    figures["mem_idle"].note = (
        f"PSS (smaps_rollup, summed over the server's processes) increase from {count} to "
        f"{2 * count} idle `ssh -N` connections, / {count}, on a freshly started server; "
        f"the first {count} cost (KiB each): {', '.join(first)}"
    )


def concurrent_sessions(
    bench: Bench, server: Server, count: int, command: str
) -> tuple[int, float, set[bytes]]:
    argv = bench.ssh_argv(server, command, kex=CURVE)
    start = time.perf_counter()
    clients = [
        subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
        )
        for _ in range(count)
    ]
    deadline = time.monotonic() + 300
    ok = 0
    outputs: set[bytes] = set()
    errors: dict[bytes, int] = {}
    for client in clients:
        try:
            out, err = client.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            client.kill()
            out, err = client.communicate()
        if client.returncode == 0:
            ok += 1
            outputs.add(out.strip())
        else:
            key = err.strip().splitlines()[-1][:120] if err.strip() else b"(no message)"
            key = (
                re.sub(rb"\b[0-9a-f]{12,64}\b", b"<id>", key)
                + f" (exit {client.returncode})".encode()
            )
            errors[key] = errors.get(key, 0) + 1
    wall = time.perf_counter() - start
    for message, n in errors.items():
        log(f"  {server.name}: {n} failed: {message.decode(errors='replace')}")
    if errors:
        top, n = max(errors.items(), key=lambda item: item[1])
        bench.notes.append(
            f"{server.name}, {count} concurrent sessions: {count - ok} failed; most often "
            f"({n}x): {top.decode(errors='replace')}"
        )
    return ok, wall, outputs


def measure_concurrency(bench: Bench, figures: dict[str, Figure]) -> None:
    count = 50 if bench.quick else 200
    figure = figures["concurrent"]
    figure.title = f"{count} concurrent sessions (`sleep 5`) succeeded"
    for name in (TRISSH, ASYNCSSH, OPENSSH, PODMAN):
        server = bench.servers.get(name)
        if server is None:
            continue
        command = "sleep 5 && hostname" if name == PODMAN else "sleep 5"
        log(f"{count} concurrent `{command}` on {name}")
        ok, wall, outputs = concurrent_sessions(bench, server, count, command)
        figure.set(name, [float(ok)])
        text = f"{ok}/{count} in {wall:.1f} s"
        if name == PODMAN:
            text += f", {len(outputs)} containers"
        figure.text[name] = text
        log(f"  {text}")
        if name == PODMAN:
            wait_containers_gone(bench, server)


def probe_readyz(port: int) -> tuple[float, int]:
    """One ``GET /readyz`` as a balancer's health check sends it: (seconds, status)."""
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /readyz HTTP/1.0\r\nHost: bench\r\n\r\n")
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    return time.perf_counter() - start, int(answer.split(b" ", 2)[1])


def measure_readyz(bench: Bench, figures: dict[str, Figure]) -> None:
    """/readyz every 50 ms while a login storm runs (``count`` logins at once, end to end
    with containers): what HAProxy's checks see on a busy instance (issue 22)."""
    server = bench.servers.get(PODMAN)
    if server is None or not server.metrics_port:
        return
    count = 50 if bench.quick else 100
    figure = figures["readyz"]
    figure.title = f"`/readyz` ms, p50 / p99, during {count} logins at once (end to end)"
    idle = sorted(probe_readyz(server.metrics_port)[0] * 1000 for _ in range(20))
    log(f"/readyz every 50 ms during {count} concurrent `true` on {server.name}")
    argv = bench.ssh_argv(server, "true", kex=CURVE)
    clients = [
        subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        for _ in range(count)
    ]
    samples: list[float] = []
    statuses: dict[int, int] = {}
    deadline = time.monotonic() + 300
    while any(c.poll() is None for c in clients) and time.monotonic() < deadline:
        seconds, status = probe_readyz(server.metrics_port)
        samples.append(seconds * 1000)
        statuses[status] = statuses.get(status, 0) + 1
        time.sleep(0.05)
    failed = 0
    for client in clients:
        if client.poll() is None:
            client.kill()
        failed += client.wait() != 0
    samples.sort()
    p50 = samples[len(samples) // 2]
    p99 = samples[min(len(samples) - 1, round(len(samples) * 0.99))]
    figure.set(PODMAN, [p50])
    answers = ", ".join(f"{n}x {code}" for code, n in sorted(statuses.items()))
    figure.text[PODMAN] = (
        f"{p50:.1f} / {p99:.1f} ({len(samples)} probes: {answers}; idle p50 {idle[10]:.1f})"
    )
    log(f"  {figure.text[PODMAN]}; {failed} of {count} logins failed")
    wait_containers_gone(bench, server)


def podman_call(url: str, method: str, target: str) -> tuple[int, bytes]:
    path = url.removeprefix("unix://")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(30)
        sock.connect(path)
        sock.sendall(f"{method} {target} HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def live_containers(bench: Bench, server: Server) -> int:
    filters = json.dumps({"label": [f"trissh.instance={server.instance}"]})
    from urllib.parse import quote

    status, body = podman_call(
        bench.podman_url, "GET", f"/v4.0.0/libpod/containers/json?all=true&filters={quote(filters)}"
    )
    if status != 200:
        return -1
    text = body.decode(errors="replace")
    # the answer may be chunked: count ids rather than parse; the warm pool's unassigned
    # containers (label trissh.pool) stay for the server's lifetime and are not counted
    return text.count('"Id"') - text.count('"trissh.pool"')


def wait_containers_gone(bench: Bench, server: Server, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = live_containers(bench, server)
        if n == 0:
            return
        time.sleep(1)
    log(f"  {server.name}: containers still present after {timeout:.0f} s")


def measure_end_to_end(bench: Bench, figures: dict[str, Figure]) -> None:
    podman = bench.servers.get(PODMAN)
    sshd = bench.servers[OPENSSH]
    if podman is None:
        return
    runs = 5 if bench.quick else 10
    # ssh true into a fresh container vs sshd's host shell, each with the client's default
    # kex (what a user gets), and both with curve25519
    log(f"`ssh true` end to end, {runs} runs")
    got = interleaved(bench, [PODMAN, OPENSSH], runs, lambda s: bench.timed(s, "true") * 1000)
    for name, values in got.items():
        figures["e2e_true"].set(name, values)
    figures[
        "e2e_true"
    ].note = f"client default kex: trissh+podman {podman.default_kex}, sshd {sshd.default_kex}"
    got = interleaved(
        bench, [PODMAN, OPENSSH], runs, lambda s: bench.timed(s, "true", kex=CURVE) * 1000
    )
    for name, values in got.items():
        figures["e2e_true_curve"].set(name, values)

    # server CPU per container login: trissh + the podman service + conmon/runc/container
    logins = max(3, runs // 2)

    def log_in() -> None:
        for _ in range(logins):
            bench.timed(podman, "true", kex=CURVE)
        time.sleep(1)  # the pool refills after the last login

    split = split_cpu(bench, podman, log_in)
    if split is not None:
        ours, theirs, _ = (seconds * 1000 / logins for seconds in split)
        figures["e2e_cpu"].set(PODMAN, [ours + theirs])
        sshd_cpu = figures["cpu_true"].values.get(OPENSSH)
        if sshd_cpu is not None:
            figures["e2e_cpu"].set(OPENSSH, [sshd_cpu])
        figures["e2e_cpu"].note = (
            f"trissh {ours:.0f} ms + podman service with conmon/runc/container "
            f"{theirs:.0f} ms (the pooled container's create/start/remove; sessions start "
            "through the in-container agent, no exec); "
            "sshd: listener + forked children"
        )

    # download through a container next to the raw podman stream, same run
    size = 200_000_000 if bench.quick else 1_000_000_000
    runs_down = max(3, runs // 2)
    log(f"download {size / 1e6:.0f} MB end to end through a container, {runs_down} runs")
    login = statistics.median(figures["e2e_true_curve"].samples[PODMAN]) / 1000
    got = interleaved(
        bench,
        [PODMAN, OPENSSH],
        runs_down,
        lambda s: size / 1e6 / bench.timed(s, f"head -c {size} /dev/zero", cipher=AES, kex=CURVE),
    )
    for name, values in got.items():
        figures["e2e_down"].set(name, values)
    net = [size / 1e6 / (size / 1e6 / v - login) for v in got[PODMAN]]

    # where the CPU goes on the container path: trissh, the podman service with the conmon
    # it starts for the exec, and the ssh client (this process's children)
    def download() -> None:
        for _ in range(runs_down):
            bench.timed(podman, f"head -c {size} /dev/zero", cipher=AES, kex=CURVE)

    per_gb = split_cpu(bench, podman, download)
    ceiling = None
    if per_gb is not None:
        gb = size * runs_down / 1e9
        ours, theirs, client = (seconds / gb for seconds in per_gb)
        # Everything on this path shares the machine's cores: their sum bounds the rate.
        ceiling = (os.cpu_count() or 1) * 1000 / (ours + theirs + client)
        figures["e2e_cpu_split"].text[PODMAN] = (
            f"trissh {ours:.2f}, podman service + conmon + head {theirs:.2f}, ssh client "
            f"{client:.2f}: at most {ceiling:.0f} MB/s on {os.cpu_count()} cores"
        )
    log("raw podman exec stream (same image, same head)")
    result = subprocess.run(
        [
            PYTHON,
            str(BENCH / "podman_stream.py"),
            "--url",
            bench.podman_url,
            "--image",
            BENCH_IMAGE,
            "--bytes",
            str(size),
            "--runs",
            str(max(3, runs // 2)),
        ],
        capture_output=True,
        check=False,
        timeout=600,
    )
    if result.returncode != 0:
        log(f"podman_stream.py failed: {result.stderr[-2000:]!r}")
        return
    stream = json.loads(result.stdout)
    raw = statistics.median(stream["raw"])
    direct = statistics.median(stream["direct"])
    figures["e2e_raw"].set(PODMAN, stream["raw"])
    figures["e2e_backend"].set(PODMAN, stream["backend"])
    figures["e2e_direct"].set(PODMAN, stream["direct"])
    net_median = statistics.median(net)
    figures["e2e_down"].note = (
        f"wall time incl. login + container start; without the login "
        f"({login * 1000:.0f} ms): {net_median:.0f} MB/s = {net_median / direct:.2f}x the "
        f"direct-stdio pipe it reads (raw path), {net_median / raw:.2f}x the raw REST stream"
        + (
            f"; the CPU this path needs per GB caps it at {ceiling:.0f} MB/s here (next row)"
            if ceiling
            else ""
        )
    )


def split_cpu(
    bench: Bench, podman: Server, work: Callable[[], None]
) -> tuple[float, float, float] | None:
    """CPU seconds of ``work`` on the trissh+podman server: (trissh, the podman service with
    everything it starts, the ssh clients = this process's children); None without cgroups.
    The service gets its own group for the time being (what it starts lands there too)."""
    import resource

    service = podman_service_pid(bench.podman_url)
    trissh = podman.accounting
    if not service or trissh is None or trissh.group is None:
        return None
    group = Accounting("podman-service")
    if group.group is None:
        return None
    original = Path(f"/proc/{service}/cgroup").read_text()
    group.adopt(service)
    try:
        time.sleep(0.2)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0, s0 = trissh.cpu_seconds(), group.cpu_seconds()
        work()
        wait_containers_gone(bench, podman)
        t1, s1 = trissh.cpu_seconds(), group.cpu_seconds()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    finally:
        restore_cgroup(service, original)
        group.release()
    client = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
    return t1 - t0, s1 - s0, client


def podman_service_pid(url: str) -> int | None:
    path = url.removeprefix("unix://")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            if (
                b"system" in cmdline
                and b"service" in cmdline
                and any(path.encode() in part for part in cmdline)
                and cmdline[0].endswith(b"podman")
            ):
                return int(proc.name)
    return None


def restore_cgroup(pid: int, original: str) -> None:
    for line in original.splitlines():
        _, controllers, path = line.split(":", 2)
        if "cpuacct" in controllers.split(","):
            with contextlib.suppress(OSError):
                (CGROUP_ROOT / path.lstrip("/") / "cgroup.procs").write_text(str(pid))
            return


# ------------------------------------------------------------------------ report


def make_figures(count: int) -> dict[str, Figure]:
    figures = [
        Figure("down_aes", "download MB/s, aes128-gcm", "MB/s", True, ">= 1.0x sshd"),
        Figure("down_chacha", "download MB/s, chacha20-poly1305", "MB/s", True, ">= 1.0x sshd"),
        Figure("up_aes", "upload MB/s, aes128-gcm", "MB/s", True, ">= 1.0x AsyncSSH"),
        Figure("true_curve", "`ssh true` ms, curve25519-sha256", "ms", False, "<= 25"),
        Figure("true_sntrup", "`ssh true` ms, sntrup761x25519-sha512", "ms", False, "<= 0.6x sshd"),
        Figure("cpu_true", "server CPU ms per `ssh true` (curve25519)", "ms", False, "<= 5"),
        Figure(
            "cpu_sntrup",
            "server CPU ms per `ssh true` (sntrup761x25519)",
            "ms",
            False,
            "server side of sntrup << 5 ms",
        ),
        Figure("mem_idle", "server memory per idle connection, KiB", "KiB", False, "<= 40"),
        Figure(
            "concurrent",
            f"{count} concurrent sessions succeeded",
            "",
            True,
            f"{count}/{count}, each in its own container",
        ),
        Figure(
            "e2e_true",
            "`ssh true` ms end to end, container vs host shell (default kex)",
            "ms",
            False,
            "<= 1.0x sshd",
        ),
        Figure(
            "e2e_true_curve",
            "`ssh true` ms end to end, container vs host shell (curve25519)",
            "ms",
            False,
            "",
        ),
        Figure("e2e_cpu", "server CPU ms per `ssh true` end to end (curve25519)", "ms", False, ""),
        Figure(
            "e2e_down",
            "download MB/s end to end through a container, aes128-gcm",
            "MB/s",
            True,
            ">= 1.0x sshd",
        ),
        Figure(
            "e2e_cpu_split",
            "  CPU seconds per GB on the container path (same run)",
            "",
            False,
            "",
        ),
        Figure(
            "e2e_raw", "  podman REST exec stream, raw socket read (same run)", "MB/s", True, ""
        ),
        Figure(
            "e2e_backend",
            "  podman REST exec stream via trissh's PodmanBackend (same run)",
            "MB/s",
            True,
            "",
        ),
        Figure(
            "e2e_direct",
            "  direct stdio: the pipe trissh reads, via PodmanBackend (same run; the raw path)",
            "MB/s",
            True,
            "",
        ),
        Figure(
            "fwd_aes",
            "`ssh -L` MB/s from a server in the container vs on the host, aes128-gcm",
            "MB/s",
            True,
            ">= 1.0x sshd",
        ),
        Figure(
            "fwd_chacha",
            "`ssh -L` MB/s, chacha20-poly1305",
            "MB/s",
            True,
            ">= 1.0x sshd",
        ),
        Figure("fwd_ready", "`ssh -N -L` ms until the local port listens", "ms", False,
               "<= 1.0x sshd"),  # fmt: skip
        Figure(
            "readyz",
            "`/readyz` ms, p50 / p99, during a login storm",
            "ms",
            False,
            "p99 well below a 300 ms check interval",
        ),
    ]
    figures += [
        Figure(key, f"storm: {n} clients at once", "", True, target)
        for key, n, target in (
            ("storm_200", 200, "all succeed"),
            ("storm_500", 500, "all succeed"),
            ("storm_1000", 1000, "1000/1000, 1000 containers; banner p99 <= 1 s"),
            ("storm_default", 500, ">= sshd's success"),
            ("storm_50", 50, ""),
            ("storm_100", 100, ""),
        )
    ]
    figures += [
        Figure(
            "sustained",
            "container logins per second, sustained (16 clients back to back)",
            "/s",
            True,
            "",
        ),
        Figure("mem_session", "host memory per running container session, KiB", "KiB", False, ""),
        Figure(
            "cpu_container_login",
            "CPU ms per container login: trissh + podman",
            "ms",
            False,
            "trissh <= 5",
        ),
    ]
    return {f.key: f for f in figures}


def cell(figure: Figure, name: str) -> str:
    if name in figure.text:
        return figure.text[name]
    value = figure.values.get(name)
    if value is None:
        return "—"
    if figure.unit == "ms":
        return f"{value:.1f}"
    return f"{value:,.0f}"


def ratio(figure: Figure, a: str, b: str) -> str:
    x, y = figure.values.get(a), figure.values.get(b)
    if x is None or y is None or y == 0 or figure.key.startswith(("concurrent", "storm")):
        return "—"
    return f"{x / y:.2f}"


PODMAN_ROWS = (
    "e2e",
    "concurrent_podman",
    "readyz",
    "storm",
    "sustained",
    "mem_session",
    "cpu_container_login",
    "fwd",
)


def trissh_column(figure: Figure) -> str:
    return PODMAN if figure.key.startswith(PODMAN_ROWS) else TRISSH


def render_table(figures: dict[str, Figure], versions: dict[str, str]) -> str:
    head = (
        f"| figure | trissh | AsyncSSH {versions.get('asyncssh', '')} | "
        f"sshd {versions.get('sshd', '')} | trissh/AsyncSSH | trissh/sshd | target |"
    )
    lines = [head, "|---|---:|---:|---:|---:|---:|---|"]
    for figure in figures.values():
        ours = trissh_column(figure)
        if not figure.values and not figure.text:
            continue
        label = figure.title
        if figure.key.startswith(PODMAN_ROWS):
            label += " *(trissh+podman)*"
        if figure.key == "concurrent":
            mem = cell(figure, TRISSH)
            pod = cell(figure, PODMAN)
            trissh_cell = f"{mem} (in-process); {pod} (podman)"
        else:
            trissh_cell = cell(figure, ours)
        lines.append(
            f"| {label} | {trissh_cell} | {cell(figure, ASYNCSSH)} | {cell(figure, OPENSSH)} | "
            f"{ratio(figure, ours, ASYNCSSH)} | {ratio(figure, ours, OPENSSH)} | "
            f"{figure.target} |"
        )
    return "\n".join(lines)


def plot(figures: dict[str, Figure], out: Path) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    colors = {
        TRISSH: "#2a9d8f",
        PODMAN: "#264653",
        ASYNCSSH: "#e9c46a",
        OPENSSH: "#e76f51",
        "raw": "#8d99ae",
        "backend": "#adb5bd",
    }
    made: list[tuple[str, str]] = []

    def grouped(
        path: str,
        title: str,
        keys: list[str],
        names: list[str],
        ylabel: str,
        log_scale: bool = False,
    ) -> None:
        keys = [k for k in keys if figures[k].values]
        if not keys:
            return
        fig, ax = plt.subplots(figsize=(9, 4.2), dpi=110)
        width = 0.8 / len(names)
        for i, name in enumerate(names):
            xs, ys = [], []
            for j, key in enumerate(keys):
                value = figures[key].values.get(name)
                if value is not None:
                    xs.append(j + (i - (len(names) - 1) / 2) * width)
                    ys.append(value)
            bars = ax.bar(xs, ys, width, label=name, color=colors.get(name))
            ax.bar_label(bars, fmt="%.0f" if max(ys or [0]) > 20 else "%.1f", fontsize=7)
        ax.set_xticks(range(len(keys)))
        ax.set_xticklabels(
            [textwrap.fill(figures[k].title.replace("`", ""), 26) for k in keys], fontsize=8
        )
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        if log_scale:
            ax.set_yscale("log")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / path)
        plt.close(fig)
        made.append((path, title))

    grouped(
        "throughput.png",
        "Bulk transfer over loopback (higher is better)",
        ["down_aes", "down_chacha", "up_aes"],
        [TRISSH, ASYNCSSH, OPENSSH],
        "MB/s",
    )
    grouped(
        "login.png",
        "Login latency and server CPU per `ssh true` (lower is better)",
        ["true_curve", "true_sntrup", "cpu_true", "cpu_sntrup"],
        [TRISSH, ASYNCSSH, OPENSSH],
        "ms",
    )
    grouped(
        "memory.png",
        "Server memory per idle connection (lower is better, log scale)",
        ["mem_idle"],
        [TRISSH, ASYNCSSH, OPENSSH],
        "KiB PSS",
        log_scale=True,
    )
    # end to end: container vs host
    if figures["e2e_down"].values:
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2), dpi=110)

        def panel(axis: Any, rows: tuple[tuple[str, str, str], ...], unit: str, title: str) -> None:
            """Bars for the (label, figure, server) rows that have a value; peers' raw
            streams in the neutral colour."""
            labels, values, cols = [], [], []
            for label, key, name in rows:
                value = figures[key].values.get(name)
                if value is not None:
                    labels.append(label)
                    values.append(value)
                    raw = key in ("e2e_raw", "e2e_backend", "e2e_direct")
                    cols.append(colors["raw"] if raw else colors[name])
            bars = axis.bar(labels, values, color=cols)
            axis.bar_label(bars, fmt="%.0f", fontsize=8)
            axis.set_ylabel(unit)
            axis.set_title(title, fontsize=10)
            axis.tick_params(axis="x", labelsize=8)

        panel(
            left,
            (
                ("trissh+podman\n(ssh, container)", "e2e_down", PODMAN),
                ("podman REST\nstream (raw)", "e2e_raw", PODMAN),
                ("PodmanBackend\nstream", "e2e_backend", PODMAN),
                ("direct stdio\npipe (raw)", "e2e_direct", PODMAN),
                ("sshd\n(host head)", "e2e_down", OPENSSH),
            ),
            "MB/s",
            "Download end to end, aes128-gcm",
        )
        panel(
            right,
            (
                ("trissh+podman\ndefault kex", "e2e_true", PODMAN),
                ("sshd\ndefault kex", "e2e_true", OPENSSH),
                ("trissh+podman\ncurve25519", "e2e_true_curve", PODMAN),
                ("sshd\ncurve25519", "e2e_true_curve", OPENSSH),
            ),
            "ms",
            "`ssh true`: fresh container vs host shell",
        )
        fig.tight_layout()
        fig.savefig(out / "end-to-end.png")
        plt.close(fig)
        made.append(("end-to-end.png", "End to end through a container"))
    return made


def environment(bench: Bench) -> dict[str, str]:
    import importlib.metadata as md

    def run(*argv: str) -> str:
        with contextlib.suppress(Exception):
            result = subprocess.run(argv, capture_output=True, text=True, timeout=20)
            return (result.stdout + result.stderr).strip().splitlines()[0]
        return "?"

    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    git = run("git", "-C", str(ROOT), "rev-parse", "--short", "HEAD")
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--", "trissh"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    versions = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": f"{cpu}, {os.cpu_count()} CPUs",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "trissh": f"{md.version('trissh')} at {git}{' + uncommitted changes' if dirty else ''}",
        "cryptography": md.version("cryptography"),
        "asyncssh": md.version("asyncssh"),
        "ssh client": run("ssh", "-V"),
        "sshd": run(SSHD, "-V").split(",")[0].replace("OpenSSH_", "")
        if Path(SSHD).exists()
        else "?",
        "podman": run("podman", "--version"),
        "load average before the run": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
    }
    for server in bench.servers.values():
        versions[f"{server.name} version line"] = server.version
        versions[f"{server.name} kex offered"] = ", ".join(server.kex_offered)
    return versions


def write_report(
    path: Path,
    table: str,
    figures: dict[str, Figure],
    versions: dict[str, str],
    plots: list[tuple[str, str]],
    args: argparse.Namespace,
    loadavg_after: str,
    elapsed: float,
    extra_notes: Sequence[str] = (),
) -> None:
    notes = [f"- **{f.title.strip()}**: {f.note}" for f in figures.values() if f.note]
    notes += [f"- {note}" for note in extra_notes]
    samples = []
    for f in figures.values():
        for name, values in f.samples.items():
            if len(values) > 1:
                shown = ", ".join(f"{v:.1f}" if f.unit == "ms" else f"{v:.0f}" for v in values)
                samples.append(f"- {f.title.strip()} — {name}: {shown}")
    env_lines = [f"- {k}: {v}" for k, v in versions.items()]
    text = f"""# Benchmarks

Generated by `scripts/nox -s bench{" -- --quick" if args.quick else ""}` (bench/run.py) on
{versions["date"]} in {elapsed / 60:.1f} minutes. Do not edit by hand: rerun the benchmark.
{
        "**Quick pass**: fewer runs and smaller transfers; use the full run for published figures."
        if args.quick
        else ""
    }

trissh against the servers a user would pick instead, on one machine, in one run, over
loopback, with the OpenSSH 9.2 client as the load generator. *trissh* is the SSH layer alone
(the in-process `MemoryBackend` runs the synthetic commands); *trissh+podman* is the product
end to end (rootless podman, one fresh container per connection, the bench image with GNU
`head`). AsyncSSH runs the same synthetic commands in Python; sshd runs the real commands in
a host shell (`/bin/sh` = dash, GNU coreutils). Medians; ratios are trissh/peer from this run
(for ms and KiB rows lower is better, so a ratio below 1 is a win).

{table}

## How each figure is measured

- **all servers**: the same ed25519 host key and client key, `HostKeyAlgorithms=ssh-ed25519`;
  pre-auth connection limits lifted because the load comes from one address, many at a time
  (sshd `MaxStartups 1000`, trissh `limits.max_startups = "1000:30:1000"` and
  `max_startups_per_source = 0`; AsyncSSH has none; its listen backlog is 1024). trissh runs
  at its default log level (info, JSON lines to a file).
- **download**: `ssh -o Ciphers=C -o KexAlgorithms=curve25519-sha256 host 'head -c N
  /dev/zero' > /dev/null`, N = {"200 MB" if args.quick else "1 GB"}; MB/s = N / the client's
  wall time (login included: ~1-15 % of the time). One warm-up run per server, then
  {"3" if args.quick else "5"} runs, servers interleaved.
- **upload**: `ssh host 'cat > /dev/null' < FILE` (a sparse file of zeros), same N and runs.
- **`ssh true`**: wall time of the whole client process, {"8" if args.quick else "25"} runs;
  the sntrup761 row only for servers whose KEXINIT offers it (probed).
- **server CPU per login**: cpuacct.usage delta of the server's cgroup over the
  `ssh true` runs, divided by their number. Each server is started inside its own cgroup v1
  cpuacct group, so sshd's re-executed per-connection children count. Fallback without
  root/cgroups: /proc/PID/stat utime+stime+cutime+cstime.
- **memory per idle connection**: on freshly started servers, one warm-up login, then
  two batches of {"50" if args.quick else "100"} `ssh -N` connections (authenticated, no
  session; the client's LocalCommand says when each is up); PSS from /proc/PID/smaps_rollup
  summed over every process in the server's cgroup. The figure is the second batch's
  increase / N: the first batch partly fills heap left free at start-up (its cost is in the
  notes), the second is the steady marginal cost.
- **concurrent sessions**: that many `ssh host 'sleep 5'` started at once (curve25519);
  success = exit status 0. For trissh+podman each connection gets its own container
  (`sleep 5 && hostname`; the distinct host names count the containers).
- **storms**: N OpenSSH clients released at the same instant (tests/storm.py: each under a
  waiting `sh`, one write releases all), each running `echo up; sleep 30; hostname` with
  `ConnectTimeout=10`: trissh+podman with its *default* configuration (a container per
  client, warm pool sized by demand, start queue) and sshd (host shell, `MaxStartups 1000`).
  Login = release to the session's first line; banner = the client's own "Connection
  established" to "Remote protocol version" debug lines, timestamped as read. Containers =
  distinct host names. **sustained**: 16 clients running `ssh host true` back to back for
  60 s. **memory per session**: PSS of trissh, the podman service and every process of the
  podman user and its subordinate ids, 200 `sleep` sessions against none, per session.
  **CPU per container login**: trissh's cgroup and the podman service's (with conmon, runc
  and the containers it starts) over 30 sequential `ssh true`.
- **end to end**: the same client commands against trissh+podman (fresh container per
  connection, taken from trissh's default warm pool: sized by demand, 2 ready when idle,
  up to 16, `[podman] warm_pool`;
  exec + remove are in the figure, and the pool's refill runs between logins) and sshd's
  host shell. The
  raw stream rows read `head -c N /dev/zero` from a podman REST exec stream (hijacked
  unix socket, `Upgrade: tcp`) in a container of the same image, directly (raw socket,
  frames counted, not parsed) and through trissh's `PodmanBackend` (demultiplexed), in the
  same run; the direct-stdio row reads the same `head` through the pipe trissh hands into
  the container (`[podman] direct_stdio`, the default, which the end-to-end rows use).

## Notes from this run

{chr(10).join(notes) if notes else "- none"}

## Plots

{chr(10).join(f"![{title}](bench/plots/{name})" for name, title in plots)}

## Every sample

{chr(10).join(samples)}

## Environment

{chr(10).join(env_lines)}
- load average after the run: {loadavg_after}

Other work on the same 2-core machine during the run skews results; compare ratios from one
run rather than absolute figures across runs. Profiles of trissh's SSH layer:
`scripts/nox -s bench -- --profile` writes [bench/PROFILE.md](bench/PROFILE.md).
"""
    path.write_text(text)


# ------------------------------------------------------------------------ main


def cpu_busy() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def wait_quiet(limit: float, longest: float) -> float:
    """Wait until the machine's CPUs are less than ``limit`` busy over 3 s (other work on a
    shared machine skews every figure), at most ``longest`` seconds; return the last level."""
    deadline = time.monotonic() + longest
    while True:
        a = cpu_busy()
        time.sleep(3)
        b = cpu_busy()
        busy = (b[0] - a[0]) / max(1, b[1] - a[1])
        if busy < limit or time.monotonic() > deadline:
            return busy
        log(f"the machine is {busy:.0%} busy with other work; waiting for it to settle")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs, smaller transfers")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="profile trissh's SSH layer instead (bench/profile_ssh.py)",
    )
    parser.add_argument(
        "--only",
        default="throughput,logins,memory,concurrency,e2e,forwarding,readyz,storm,capacity",
        help="comma-separated subset of the measurements",
    )
    parser.add_argument("--no-podman", action="store_true", help="skip trissh+podman")
    parser.add_argument(
        "--storm-out", metavar="FILE", help="append each storm's figures there (JSON lines)"
    )
    parser.add_argument(
        "--no-write",
        action="store_true",
        help="print the table only; leave BENCHMARKS.md and plots alone",
    )
    args = parser.parse_args()
    if args.profile:
        return subprocess.call(
            [PYTHON, str(BENCH / "profile_ssh.py"), *(["--quick"] if args.quick else [])]
        )
    if os.geteuid() != 0:
        log(
            "not root: sshd cannot run as another user and cgroups are unavailable; "
            "run through `scripts/nox -s bench` as root"
        )
        return 1
    only = set(args.only.split(","))
    busy = wait_quiet(0.25, 0 if args.quick else 180)
    log(f"other work keeps the CPUs {busy:.0%} busy at the start")
    started = time.monotonic()
    busy_before = cpu_busy()
    bench = Bench(args)
    figures = make_figures(50 if args.quick else 200)
    storms: list[dict[str, Any]] = []
    try:
        bench.start_trissh(TRISSH, "memory")
        bench.start_asyncssh()
        bench.start_sshd()
        if not args.no_podman and ({"concurrency", "e2e", "forwarding", "readyz"} & only):
            if not bench.podman_url:
                log("CONTAINER_HOST is not set: skipping trissh+podman")
            else:
                bench.start_trissh(PODMAN, "podman")
        if not args.no_podman and {"storm", "capacity"} & only and bench.podman_url:
            bench.start_trissh(PODMAN_DEFAULT, "podman", pool=None)
        versions = environment(bench)
        versions["CPUs busy with other work at the start"] = f"{busy:.0%}"
        # heaviest last: 200 containers leave podman busy cleaning up for a while
        steps = [
            ("throughput", measure_throughput),
            ("logins", measure_logins),
            ("memory", measure_memory),
            ("e2e", measure_end_to_end),
            (
                "forwarding",
                lambda b, f: measure_forwarding(b, f, interleaved, (PODMAN, OPENSSH)),
            ),
            ("readyz", measure_readyz),
            ("concurrency", measure_concurrency),
            (
                "storm",
                lambda b, f: storms.extend(storm_rows.measure_storms(b, f, sys.modules[__name__])),
            ),
            ("capacity", lambda b, f: storm_rows.measure_capacity(b, f, sys.modules[__name__])),
        ]
        for name, step in steps:
            if name in only:
                step(bench, figures)
                for server in bench.servers.values():
                    if not server.alive():
                        raise RuntimeError(f"{server.name} died during {name}")
    finally:
        bench.close()
    elapsed = time.monotonic() - started
    table = render_table(figures, versions)
    print()
    print(table)
    print()
    for f in figures.values():
        if f.note:
            print(f"- {f.title.strip()}: {f.note}")
    for note in bench.notes:
        print(f"- {note}")
    if args.storm_out and storms:
        with open(args.storm_out, "a") as out:
            out.writelines(json.dumps(row) + "\n" for row in storms)
    busy_after = cpu_busy()
    busy = (busy_after[0] - busy_before[0]) / max(1, busy_after[1] - busy_before[1])
    loadavg = " ".join(Path("/proc/loadavg").read_text().split(" ", 3)[:3])
    loadavg_after = f"{loadavg}; the machine's CPUs were {busy:.0%} busy on average during the run"
    log(f"load average after the run {loadavg}; CPUs {busy:.0%} busy during the run")
    if not args.no_write:
        plots = plot(figures, BENCH / "plots")
        if made := storm_rows.plot_storms(storms, BENCH / "plots"):
            plots.append((made, "Login storms: sessions up over time, and the wait for the banner"))
        write_report(
            ROOT / "BENCHMARKS.md",
            table,
            figures,
            versions,
            plots,
            args,
            loadavg_after,
            elapsed,
            bench.notes,
        )
        log("wrote BENCHMARKS.md and bench/plots/")
    log(f"done in {elapsed / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
