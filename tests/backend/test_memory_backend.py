"""MemoryBackend specifics the conformance suite cannot ask of a real container."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from trissh.backend import (
    BackendError,
    ExitStatus,
    ForwardError,
    ProcessSpec,
    SandboxSpec,
    SocketAddress,
)
from trissh.backend._pipe import open_memory_pipe
from trissh.backend.memory import MemoryBackend
from trissh.backend.memory.network import BACKLOG

from .conformance import pty, read_all, read_until, run


def sandbox_spec(instance: str = "test") -> SandboxSpec:
    return SandboxSpec(conn_id="c1", username="alice", remote="192.0.2.1:1", instance=instance)


def sh(command: str) -> ProcessSpec:
    return ProcessSpec(argv=["/bin/sh", "-c", command])


async def test_stall_in_start_then_cancel_leaves_nothing() -> None:
    backend = MemoryBackend()
    backend.stall_sandbox_start = True
    with trio.move_on_after(0.05) as scope:
        async with backend.open_sandbox(sandbox_spec()):
            pytest.fail("stalled start returned")
    assert scope.cancelled_caught
    assert (backend.live_sandboxes, backend.containers) == (0, {})


async def test_stall_in_process_start_then_cancel(autojump_clock: trio.testing.MockClock) -> None:
    backend = MemoryBackend()
    backend.stall_process_start = True
    async with backend.open_sandbox(sandbox_spec()) as sandbox:
        with trio.move_on_after(5):
            async with sandbox.open_process(sh("true")):
                pytest.fail("stalled process start returned")
        assert backend.live_processes == 0
    assert backend.live_sandboxes == 0


async def test_fail_next_sandbox_fails_once() -> None:
    backend = MemoryBackend()
    backend.fail_next_sandbox = BackendError("boom")
    with pytest.raises(BackendError, match="boom"):
        async with backend.open_sandbox(sandbox_spec()):
            pass
    async with backend.open_sandbox(sandbox_spec()):
        pass
    assert backend.live_sandboxes == 0
    assert len(backend.sandbox_specs) == 1


async def test_body_exception_is_not_wrapped_in_a_group() -> None:
    backend = MemoryBackend()
    with pytest.raises(KeyError):
        async with (
            backend.open_sandbox(sandbox_spec()) as sandbox,
            sandbox.open_process(sh("sleep 10")),
        ):
            raise KeyError("mine")
    assert (backend.live_sandboxes, backend.live_processes) == (0, 0)


async def test_sleep_follows_the_mock_clock(autojump_clock: trio.testing.MockClock) -> None:
    backend = MemoryBackend()
    async with backend.open_sandbox(sandbox_spec()) as sandbox:
        start = trio.current_time()
        async with sandbox.open_process(sh("sleep 3600; echo woke")) as process:
            out, _, status = await run(process)
    assert out == b"woke\n"
    assert status == ExitStatus(code=0)
    assert trio.current_time() - start >= 3600


async def test_kill_self_ends_with_signal() -> None:
    backend = MemoryBackend()
    async with backend.open_sandbox(sandbox_spec()) as sandbox:
        for command, signal in [("kill -TERM $$", "TERM"), ("echo a; kill -SIGHUP $$", "HUP")]:
            async with sandbox.open_process(sh(command)) as process:
                _, _, status = await run(process)
            assert status == ExitStatus(signal=signal)


async def test_harmless_signal_is_ignored() -> None:
    backend = MemoryBackend()
    async with (
        backend.open_sandbox(sandbox_spec()) as sandbox,
        sandbox.open_process(sh("cat")) as process,
    ):
        await process.send_signal("WINCH")
        out, _, status = await run(process, b"still alive")
    assert (out, status) == (b"still alive", ExitStatus(code=0))


async def test_unknown_signal_is_an_error() -> None:
    backend = MemoryBackend()
    async with (
        backend.open_sandbox(sandbox_spec()) as sandbox,
        sandbox.open_process(sh("true")) as process,
    ):
        with pytest.raises(BackendError, match="NOPE"):
            await process.send_signal("NOPE")


async def test_interactive_shell_without_pty_reads_lines() -> None:
    backend = MemoryBackend()
    spec = ProcessSpec(argv=["/bin/sh"], env={"X": "1"})
    async with backend.open_sandbox(sandbox_spec()) as sandbox, sandbox.open_process(spec) as p:
        out, err, status = await run(p, b"echo $X $$\nfalse\necho $?\necho oops >&2\n")
    assert out == b"$ 1 2\n$ $ 1\n$ $ "
    assert err == b"oops\n"
    assert status == ExitStatus(code=0)


async def test_pty_merges_stderr_and_translates_newlines() -> None:
    backend = MemoryBackend()
    spec = ProcessSpec(argv=["/bin/sh", "-c", "echo a; echo b >&2; nope"], pty=pty())
    async with backend.open_sandbox(sandbox_spec()) as sandbox, sandbox.open_process(spec) as p:
        assert p.stderr is None
        out, _, status = await run(p)
    assert out == b"a\r\nb\r\nsh: nope: not found\r\n"
    assert status == ExitStatus(code=127)


async def test_pty_ctrl_d_ends_interactive_shell() -> None:
    backend = MemoryBackend()
    spec = ProcessSpec(argv=["/bin/sh"], pty=pty())
    async with backend.open_sandbox(sandbox_spec()) as sandbox, sandbox.open_process(spec) as p:
        await p.stdin.send_all(b"exit 4\r")
        assert await read_all(p.stdout) == b"$ "
        assert await p.wait() == ExitStatus(code=4)
    async with backend.open_sandbox(sandbox_spec()) as sandbox, sandbox.open_process(spec) as p:
        await p.stdin.send_all(b"\x04")
        assert await read_all(p.stdout) == b"$ "
        assert await p.wait() == ExitStatus(code=0)


async def test_closed_stdout_ends_with_sigpipe() -> None:
    backend = MemoryBackend()
    async with (
        backend.open_sandbox(sandbox_spec()) as sandbox,
        sandbox.open_process(sh("head -c 100000000 /dev/zero")) as process,
    ):
        await process.stdout.receive_some(10)
        await process.stdout.aclose()
        assert await process.wait() == ExitStatus(signal="PIPE")


async def test_backpressure_blocks_the_program() -> None:
    backend = MemoryBackend(pipe_limit=1000)
    async with (
        backend.open_sandbox(sandbox_spec()) as sandbox,
        sandbox.open_process(sh("head -c 10000000 /dev/zero; echo end >&2")) as process,
    ):
        await trio.testing.wait_all_tasks_blocked()
        # Nobody reads stdout: the program is stuck after at most one chunk.
        assert process.stderr is not None
        with trio.move_on_after(0.1):
            await process.stderr.receive_some()
            pytest.fail("program ran ahead of its consumer")
        out, err, _ = await run(process)
        assert len(out) == 10_000_000
        assert err == b"end\n"


async def test_head_gigabyte_arrives_whole() -> None:
    """Every byte of 1 GB, then the exit status. Its rate is measured by
    ``python -m tests.backend.bench_backend --memory``, not here; the bound only catches a hang."""
    backend = MemoryBackend()
    total = 0
    with trio.fail_after(120):
        async with (
            backend.open_sandbox(sandbox_spec()) as sandbox,
            sandbox.open_process(sh("head -c 1000000000 /dev/zero")) as process,
        ):
            while data := await process.stdout.receive_some():
                total += len(data)
            assert await process.wait() == ExitStatus(code=0)
    assert total == 1_000_000_000


async def test_records_specs_and_env_and_labels() -> None:
    backend = MemoryBackend()
    spec = ProcessSpec(argv=["/bin/sh", "-c", "printenv TERM"], pty=pty(), channel_id=3)
    async with backend.open_sandbox(sandbox_spec("inst")) as sandbox:
        labels = backend.containers[sandbox.container_id]
        assert labels["trissh.instance"] == "inst"
        assert labels["trissh.user"] == "alice"
        async with sandbox.open_process(spec) as process:
            out, _, _ = await run(process)
    assert out == b"xterm-256color\r\n"
    assert backend.process_specs == [spec]


async def test_closed_sandbox_refuses_processes() -> None:
    backend = MemoryBackend()
    async with backend.open_sandbox(sandbox_spec()) as sandbox:
        pass
    with pytest.raises(BackendError, match="gone"):
        async with sandbox.open_process(sh("true")):
            pass


async def test_read_until_helper_and_pipe_limits() -> None:
    send, receive = open_memory_pipe(4)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(send.send_all, b"abcdefgh")
        assert await read_until(receive, b"h") == b"abcdefgh"
    await send.aclose()
    assert await receive.receive_some() == b""


async def test_pipe_honours_max_bytes_and_broken_reader() -> None:
    send, receive = open_memory_pipe(100)
    await send.send_all(b"0123456789")
    assert await receive.receive_some(3) == b"012"
    assert await receive.receive_some(100) == b"3456789"
    await receive.aclose()
    with pytest.raises(trio.BrokenResourceError):
        await send.send_all(b"x")
    with pytest.raises(trio.ClosedResourceError):
        await receive.receive_some()


async def test_pipe_error_reaches_the_reader_after_data() -> None:
    send, receive = open_memory_pipe(100)
    await send.send_all(b"data")
    send.close(error=ValueError("desync"))
    assert await receive.receive_some() == b"data"
    with pytest.raises(trio.BrokenResourceError, match="desync"):
        await receive.receive_some()


async def test_exec_replaces_the_shell() -> None:
    backend = MemoryBackend()
    async with backend.open_sandbox(sandbox_spec()) as sandbox:
        async with sandbox.open_process(sh("exec false; echo unreachable")) as process:
            out, _, status = await run(process)
        assert (out, status) == (b"", ExitStatus(code=1))
        async with sandbox.open_process(sh("exec nope")) as process:
            _, err, status = await run(process)
        assert (err, status) == (b"sh: nope: not found\n", ExitStatus(code=127))


async def test_pipe_passes_trios_one_way_stream_checks() -> None:
    async def make() -> tuple[trio.abc.SendStream, trio.abc.ReceiveStream]:
        await trio.lowlevel.checkpoint()
        return open_memory_pipe(4096)

    await trio.testing.check_one_way_stream(make, None)


# ---------------------------------------------------------------- the fake network


async def test_a_forward_connection_pushes_back_on_a_writer() -> None:
    """A reader that lags stops the writer, as a socket buffer does (the handlers' flow
    control is tested on this)."""
    backend = MemoryBackend(pipe_limit=1000)
    async with (
        backend.open_sandbox(sandbox_spec()) as sandbox,
        sandbox.listen(SocketAddress(host="127.0.0.1")) as listener,
    ):
        client = await sandbox.connect(SocketAddress(host="127.0.0.1", port=listener.port))
        server, _ = await listener.accept()
        await client.send_all(b"x" * 1000)
        with trio.move_on_after(0.1) as blocked:
            await client.send_all(b"y")
        assert blocked.cancelled_caught
        assert await server.receive_some(2000) == b"x" * 1000
        await client.send_all(b"y")
        await server.aclose()
        with pytest.raises(trio.BrokenResourceError):
            await client.send_all(b"z")  # the peer closed: as a reset
        assert await client.receive_some(10) == b""


async def test_test_names_and_a_full_backlog() -> None:
    backend = MemoryBackend()
    async with backend.open_sandbox(sandbox_spec()) as sandbox:
        sandbox.network.hosts["db"] = ["127.0.0.5"]
        async with sandbox.listen(SocketAddress(host="127.0.0.5", port=5432)) as listener:
            for _ in range(BACKLOG):
                await sandbox.connect(SocketAddress(host="db", port=5432))
            with pytest.raises(ForwardError) as info:
                await sandbox.connect(SocketAddress(host="db", port=5432))
            assert info.value.reason == "timeout"
            _, peer = await listener.accept()
            assert peer.startswith("127.0.0.5:")
        with pytest.raises(ForwardError) as info:
            await sandbox.connect(SocketAddress(host="db", port=5432))
        assert info.value.reason == "refused"
        with pytest.raises(ForwardError) as info:
            async with sandbox.listen(SocketAddress(host="192.0.2.1", port=80)):
                pass
        assert (info.value.reason, str(info.value)) == ("failed", "Address not available")


async def test_a_gone_sandbox_closes_its_listeners() -> None:
    backend = MemoryBackend()
    async with backend.open_sandbox(sandbox_spec()) as sandbox:
        listening = sandbox.listen(SocketAddress(host="localhost"))
        listener = await listening.__aenter__()
    with pytest.raises(trio.ClosedResourceError):
        await listener.accept()
    with pytest.raises(ForwardError) as info:
        await sandbox.connect(SocketAddress(host="localhost", port=listener.port))
    assert info.value.reason == "failed"
    await listening.__aexit__(None, None, None)
