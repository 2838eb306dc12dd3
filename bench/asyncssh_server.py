"""An AsyncSSH server with the same synthetic commands as trissh's in-process backend.

Usage::

    python bench/asyncssh_server.py --authorized-keys FILE --host-key FILE [--port 0]

The benchmark's peer: stock AsyncSSH (asyncio's default loop, its default algorithms),
public-key authentication for any user name, and an exec handler that understands
``head -c N /dev/zero``, ``cat``, ``cat > /dev/null``, ``true``, ``sleep N`` and
``exit N`` (optionally after ``exec``, ``;``-separated). Anything else exits 127.
The first line on stdout is ``PORT <n>``.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import signal
import sys

import asyncssh

CHUNK = bytes(256 * 1024)
READ_SIZE = 256 * 1024


async def _run_one(words: list[str], process: asyncssh.SSHServerProcess[bytes]) -> int:
    if words and words[0] == "exec":
        words = words[1:]
    match words:
        case [] | ["true"]:
            return 0
        case ["exit", code]:
            return int(code)
        case ["sleep", seconds]:
            await asyncio.sleep(float(seconds))
            return 0
        case ["head", "-c", count, "/dev/zero"]:
            remaining = int(count)
            stdout = process.stdout
            while remaining > 0:
                n = min(remaining, len(CHUNK))
                stdout.write(CHUNK if n == len(CHUNK) else CHUNK[:n])
                await stdout.drain()
                remaining -= n
            return 0
        case ["cat", ">", "/dev/null"] | ["cat", ">/dev/null"]:
            while await process.stdin.read(READ_SIZE):
                pass
            return 0
        case ["cat"]:
            while data := await process.stdin.read(READ_SIZE):
                process.stdout.write(data)
                await process.stdout.drain()
            return 0
        case _:
            process.stderr.write(f"sh: {' '.join(words)}: not found\n".encode())
            return 127


async def handle(process: asyncssh.SSHServerProcess[bytes]) -> None:
    status = 0
    try:
        for part in (process.command or "").split(";"):
            status = await _run_one(shlex.split(part), process)
    except (asyncssh.BreakReceived, asyncssh.SignalReceived, asyncssh.TerminalSizeChanged):
        status = 130
    except (BrokenPipeError, ConnectionError, asyncssh.Error):
        status = 1
    process.exit(status)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--authorized-keys", required=True)
    parser.add_argument("--host-key", required=True)
    args = parser.parse_args()
    server = await asyncssh.listen(
        args.host,
        args.port,
        server_host_keys=[args.host_key],
        authorized_client_keys=args.authorized_keys,
        process_factory=handle,
        encoding=None,
        backlog=1024,
    )
    print(f"PORT {server.get_port()}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    await server.wait_closed()


if __name__ == "__main__":
    asyncio.run(main())
    sys.exit(0)
