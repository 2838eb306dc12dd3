"""Login storms and the container path's capacity, trissh+podman against sshd, same run.

The bench's ``storm`` and ``capacity`` steps (``scripts/nox -s bench -- --only
storm,capacity``) measure:

* **storms**: N OpenSSH clients released at the same instant (tests/storm.py), each
  running ``echo up; sleep 30; hostname`` — for trissh+podman in a container of its own,
  for sshd in a host shell — at N = 200, 500 and 1,000 with curve25519 and at 500 with the
  client's default kex (sntrup761: the clients' own CPU is the bottleneck). Success, login
  latency (release to the session's first line) p50/p99, the wait for the server's version
  line (connected to banner) p99, and distinct containers;
* **sustained logins per second**: 16 clients each running ``ssh host true`` back to back
  for 60 s, every login into a fresh container;
* **host memory per running container session**: PSS of trissh, the podman service and
  everything it runs for the podman user (conmon, catatonit, agents, sessions), summed,
  with 200 sessions running against none, per session;
* **CPU per container login**: trissh's cgroup and the podman service's (with what it
  starts) over sequential ``ssh true`` logins.

trissh+podman runs here with its default configuration (warm pool sized by demand, start
queue), never the bench's fixed pool of the other rows. Run it alone (as root, with
CONTAINER_HOST)::

    python bench/storm.py --sizes 200,500 [--kex default] [--servers trissh+podman,sshd]
    python bench/storm.py --plot RESULTS.jsonl    # bench/plots/storm.png from saved storms
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.storm import percentile, run_storm, ssh_argv

STORM_COMMAND = "echo up; sleep 30; hostname"
#: Every storm's clients are gone this long after their release, whatever the server does.
STORM_DEADLINE = 600.0
SIZES = (200, 500, 1000)
QUICK_SIZES = (50, 100)
DEFAULT_KEX_SIZE = 500
SUSTAINED_CLIENTS = 16
SUSTAINED_SECONDS = 60.0
MEMORY_SESSIONS = 200
#: trissh's warm pool sizes itself by the logins of this many seconds (warm_pool.py).
DEMAND_WINDOW = 30.0


def storm(bench: Any, server: Any, count: int, kex: str | None) -> dict[str, Any]:
    """One storm against ``server``; its figures as a dict (JSON-friendly)."""
    argv = ssh_argv(
        server.port, bench.client_key, STORM_COMMAND, user=server.user, kex=kex, connect_timeout=10
    )
    cpu_before = server.accounting.cpu_seconds() if server.accounting else 0.0
    result = run_storm(argv, count, deadline=STORM_DEADLINE)
    cpu = (server.accounting.cpu_seconds() - cpu_before) if server.accounting else 0.0
    banner, login = result.banner_waits(), result.login_times()
    return {
        "server": server.name,
        "count": count,
        "kex": kex or "default",
        "succeeded": result.succeeded,
        "distinct_outputs": len(result.outputs()),
        "wall_s": round(result.wall, 1),
        "banner_p50_s": round(percentile(banner, 50), 3),
        "banner_p99_s": round(percentile(banner, 99), 3),
        "banner_max_s": round(max(banner, default=0.0), 3),
        "no_banner": sum(client.banner is None for client in result.clients),
        "login_p50_s": round(percentile(login, 50), 2),
        "login_p99_s": round(percentile(login, 99), 2),
        "server_cpu_s": round(cpu, 1),
        "failures": result.failures(),
        "login_times": [round(t, 3) for t in login],
        "banner_waits": [round(t, 3) for t in banner],
    }


def storm_cell(row: dict[str, Any], containers: bool) -> str:
    text = (
        f"{row['succeeded']}/{row['count']}; login p50 {row['login_p50_s']:.1f} s, p99"
        f" {row['login_p99_s']:.1f} s; banner p99 {row['banner_p99_s']:.2f} s"
    )
    if containers:
        text += f"; {row['distinct_outputs']} containers"
    return text


def sustained(bench: Any, server: Any, seconds: float = SUSTAINED_SECONDS) -> tuple[float, int]:
    """Logins per second with SUSTAINED_CLIENTS clients running ``ssh true`` back to back;
    and how many failed."""
    argv = bench.ssh_argv(server, "true", kex="curve25519-sha256")
    done = [0, 0]
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def client() -> None:
        while time.monotonic() < end:
            ok = (
                subprocess.run(
                    argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=120, check=False
                ).returncode
                == 0
            )
            with lock:
                done[0 if ok else 1] += 1

    started = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(SUSTAINED_CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return done[0] / (time.monotonic() - started), done[1]


def host_pss_kib(trissh: Any, podman_uid: int, subids: range) -> int:
    """PSS of trissh's processes and of every process of the podman user or its subids."""
    pids = set(trissh.accounting.pids()) if trissh.accounting else set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                uid = os.stat(f"/proc/{entry}").st_uid
                if uid == podman_uid or uid in subids:
                    pids.add(int(entry))
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
    return total


def mem_available_kib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
    return 0


def session_memory(bench: Any, server: Any, count: int) -> tuple[float, float]:
    """KiB of host memory per running container session (``sleep`` in each): the drop of
    MemAvailable (kernel memory included: namespaces, mounts, sockets; other work on the
    machine adds noise), and the processes' PSS alone."""
    info = json.loads(podman_get(bench.podman_url, "/v4.0.0/libpod/info"))
    uidmap = info["host"]["idMappings"]["uidmap"]
    podman_uid = next(e["host_id"] for e in uidmap if e["container_id"] == 0)
    subids = range(0)
    for entry in uidmap:
        if entry["container_id"] > 0:
            subids = range(entry["host_id"], entry["host_id"] + entry["size"])
    time.sleep(2)
    before = host_pss_kib(server, podman_uid, subids)
    available = mem_available_kib()
    argv = bench.ssh_argv(server, "echo up; sleep 90", kex="curve25519-sha256")
    clients = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        for _ in range(count)
    ]
    try:
        deadline = time.monotonic() + 80
        for client in clients:
            assert client.stdout is not None
            with contextlib.suppress(OSError):
                os.set_blocking(client.stdout.fileno(), True)
            line = client.stdout.readline() if time.monotonic() < deadline else b""
            if not line.startswith(b"up"):
                raise RuntimeError("a session for the memory figure did not start")
        time.sleep(3)
        during = host_pss_kib(server, podman_uid, subids)
        dropped = available - mem_available_kib()
    finally:
        for client in clients:
            with contextlib.suppress(OSError):
                client.kill()
        for client in clients:
            client.wait()
    return dropped / count, (during - before) / count


def podman_get(url: str, target: str) -> bytes:
    """One GET to the podman socket, HTTP/1.0 so the answer is not chunked."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(30)
        sock.connect(url.removeprefix("unix://"))
        sock.sendall(f"GET {target} HTTP/1.0\r\nHost: d\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if b" 200 " not in head.split(b"\r\n", 1)[0]:
        raise RuntimeError(f"podman answered {head[:40]!r} to {target}")
    return body


def measure_storms(bench: Any, figures: dict[str, Any], run: Any) -> list[dict[str, Any]]:
    """The storm rows (the bench's ``storm`` step); returns every storm's figures."""
    podman = bench.servers.get(run.PODMAN_DEFAULT)
    sshd = bench.servers[run.OPENSSH]
    if podman is None:
        run.log("storm: no trissh+podman (CONTAINER_HOST?): skipped")
        return []
    rows: list[dict[str, Any]] = []
    sizes = QUICK_SIZES if bench.quick else SIZES
    plan = [(n, run.CURVE) for n in sizes]
    plan.append((sizes[-1] // 2 if bench.quick else DEFAULT_KEX_SIZE, None))
    for count, kex in plan:
        key = f"storm_{count}" if kex else "storm_default"
        figures[
            key
        ].title = f"storm: {count:,} clients at once ({'curve25519' if kex else 'default kex'})"
        for server in (podman, sshd):
            run.log(f"storm: {count} clients at once on {server.name}, kex {kex or 'default'}")
            row = storm(bench, server, count, kex)
            rows.append(row)
            shown = {k: v for k, v in row.items() if k not in ("login_times", "banner_waits")}
            run.log(f"  {json.dumps(shown)}")
            column = run.PODMAN if server is podman else run.OPENSSH
            figures[key].set(column, [float(row["succeeded"])])
            figures[key].text[column] = storm_cell(row, server is podman)
            if row["failures"]:
                cause, n = next(iter(row["failures"].items()))
                bench.notes.append(
                    f"storm of {count} on {server.name}: {count - row['succeeded']} failed;"
                    f" most often ({n}x): {cause}"
                )
            if server is podman:
                run.wait_containers_gone(bench, server, timeout=600)
            time.sleep(5)
    return rows


def measure_capacity(bench: Any, figures: dict[str, Any], run: Any) -> None:
    """The sustained-rate, memory and CPU rows (the bench's ``capacity`` step)."""
    podman = bench.servers.get(run.PODMAN_DEFAULT)
    sshd = bench.servers[run.OPENSSH]
    if podman is None:
        run.log("capacity: no trissh+podman (CONTAINER_HOST?): skipped")
        return
    # First, on a settled server: earlier logins raised the warm pool's target, and its
    # refills and shrinking would count as these logins' CPU.
    run.log("CPU per container login: waiting for the warm pool to settle")
    time.sleep(DEMAND_WINDOW + 10)
    logins = 10 if bench.quick else 30

    def log_in() -> None:
        for _ in range(logins):
            bench.timed(podman, "true", kex=run.CURVE)
        time.sleep(2)  # the pool's refills of the last logins

    split = run.split_cpu(bench, podman, log_in)
    if split is not None:
        ours, theirs, _ = (s * 1000 / logins for s in split)
        figures["cpu_container_login"].set(run.PODMAN, [ours])
        figures["cpu_container_login"].text[run.PODMAN] = (
            f"trissh {ours:.1f} + podman {theirs:.0f} = {ours + theirs:.0f}"
        )
        figures["cpu_container_login"].note = (
            f"over {logins} sequential `ssh true` into fresh containers from the demand-sized"
            " pool (each login's container created, started and removed): trissh's cgroup,"
            " and the podman service's with conmon/runc/containers moved into its own"
        )
    seconds = 20.0 if bench.quick else SUSTAINED_SECONDS
    for server in (podman, sshd):
        run.log(f"sustained logins: {SUSTAINED_CLIENTS} clients back to back on {server.name}")
        rate, failed = sustained(bench, server, seconds)
        column = run.PODMAN if server is podman else run.OPENSSH
        figures["sustained"].set(column, [rate])
        figures["sustained"].text[column] = f"{rate:.1f}" + (
            f" ({failed} failed)" if failed else ""
        )
    run.wait_containers_gone(bench, podman, timeout=300)
    count = 50 if bench.quick else MEMORY_SESSIONS
    run.log(f"host memory per running container session ({count} sessions)")
    per, pss = session_memory(bench, podman, count)
    figures["mem_session"].set(run.PODMAN, [per])
    figures["mem_session"].text[run.PODMAN] = f"{per:,.0f} (processes' PSS {pss:,.0f})"
    figures["mem_session"].note = (
        f"{count} sessions running `sleep`: the drop of MemAvailable / {count}, and of that"
        " the PSS of trissh, the podman service and every process of the podman user and its"
        " subordinate ids (conmon, catatonit, the agent, the session)"
    )
    run.wait_containers_gone(bench, podman, timeout=300)


def plot_storms(rows: list[dict[str, Any]], out: Path) -> str | None:
    """bench/plots/storm.png: clients logged in over time, and banner waits, per storm."""
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.4), dpi=110)
    styles = {"trissh+podman": "-", "sshd": "--"}
    for row in rows:
        server = str(row["server"]).replace(" default", "")
        label = f"{server} {row['count']} ({row['kex'].split('-')[0]})"
        times = sorted(row["login_times"])
        if times:
            counts = [i / row["count"] for i in range(1, len(times) + 1)]
            left.step(times, counts, styles.get(server, "-"), where="post", label=label)
        waits = sorted(row["banner_waits"])
        if waits:
            share = [i / len(waits) for i in range(1, len(waits) + 1)]
            right.step(waits, share, styles.get(server, "-"), where="post", label=label)
    left.set_xlabel("seconds since the release")
    left.set_ylabel("share of clients with a running session")
    left.set_title("Login storms: sessions up over time", fontsize=10)
    left.legend(fontsize=7)
    right.set_xscale("symlog", linthresh=0.01)
    right.set_xlabel("seconds from TCP connected to the server's version line")
    right.set_ylabel("share of clients")
    right.axvline(10, color="grey", linewidth=0.8)
    right.text(10, 0.05, " ConnectTimeout=10", fontsize=7)
    right.set_title("Wait for the banner (a client gives up at ConnectTimeout)", fontsize=10)
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "storm.png")
    plt.close(fig)
    return "storm.png"


def main() -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import run as bench_run  # bench/run.py

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="200")
    parser.add_argument("--kex", default=bench_run.CURVE, help="'default': the client's own")
    parser.add_argument("--servers", default=f"{bench_run.PODMAN},{bench_run.OPENSSH}")
    parser.add_argument("--warm-pool", type=int, default=None, help="default: trissh's own")
    parser.add_argument("--out", help="append each storm's figures as a JSON line here")
    parser.add_argument("--keep-logs", metavar="PREFIX", help="copy the servers' logs there")
    parser.add_argument("--plot", metavar="JSONL", help="only plot saved storms")
    args = parser.parse_args()
    if args.plot:
        rows = [json.loads(line) for line in Path(args.plot).read_text().splitlines() if line]
        print(plot_storms(rows, bench_run.BENCH / "plots"))
        return 0
    bench_run.WARM_POOL = args.warm_pool
    bench = bench_run.Bench(argparse.Namespace(quick=True))
    kex = None if args.kex == "default" else args.kex
    try:
        servers = []
        for name in args.servers.split(","):
            if name == bench_run.OPENSSH:
                servers.append(bench.start_sshd())
            elif name == bench_run.PODMAN:
                servers.append(bench.start_trissh(bench_run.PODMAN, "podman"))
            else:
                servers.append(bench.start_trissh(bench_run.TRISSH, "memory"))
        for count in [int(n) for n in args.sizes.split(",")]:
            for server in servers:
                bench_run.log(f"storm: {count} clients at once on {server.name}, kex {args.kex}")
                figures = storm(bench, server, count, kex)
                shown = {
                    k: v for k, v in figures.items() if k not in ("login_times", "banner_waits")
                }
                bench_run.log(f"  {json.dumps(shown)}")
                if args.out:
                    with open(args.out, "a") as out:
                        out.write(json.dumps(figures) + "\n")
                if args.keep_logs and server.log_path:
                    shutil.copy(server.log_path, f"{args.keep_logs}.{server.name}.{count}.log")
                if server.name == bench_run.PODMAN:
                    bench_run.wait_containers_gone(bench, server, timeout=600)
                time.sleep(2)
    finally:
        bench.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
