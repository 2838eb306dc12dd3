"""Where trissh's SSH layer spends its time: bulk download, upload and `ssh true`.

Run with ``scripts/nox -s bench -- --profile`` (as root). For each scenario a fresh
trissh (bench/trissh_server.py, MemoryBackend, log level info as in production) serves the
real OpenSSH client three times:

1. unprofiled, in a cpuacct cgroup: the server's real CPU time, hence µs per packet or ms
   per login;
2. under py-spy (sampling, ``--nonblocking``, so the process is not paused): the share of
   samples per function, self and inclusive;
3. under cProfile (deterministic; inflates small calls, so read it for call counts: packets,
   allocations per packet): top functions by own time.

Writes bench/PROFILE.md (and prints it).
"""

from __future__ import annotations

import argparse
import collections
import io
import os
import pstats
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run

PY_SPY = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")


def start(bench: run.Bench, cprofile: Path | None = None) -> run.Server:
    acct = run.Accounting("profile")
    argv = [
        run.PYTHON,
        str(run.BENCH / "trissh_server.py"),
        "--authorized-keys",
        str(bench.authorized_keys),
        "--host-key",
        str(bench.host_key),
    ]
    if cprofile is not None:
        argv += ["--cprofile", str(cprofile)]
    server = run.Server("trissh", "bench", accounting=acct)
    server.process = subprocess.Popen(
        acct.wrap(argv), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    acct.pid = server.process.pid
    bench.started.append(server)
    server.port = run.read_port_line(server.process)
    run.wait_port(server.port)
    return server


def python_pid(server: run.Server) -> int:
    """The interpreter's pid (the cgroup wrapper execs, so it is the same process)."""
    assert server.process is not None
    return server.process.pid


def workload(bench: run.Bench, server: run.Server, scenario: str, size: int, repeat: int) -> None:
    for _ in range(repeat):
        if scenario == "download-aes":
            bench.timed(server, f"head -c {size} /dev/zero", cipher=run.AES, kex=run.CURVE)
        elif scenario == "download-chacha":
            bench.timed(server, f"head -c {size} /dev/zero", cipher=run.CHACHA, kex=run.CURVE)
        elif scenario == "upload-aes":
            bench.timed(
                server,
                "cat > /dev/null",
                stdin=bench.upload_source(size),
                cipher=run.AES,
                kex=run.CURVE,
            )
        elif scenario == "ssh-true":
            bench.timed(server, "true", kex=run.CURVE)
        else:
            raise ValueError(scenario)


def spy_summary(raw: Path, top: int = 18) -> tuple[int, list[tuple[str, float, float]]]:
    """(samples, [(function, self %, inclusive %)]) from py-spy's raw (collapsed) output."""
    self_count: collections.Counter[str] = collections.Counter()
    incl_count: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        # shorten paths: keep the package-relative part
        frames = [re.sub(r"\((?:.*/site-packages/|.*/work/main/)?", "(", f) for f in frames]
        total += count
        self_count[frames[-1]] += count
        for frame in set(frames):
            incl_count[frame] += count
    rows = [
        (name, 100 * n / total, 100 * incl_count[name] / total)
        for name, n in self_count.most_common(top)
    ]
    return total, rows


def cprofile_summary(
    path: Path, top: int = 18, cumulative: bool = False
) -> tuple[dict[str, int], str]:
    stats = pstats.Stats(str(path))
    calls: dict[str, int] = {}
    for (filename, _, name), (_, ncalls, _, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        short = f"{Path(filename).name}:{name}"
        calls[short] = calls.get(short, 0) + ncalls
    out = io.StringIO()
    stats.stream = out  # type: ignore[attr-defined]
    stats.strip_dirs().sort_stats("tottime").print_stats(top)
    text = out.getvalue()
    text = text[text.find("   ncalls") :] if "   ncalls" in text else text
    if cumulative:
        out = io.StringIO()
        stats = pstats.Stats(str(path), stream=out)
        stats.sort_stats("cumulative").print_stats(r"trissh/|structlog/|json/|cryptography/", top)
        more = out.getvalue()
        more = more[more.find("   ncalls") :] if "   ncalls" in more else more
        more = re.sub(r"/\S*/(site-packages|work/main)/", "", more)
        text += "\n\ncumulative, trissh + structlog + json + cryptography only:\n\n" + more
    return calls, text.rstrip()


def scenario_report(bench: run.Bench, scenario: str, size: int, repeat: int) -> str:
    work = bench.work
    # 1. unprofiled CPU, 2. py-spy on the same run
    server = start(bench)
    assert server.accounting is not None
    try:
        workload(bench, server, "ssh-true", 0, 1)  # warm-up
        spy_out = work / f"{scenario}.spy.txt"
        spy = None
        if Path(PY_SPY).exists():
            spy = subprocess.Popen(
                [
                    PY_SPY,
                    "record",
                    "--pid",
                    str(python_pid(server)),
                    "--rate",
                    "250",
                    "--nonblocking",
                    "--format",
                    "raw",
                    "--output",
                    str(spy_out),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1.0)
        before = server.accounting.cpu_seconds()
        wall = time.perf_counter()
        workload(bench, server, scenario, size, repeat)
        wall = time.perf_counter() - wall
        time.sleep(0.2)
        cpu = server.accounting.cpu_seconds() - before
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=60)
    finally:
        bench.stop(server)
    # 3. cProfile on a fresh server
    pstats_path = work / f"{scenario}.pstats"
    server = start(bench, cprofile=pstats_path)
    try:
        workload(bench, server, "ssh-true", 0, 1)
        workload(bench, server, scenario, size, repeat)
    finally:
        bench.stop(server)
    calls, table = cprofile_summary(pstats_path, cumulative=scenario == "ssh-true")
    if scenario.startswith("download"):
        seal = "AesGcm.seal" if "aes" in scenario else "ChaCha20Poly1305.seal"
        units = calls.get(f"ciphers.py:{seal.split('.')[1]}", 0)
    elif scenario.startswith("upload"):
        units = calls.get("ciphers.py:open", 0)
    else:
        units = repeat + 1
    lines = [f"## {scenario}", ""]
    if scenario == "ssh-true":
        lines.append(
            f"{repeat} sequential `ssh true` (curve25519): server CPU {cpu * 1000:.0f} ms "
            f"in {wall:.2f} s → **{cpu * 1000 / repeat:.2f} ms CPU per login** "
            f"({wall * 1000 / repeat:.1f} ms wall each)."
        )
    else:
        mb = size * repeat / 1e6
        per = cpu / max(units, 1) * 1e6
        lines.append(
            f"{repeat} x {size / 1e6:.0f} MB: {mb / wall:.0f} MB/s wall, server CPU "
            f"{cpu:.2f} s for {units:,} packets (packet count from the cProfile run's cipher "
            f"calls, control packets included) → **{per:.1f} µs of server CPU per packet** "
            f"({mb / cpu:.0f} MB per CPU-second)."
        )
    lines.append("")
    if spy is not None and spy_out.exists():
        samples, rows = spy_summary(spy_out)
        lines += [
            f"py-spy, {samples:,} samples (idle time in epoll included):",
            "",
            "| function (file) | self % | inclusive % |",
            "|---|---:|---:|",
        ]
        lines += [f"| `{name}` | {s:.1f} | {i:.1f} |" for name, s, i in rows]
        lines.append("")
    lines += [
        "cProfile, top functions by own time (deterministic; overhead inflates small calls):",
        "",
        "```",
        table,
        "```",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default="download-aes,download-chacha,upload-aes,ssh-true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        run.log("run as root (cgroups)")
        return 1
    bench = run.Bench(argparse.Namespace(quick=args.quick))
    size = 300_000_000 if args.quick else 1_000_000_000
    sections = []
    try:
        for scenario in args.only.split(","):
            run.log(f"profiling {scenario}")
            if scenario == "ssh-true":
                sections.append(scenario_report(bench, scenario, 0, 30 if args.quick else 100))
            else:
                sections.append(scenario_report(bench, scenario, size, 1 if args.quick else 2))
    finally:
        bench.close()
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    header = (
        f"# Profile of trissh's SSH layer\n\nGenerated by `scripts/nox -s bench -- "
        f"--profile` (bench/profile_ssh.py) on {when}; "
        f"trissh with the in-process MemoryBackend, the OpenSSH client on loopback. "
        f"Read with [BENCHMARKS.md](../BENCHMARKS.md).\n"
    )
    text = header + "\n" + "\n".join(sections)
    (run.BENCH / "PROFILE.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
