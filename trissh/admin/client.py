"""The operator's side of the admin socket: ``trissh sessions``, ``kill``, ``watch`` and
``drain`` (the wire is described in admin/server.py).

Plain blocking sockets: one request, one answer, and for ``watch`` a stream of output
copied to the operator's terminal as it comes. Exit codes: 0 done, 1 refused or failed.
"""

from __future__ import annotations

import base64
import json
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

#: The operator's terminal after a watch: attributes reset, cursor shown, main screen.
_RESTORE_TERMINAL = b"\x1b[0m\x1b[?25h\x1b[?1049l"


class AdminError(Exception):
    """The request failed; the message is for the operator."""


@contextmanager
def _connected(
    path: str, request: dict[str, Any], timeout: float
) -> Iterator[tuple[socket.socket, IO[bytes]]]:
    """Send ``request``; yield the socket and the answer's lines."""
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except FileNotFoundError:
            raise AdminError(f"no admin socket at {path}: is trissh running with it?") from None
        except PermissionError:
            raise AdminError(f"{path}: permission denied (run as trissh's user or root)") from None
        except OSError as exc:
            raise AdminError(f"{path}: {exc.strerror or exc}") from None
        sock.sendall(json.dumps(request).encode() + b"\n")
        with sock.makefile("rb") as lines:
            yield sock, lines
    finally:
        sock.close()


def _answer(lines: IO[bytes]) -> dict[str, Any]:
    line = lines.readline()
    if not line:
        raise AdminError("the server closed the admin connection without an answer")
    answer: dict[str, Any] = json.loads(line)
    if not answer.get("ok"):
        raise AdminError(str(answer.get("error", "refused")))
    return answer


def call(path: str, request: dict[str, Any], timeout: float = 10) -> dict[str, Any]:
    """One request and its answer.

    Raises:
        AdminError: no server, no permission, or the server refused.
    """
    try:
        with _connected(path, request, timeout) as (_sock, lines):
            return _answer(lines)
    except OSError as exc:  # reset, timed out: the server stopped or is stuck
        raise AdminError(f"{path}: {exc.strerror or exc or type(exc).__name__}") from None


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _printable(text: str) -> str:
    """A client's text (TERM, its version) as the operator's terminal may show it: control
    characters escaped, never interpreted."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def format_sessions(answer: dict[str, Any], now: float | None = None) -> str:
    """The listing ``trissh sessions`` prints: one line per connection, one indented
    line per session under it."""
    now = time.time() if now is None else now
    state = "ready" if answer["ready"] else f"NOT READY: {answer['why']}"
    connections = answer["connections"]
    lines = [f"instance {answer['instance']}: {state}, "
             f"{len(connections)} connection{'s' if len(connections) != 1 else ''}"]  # fmt: skip
    for conn in connections:
        who = f"{conn['user']}@" if conn["user"] else "(not logged in) "
        lines.append(
            f"{conn['conn_id']}  {who}{conn['remote']}  "
            f"up {_duration(now - conn['connected_at'])}  idle {_duration(conn['idle_s'])}  "
            f"in {_size(conn['bytes_in'])}  out {_size(conn['bytes_out'])}  "
            f"{_printable((conn['client_version'] or '').removeprefix('SSH-2.0-'))}".rstrip()
        )
        for session in conn["sessions"]:
            what = session["kind"] + (f" {session['command']!r}" if session["command"] else "")
            if session["term"]:
                columns, rows = session["size"]
                what += f" ({_printable(session['term'])} {columns}x{rows})"
            container = (session["container"] or "-")[:12]
            watched = f"  watched by {session['watchers']}" if session["watchers"] else ""
            lines.append(
                f"    {conn['conn_id']}:{session['channel']}  {what}  container {container}  "
                f"up {_duration(now - session['started_at'])}  "
                f"idle {_duration(session['idle_s'])}  "
                f"in {_size(session['bytes_in'])}  out {_size(session['bytes_out'])}{watched}"
            )
    return "\n".join(lines)


def watch(path: str, session: str, *, notify: bool, out: IO[bytes], err: IO[str]) -> str:
    """Copy a session's output to ``out`` as it comes; return why it ended.

    Raises:
        AdminError: no server, no such session, or one that cannot be watched.
    """
    request = {"action": "watch", "session": session, "notify": notify}
    with _connected(path, request, 10) as (sock, lines):
        header = _answer(lines)
        what = header["kind"] + (f" {header['command']!r}" if header["command"] else "")
        if header["term"]:
            what += f", {_printable(header['term'])} {header['size'][0]}x{header['size'][1]}"
        err.write(
            f"trissh: watching {header['user']}@{header['remote']}, session {session} "
            f"({what}); read-only, Ctrl-C to stop\r\n"
        )
        err.flush()
        sock.settimeout(None)  # output comes when the user's program writes
        for line in lines:
            frame = json.loads(line)
            if "out" in frame:
                out.write(base64.b64decode(frame["out"]))
                out.flush()
            elif "end" in frame:
                return str(frame["end"])
    return "the server closed the connection"


def run(command: str, path: str, target: str | None, *, as_json: bool, notify: bool) -> int:
    """``trissh sessions|kill|watch|drain``: print the outcome; the exit code."""
    try:
        if command == "watch":
            return _run_watch(path, target, notify=notify)
        if command == "sessions":
            answer = call(path, {"action": "sessions"})
            print(json.dumps(answer, indent=2) if as_json else format_sessions(answer))
        elif command == "kill":
            if not target:
                raise AdminError("kill needs a connection id (see trissh sessions)")
            call(path, {"action": "kill", "conn": target})
            print(f"connection {target} ended")
        elif command == "drain":
            answer = call(path, {"action": "drain"})
            if answer.get("already"):
                print(f"already {answer['already']} (an earlier drain or stop)")
            else:
                print(
                    f"draining: /readyz answers 503, new logins served for {answer['drain_s']:g} s"
                )
    except AdminError as exc:
        print(f"trissh: {exc}", file=sys.stderr)
        return 1
    return 0


def _run_watch(path: str, target: str | None, *, notify: bool) -> int:
    if not target:
        raise AdminError("watch needs a session id CONN:CHANNEL (see trissh sessions)")
    out = sys.stdout.buffer
    try:
        reason = watch(path, target, notify=notify, out=out, err=sys.stderr)
    except KeyboardInterrupt:
        reason = "stopped"
    finally:
        if out.isatty():
            out.write(_RESTORE_TERMINAL)
            out.flush()
    print(f"\r\ntrissh: watch ended: {reason}", file=sys.stderr)
    return 0
