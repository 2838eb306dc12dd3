"""Run trissh for the benchmark: the real server with the in-process or the podman backend.

Usage::

    python bench/trissh_server.py --authorized-keys FILE --host-key FILE
        [--backend memory|podman] [--podman-url URL] [--image NAME] [--warm-pool N]
        [--listen 127.0.0.1:0] [--metrics-listen 127.0.0.1:PORT] [--cprofile OUT.pstats]
        [--log-level info]

The server is built the way ``trissh`` itself builds it (``load_config`` → ``build_context``
→ ``serve``), so it runs the same code as the CLI; only the backend differs. With
``--backend memory`` the sessions run ``trissh.backend.memory.MemoryBackend``'s synthetic
commands (``head -c N /dev/zero``, ``cat``, ``cat > /dev/null``, ``true``, ``sleep N``,
``exit N``) in-process: that isolates the SSH layer. JSON logs go to stderr as with the CLI
(``server_started`` carries the listening address); the first line on stdout is
``PORT <n>``. SIGTERM or SIGINT stops the server gracefully (containers are removed);
with ``--cprofile`` the profile of the whole run is written on the way out.
"""

from __future__ import annotations

import argparse
import cProfile
import signal
import sys

import trio

from trissh.addresses import parse_listen
from trissh.backend import Backend
from trissh.backend.registry import make_backend
from trissh.config import load_config
from trissh.ops.log import configure_logging
from trissh.server.build import build_context
from trissh.server.listener import open_listeners, serve


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--authorized-keys", required=True)
    parser.add_argument("--host-key", required=True)
    parser.add_argument("--backend", choices=["memory", "podman"], default="memory")
    parser.add_argument("--podman-url")
    parser.add_argument("--image")
    parser.add_argument(
        "--warm-pool", type=int, help="[podman] warm_pool (default: the configuration's)"
    )
    parser.add_argument("--metrics-listen", help="serve /metrics, /healthz, /readyz there")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--cprofile", metavar="OUT", help="write a cProfile of the whole run")
    return parser.parse_args()


async def _serve(args: argparse.Namespace) -> None:
    overrides: dict[str, object] = {
        "listen": [args.listen],
        "authorized_keys": args.authorized_keys,
        "host_keys": [args.host_key],
        "log_level": args.log_level,
        "podman.url": args.podman_url,
        "container.image": args.image,
        "metrics.listen": args.metrics_listen,
    }
    if args.warm_pool is not None:
        overrides["podman.warm_pool"] = args.warm_pool
    # The load generator connects from one address, many at a time: lift the pre-auth
    # connection limits, as the benchmark's sshd does (MaxStartups 1000), where they exist.
    from trissh.config import LimitSettings

    lifted = {"max_startups": "1000:30:1000", "max_startups_per_source": 0}
    for key, value in lifted.items():
        if key in LimitSettings.model_fields:
            overrides[f"limits.{key}"] = value
    settings = load_config(None, overrides)
    configure_logging(settings.log_format, settings.log_level)
    backend: Backend
    if args.backend == "memory":
        from trissh.backend.memory import MemoryBackend

        backend = MemoryBackend()
    else:
        backend = make_backend(settings)
    ctx = build_context(settings, backend)
    listeners = await open_listeners([parse_listen(args.listen)])
    port = listeners[0].socket.getsockname()[1]
    print(f"PORT {port}", flush=True)
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:

        async def watch_signals() -> None:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    shutdown.set()

        nursery.start_soon(watch_signals)
        await serve(ctx, listeners, shutdown=shutdown)
        nursery.cancel_scope.cancel()


def main() -> int:
    args = _arguments()
    if args.cprofile:
        profiler = cProfile.Profile()
        profiler.enable()
        try:
            trio.run(_serve, args)
        finally:
            profiler.disable()
            profiler.dump_stats(args.cprofile)
    else:
        trio.run(_serve, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
