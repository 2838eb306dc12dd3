"""Login storms for the bench: N clients at once against trissh+podman and sshd, same run.

Run alone (as root, CONTAINER_HOST set)::

    python bench/storm.py --sizes 200,500 [--kex curve25519-sha256] [--servers trissh+podman,sshd]

or through ``scripts/nox -s bench -- --only storm``. Each client runs
``echo up; sleep 30; hostname`` (trissh+podman: in its own container); tests/storm.py
releases them together and times each one.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.storm import percentile, run_storm, ssh_argv  # noqa: E402

STORM_COMMAND = "echo up; sleep 30; hostname"
#: Every storm's clients are gone this long after their release, whatever the server does.
STORM_DEADLINE = 240.0


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
        "login_p50_s": round(percentile(login, 50), 2),
        "login_p99_s": round(percentile(login, 99), 2),
        "server_cpu_s": round(cpu, 1),
        "failures": result.failures(),
        "login_times": [round(t, 3) for t in login],
        "banner_waits": [round(t, 3) for t in banner],
    }


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
    args = parser.parse_args()
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
                shown = {k: v for k, v in figures.items() if k not in ("login_times", "banner_waits")}
                bench_run.log(f"  {json.dumps(shown)}")
                if args.out:
                    with open(args.out, "a") as out:
                        out.write(json.dumps(figures) + "\n")
                if args.keep_logs and server.log_path:
                    shutil.copy(server.log_path, f"{args.keep_logs}.{server.name}.{count}.log")
                if server.name == bench_run.PODMAN:
                    bench_run.wait_containers_gone(bench, server, timeout=300)
                time.sleep(2)
    finally:
        bench.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
