"""The admin socket: how ``trissh sessions``, ``kill``, ``watch`` and ``drain`` reach a
running server.

Theory of operation
-------------------
A local unix socket (``[admin] socket``) that only the user trissh runs as and root may
use: it is bound under a temporary name, made mode 0600 and renamed into place (it never
sits at its path with looser modes), and every client's credentials (``SO_PEERCRED``) are
checked as well. A client sends one JSON line (``{"action": "kill", "conn": "..."}``) and
reads one back (``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``). ``watch``
then streams JSON lines — ``{"out": BASE64}``, ``{"size": [COLUMNS, ROWS]}``, and last
``{"end": REASON}`` — until the session ends, the watcher falls behind (admin/live.py), or
the client hangs up. Every request is logged (``admin_request``, with the asking uid and
pid) and counted (``trissh_admin_requests_total``).

Bounds: a request line of 4 KiB read within 5 s, 16 clients at once, 4 watchers per
session, a watcher's queue of 1 MiB, 10 s for each write to a client.

Nursery tree::

    serve_admin                     in serve's upkeep nursery
    └─ _serve_client (one each)     a request and its answer
       └─ watch: _until_hangup      the client's EOF cancels the stream
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import os
import secrets
import socket
import stat
import struct
from pathlib import Path
from typing import Any, Final

import structlog
import trio

from trissh.admin.live import MAX_WATCHERS, Frame, LiveSession, Watcher
from trissh.server.readiness import readiness
from trissh.server.state import LiveConnection, ServerContext

log = structlog.get_logger("trissh.admin.server")

MAX_REQUEST: Final = 4096
REQUEST_TIMEOUT: Final = 5.0
WRITE_TIMEOUT: Final = 10.0
MAX_CLIENTS: Final = 16
#: Output bytes per ``{"out": ...}`` line of a watch.
OUT_CHUNK: Final = 48 * 1024
WATCH_NOTICE: Final = "trissh: an operator is watching this session (read-only)"


class _Refused(Exception):
    """The request cannot be served; the message is the client's."""


async def serve_admin(
    ctx: ServerContext,
    path: str,
    shutdown: trio.Event,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the admin socket at ``path`` until cancelled; without it (it cannot be made,
    or another process serves it) log why and return.

    Cancellation: stops serving, ends every client, removes the socket file.
    """
    try:
        sock, made = await trio.to_thread.run_sync(_bind, Path(path))
    except OSError as exc:
        log.error("admin_socket_failed", path=path, error=exc.strerror or str(exc))
        task_status.started()
        return
    limiter = trio.CapacityLimiter(MAX_CLIENTS)

    async def handler(stream: trio.SocketStream) -> None:
        """(``serve_listeners`` closes ``stream`` when this returns.)"""
        try:
            limiter.acquire_nowait()
        except trio.WouldBlock:
            await _busy(stream)
            return
        try:
            await _serve_client(ctx, shutdown, stream)
        except Exception:  # a bug here must not take the server down
            log.exception("admin_client_failed")
        finally:
            limiter.release()

    try:
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        log.info("admin_socket_started", path=path)
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, handler, [listener])
            task_status.started()
    finally:
        _remove_if_ours(Path(path), made)


def _bind(path: Path) -> tuple[socket.socket, os.stat_result]:
    """A listening socket at ``path``, mode 0600 from the moment it is there; a stale one
    (nothing answers) is replaced, a live one is not. Returns it and its file's identity."""
    if path.is_symlink() or path.exists():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise OSError(f"{path} exists and is not a socket")
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(str(path))
            except OSError:
                path.unlink()  # left by a process that is gone
            else:
                raise OSError(f"{path} is served by another process")
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(temporary))
        os.chmod(temporary, 0o600)
        os.rename(temporary, path)
        sock.listen(MAX_CLIENTS)
    except BaseException:
        sock.close()
        temporary.unlink(missing_ok=True)
        raise
    return sock, path.lstat()


def _remove_if_ours(path: Path, made: os.stat_result) -> None:
    try:
        now = path.lstat()
        if (now.st_dev, now.st_ino) == (made.st_dev, made.st_ino):
            path.unlink()
    except OSError:
        pass


def _peer_credentials(stream: trio.SocketStream) -> tuple[int, int]:
    """(pid, uid) of the client process."""
    raw = stream.socket.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", raw)
    return pid, uid


async def _serve_client(
    ctx: ServerContext, shutdown: trio.Event, stream: trio.SocketStream
) -> None:
    """One request: check who asks, read it, answer it; never raises but ``Cancelled``."""
    pid, uid = _peer_credentials(stream)
    if uid not in (0, os.geteuid()):
        log.warning("admin_refused", peer_uid=uid, peer_pid=pid)
        ctx.metrics.admin_request("connect", "refused")
        return
    request: dict[str, Any] | str | None = None
    with trio.move_on_after(REQUEST_TIMEOUT):
        request = await _read_request(stream)
    if request is None:
        return
    if isinstance(request, str):
        log.info("admin_request", action="", peer_uid=uid, peer_pid=pid, result="refused",
                 error=request)  # fmt: skip
        ctx.metrics.admin_request("", "refused")
        await _send(stream, {"ok": False, "error": request})
        return
    action = str(request.get("action", ""))
    target = request.get("conn") or request.get("session")
    target = None if target is None else str(target)  # a string in every log line
    fields = {"action": action, "target": target, "peer_uid": uid, "peer_pid": pid}
    try:
        if action == "watch":
            await _watch(ctx, stream, request, fields)
            return
        answer = _answer(ctx, shutdown, action, request)
    except _Refused as exc:
        log.info("admin_request", **fields, result="refused", error=str(exc))
        ctx.metrics.admin_request(action, "refused")
        await _send(stream, {"ok": False, "error": str(exc)})
        return
    log.info("admin_request", **fields, result="ok")
    ctx.metrics.admin_request(action, "ok")
    await _send(stream, {"ok": True, **answer})


async def _read_request(stream: trio.SocketStream) -> dict[str, Any] | str | None:
    """One JSON object on one line, bounded; None if there is none (the client went, or
    sent more than MAX_REQUEST bytes), why as a string if the line is not one."""
    data = bytearray()
    while b"\n" not in data:
        try:
            chunk = await stream.receive_some(MAX_REQUEST)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return None
        if not chunk or len(data) + len(chunk) > MAX_REQUEST:
            return None
        data += chunk
    try:
        request = json.loads(data.split(b"\n", 1)[0])
    except (ValueError, RecursionError):  # RecursionError: nested thousands deep
        request = None
    return request if isinstance(request, dict) else "malformed request: not a JSON object"


async def _busy(stream: trio.SocketStream) -> None:
    """Every slot taken (watchers hold theirs): say so, after taking the request, which
    closing unread would turn into a reset the client reports as a traceback."""
    log.warning("admin_busy", clients=MAX_CLIENTS)
    with trio.move_on_after(1), contextlib.suppress(trio.BrokenResourceError):
        await stream.receive_some(65536)
    error = f"too many admin clients at once ({MAX_CLIENTS}; each watch holds one): try again"
    await _send(stream, {"ok": False, "error": error})


async def _send(stream: trio.SocketStream, message: dict[str, Any]) -> None:
    """One JSON line; a client that is gone or stalls past the bound just misses it."""
    with trio.move_on_after(WRITE_TIMEOUT):
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(json.dumps(message).encode() + b"\n")


def _answer(
    ctx: ServerContext, shutdown: trio.Event, action: str, request: dict[str, Any]
) -> dict[str, Any]:
    """sessions, kill, drain: the answer's fields.

    Raises:
        _Refused: unknown action or connection.
    """
    state = ctx.state
    if action == "sessions":
        ready, why = readiness(ctx)
        views = sorted((c.describe() for c in state.connections), key=lambda v: v.connected_at)
        return {
            "instance": ctx.instance,
            "ready": ready,
            "why": why,
            "draining": state.draining,
            "connections": [dataclasses.asdict(view) for view in views],
        }
    if action == "kill":
        _connection(ctx, str(request.get("conn", ""))).end_by_operator()
        return {}
    if action == "drain":
        already = "stopping" if state.shutting_down else "draining" if shutdown.is_set() else ""
        shutdown.set()
        return {"drain_s": (state.context or ctx).settings.limits.drain_time, "already": already}
    raise _Refused(f"unknown action {action!r}")


def _connection(ctx: ServerContext, conn_id: str) -> LiveConnection:
    for connection in ctx.state.connections:
        if connection.conn_id == conn_id:
            return connection
    raise _Refused(f"no connection {conn_id!r} (see trissh sessions)")


def _session(ctx: ServerContext, session_id: str) -> tuple[LiveConnection, LiveSession]:
    conn_id, _, channel = session_id.partition(":")
    connection = _connection(ctx, conn_id)
    valid = channel.isascii() and channel.isdigit() and len(channel) <= 10  # uint32s
    live = connection.live_session(int(channel)) if valid else None
    if live is None:
        raise _Refused(f"no session {session_id!r} (see trissh sessions)")
    if live.kind == "subsystem":
        raise _Refused(f"session {session_id} runs the {live.command} subsystem: nothing to watch")
    if live.watchers >= MAX_WATCHERS:
        raise _Refused(f"session {session_id} already has {MAX_WATCHERS} watchers")
    return connection, live


async def _watch(
    ctx: ServerContext, stream: trio.SocketStream, request: dict[str, Any], fields: dict[str, Any]
) -> None:
    """Stream a session's output to the client until it ends, lags or the client leaves.

    Raises:
        _Refused: no such session, or one that cannot be watched.
    """
    connection, live = _session(ctx, str(request.get("session", "")))
    view = connection.describe()
    notify = bool(request.get("notify")) or (ctx.state.context or ctx).settings.admin.notify_watched
    started = trio.current_time()
    reason = "watcher left"
    with live.watch() as watcher:
        log.info("admin_request", **fields, result="ok", notify=notify)
        ctx.metrics.admin_request("watch", "ok")
        ctx.metrics.session_watchers.inc()
        try:
            await _send(stream, {
                "ok": True, "user": view.user, "remote": view.remote, "kind": live.kind,
                "command": live.command, "term": live.term, "size": live.size,
            })  # fmt: skip
            if notify:
                newline = "\r\n" if live.term else "\n"
                await live.notify(f"{newline}{WATCH_NOTICE}{newline}")
            reason = await _stream_frames(stream, watcher)
        finally:
            ctx.metrics.session_watchers.dec()
            duration = round(trio.current_time() - started, 1)
            log.info(
                "admin_watch_ended", session=fields["target"], reason=reason, duration_s=duration
            )


async def _stream_frames(stream: trio.SocketStream, watcher: Watcher) -> str:
    """Frames to the client until the watcher ends or the client leaves; the reason."""
    reason = "watcher left"  # the client hung up: _until_hangup cancelled the loop
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_until_hangup, stream, nursery.cancel_scope)
        try:
            while frames := await watcher.next_frames():
                await _send_frames(stream, frames)
            reason = watcher.ended or "session ended"
            await _send(stream, {"end": reason})
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            reason = "watcher left"
        except trio.TooSlowError:
            reason = "watcher too slow"
        nursery.cancel_scope.cancel()
    return reason


async def _send_frames(stream: trio.SocketStream, frames: list[Frame]) -> None:
    """Consecutive output joined, in lines of at most ``OUT_CHUNK`` bytes."""
    lines: list[bytes] = []
    pending = bytearray()

    def flush_output() -> None:
        for start in range(0, len(pending), OUT_CHUNK):
            text = base64.b64encode(pending[start : start + OUT_CHUNK]).decode()
            lines.append(json.dumps({"out": text}).encode())
        pending.clear()

    for kind, data in frames:
        if kind == "out" and isinstance(data, bytes):
            pending += data
        else:
            flush_output()
            lines.append(json.dumps({kind: data}).encode())
    flush_output()
    with trio.fail_after(WRITE_TIMEOUT):  # a stalled client ends its watch
        await stream.send_all(b"\n".join(lines) + b"\n")


async def _until_hangup(stream: trio.SocketStream, scope: trio.CancelScope) -> None:
    """The client sends nothing after its request: EOF (or an error) means it left."""
    try:
        while await stream.receive_some(MAX_REQUEST):
            pass
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    scope.cancel()
