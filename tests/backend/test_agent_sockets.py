"""Sockets made by the container's agent (``helper/agent-sockets.c``, ``podman/sockets.py``).

With the real helper as the agent on the host (its sockets are the host's, on loopback or
in ``tmp_path``): the requests, the 0600 unix socket, unlink refusing what is not a socket,
and the helper's own time bound. With a fake agent (the test answers on the agent's
socket): everything trissh must refuse of what comes back from a container. The contract
in real containers is the conformance suite's (``conformance_forwarding.py``).
"""

from __future__ import annotations

import array
import os
import socket
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from structlog.testing import capture_logs

from trissh.backend import ForwardError, SocketAddress
from trissh.backend.podman import sockets
from trissh.backend.podman.agent import Agent
from trissh.backend.podman.sockets import AgentSockets

from .conformance import read_until
from .test_agent import host_agent


async def test_host_agent_connects_and_listens(tmp_path: Path) -> None:
    async with host_agent(tmp_path) as (agent, _):
        made = AgentSockets(agent, "host")
        with trio.fail_after(10):
            async with made.listen(SocketAddress(host="127.0.0.1")) as listener:
                address = SocketAddress(host="localhost", port=listener.port)
                async with await made.connect(address) as client:
                    server, peer = await listener.accept()
                    async with server:
                        await client.send_all(b"through the agent's socket")
                        assert await read_until(server, b"socket")
                assert peer.startswith("127.0.0.1:")


async def test_host_agent_unix_socket_is_0600_and_removed(tmp_path: Path) -> None:
    path = str(tmp_path / "fwd.sock")
    async with host_agent(tmp_path) as (agent, _):
        made = AgentSockets(agent, "host")
        with trio.fail_after(10):
            async with made.listen(SocketAddress(path=path)):
                mode = os.lstat(path).st_mode
            with pytest.raises(FileNotFoundError):
                os.lstat(path)
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600


async def test_unlink_leaves_what_is_not_a_socket(tmp_path: Path) -> None:
    """A user who replaced the socket with a file keeps the file (and trissh logs it)."""
    path = tmp_path / "fwd.sock"
    async with host_agent(tmp_path) as (agent, _):
        made = AgentSockets(agent, "host")
        with trio.fail_after(10), capture_logs() as logs:
            async with made.listen(SocketAddress(path=str(path))):
                path.unlink()
                path.write_text("not a socket")
    assert path.read_text() == "not a socket"
    assert [(e["event"], e["error"]) for e in logs] == [
        ("socket_file_left", "error: failed: not a socket")
    ]


async def test_the_helper_bounds_a_connect_that_hangs(tmp_path: Path) -> None:
    """A unix listener whose backlog is full makes connect() block: the agent's child
    answers ``timeout`` after SOCKET_REQUEST_TIMEOUT (10 s), trissh does not wait more."""
    path = str(tmp_path / "full.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as full:
        full.bind(path)
        full.listen(0)
        fillers = []
        for _ in range(4):  # the kernel allows backlog + 1; more only fail (EAGAIN)
            filler = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            filler.setblocking(False)
            try:
                filler.connect(path)
            except BlockingIOError:
                filler.close()
                break
            fillers.append(filler)
        try:
            async with host_agent(tmp_path) as (agent, _):
                with (
                    trio.fail_after(sockets.ANSWER_TIMEOUT + 5),
                    pytest.raises(ForwardError) as info,
                ):
                    await AgentSockets(agent, "host").connect(SocketAddress(path=path))
        finally:
            for filler in fillers:
                filler.close()
    assert info.value.reason == "timeout"
    assert "within the time allowed" in str(info.value)  # the helper's bound, not ours


# ---------------------------------------------------------------- a fake agent

Answer = Callable[[trio.socket.SocketType], Awaitable[None]]


@asynccontextmanager
async def fake_agent(answer: Answer) -> AsyncIterator[tuple[AgentSockets, list[bytes]]]:
    """AgentSockets whose agent is this test: each request's line goes to ``answer``."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    control = trio.socket.from_stdlib_socket(theirs)
    requests: list[bytes] = []

    async def serve() -> None:
        while True:
            data, ancillary, _, _ = await control.recvmsg(4096, socket.CMSG_SPACE(16))
            if not data:
                return
            requests.append(data)
            fds = array.array("i", ancillary[0][2])
            for extra in fds[1:]:
                os.close(extra)
            line = trio.socket.from_stdlib_socket(socket.socket(fileno=fds[0]))
            with line:
                await answer(line)

    agent = Agent(trio.socket.from_stdlib_socket(ours))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        try:
            yield AgentSockets(agent, "fake"), requests
        finally:
            agent.close()
            nursery.cancel_scope.cancel()
    control.close()


def send_fds(*fds: int) -> Answer:
    async def answer(line: trio.socket.SocketType) -> None:
        await line.sendmsg([b"s"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])

    return answer


def say(text: bytes) -> Answer:
    async def answer(line: trio.socket.SocketType) -> None:
        await line.send(text)

    return answer


async def silent(line: trio.socket.SocketType) -> None:
    """An agent that does not know the request closes its line without a word."""


async def connect_through(answer: Answer) -> ForwardError:
    async with fake_agent(answer) as (made, _):
        with trio.fail_after(5), pytest.raises(ForwardError) as info:
            await made.connect(SocketAddress(host="localhost", port=80))
    return info.value


async def test_requests_go_out_as_nul_separated_words() -> None:
    async with fake_agent(say(b"error: refused: Connection refused\n")) as (made, requests):
        for address in (
            SocketAddress(host="db.internal", port=5432),
            SocketAddress(path="/run/app.sock"),
        ):
            with pytest.raises(ForwardError):
                await made.connect(address)
        for address in (SocketAddress(host="", port=0), SocketAddress(path="/tmp/x.sock")):
            with pytest.raises(ForwardError):
                async with made.listen(address):
                    pass
    assert requests == [
        b"connect\0db.internal\x005432\0",
        b"connect-unix\0/run/app.sock\0",
        b"listen\0\x000\0",
        b"listen-unix\0/tmp/x.sock\0",
    ]


@pytest.mark.parametrize(
    ("line", "reason", "text"),
    [
        (b"error: refused: Connection refused\n", "refused", "Connection refused"),
        (b"error: unreachable: Network unreachable\n", "unreachable", "Network unreachable"),
        (b"error: unknown_host: Name does not resolve\n", "unknown_host", "Name does not"),
        (b"error: timeout: no answer\n", "timeout", "no answer"),
        (b"error: nonsense: what\n", "failed", "the container's agent said: error: nonsense"),
        (b"garbage", "failed", "the container's agent said: garbage"),
    ],
)
async def test_error_lines_become_reasons(line: bytes, reason: str, text: str) -> None:
    error = await connect_through(say(line))
    assert (error.reason, str(error)[: len(text)]) == (reason, text)


async def test_an_agent_that_does_not_know_sockets_is_unsupported() -> None:
    error = await connect_through(silent)
    assert error.reason == "unsupported"
    assert "rebuild trissh-exec" in str(error)


async def test_no_answer_in_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sockets, "ANSWER_TIMEOUT", 0.2)

    async def never(line: trio.socket.SocketType) -> None:
        await trio.sleep_forever()

    assert (await connect_through(never)).reason == "timeout"


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("kind", ["pipe", "udp", "unix", "listening", "two", "unconnected"])
async def test_what_is_not_a_connected_stream_socket_is_refused_and_closed(kind: str) -> None:
    before = _open_fds()
    made: list[int] = []
    if kind == "pipe":
        reading, writing = os.pipe()
        os.close(writing)
        made.append(reading)
    elif kind == "udp":
        made.append(socket.socket(socket.AF_INET, socket.SOCK_DGRAM).detach())
    elif kind == "unix":  # a connected stream socket, but not the family asked for
        left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        made += [left.detach(), right.detach()]
    elif kind in ("listening", "two"):
        listening = socket.create_server(("127.0.0.1", 0))
        made.append(listening.detach())
        if kind == "two":
            made.append(socket.socket(socket.AF_INET, socket.SOCK_STREAM).detach())
    else:
        made.append(socket.socket(socket.AF_INET, socket.SOCK_STREAM).detach())
    with capture_logs() as logs:
        error = await connect_through(send_fds(*made[:2] if kind == "two" else made[:1]))
    for fd in made:
        os.close(fd)
    assert error.reason == "failed"
    assert "no usable socket" in str(error)
    assert [e["event"] for e in logs] == ["agent_bad_socket"]
    assert _open_fds() <= before  # nothing that came from the "container" stays open


async def test_a_listener_must_be_listening() -> None:
    left, right = socket.socketpair(socket.AF_UNIX)
    try:
        async with fake_agent(send_fds(left.fileno())) as (made, _):
            with trio.fail_after(5), pytest.raises(ForwardError) as info:
                async with made.listen(SocketAddress(path="/tmp/x.sock")):
                    pytest.fail("a connected socket taken for a listener")
    finally:
        left.close()
        right.close()
    assert info.value.reason == "failed"
    assert "not listening" in str(info.value)


async def test_a_gone_agent_is_no_forwarding() -> None:
    async with fake_agent(silent) as (made, _):
        made._agent.close()  # as when the container's agent went away
        with pytest.raises(ForwardError) as info:
            await made.connect(SocketAddress(host="localhost", port=80))
    assert info.value.reason == "unsupported"
