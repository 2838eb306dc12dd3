"""PodmanBackend specifics: URL parsing and error mapping (no podman needed), then the
container hardening, backpressure and teardown behaviour against a real service."""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import podman
import podman.errors
import pytest
import requests
import trio

from trissh.backend import (
    BackendError,
    BackendUnavailable,
    ContainerSettings,
    ExitStatus,
    ImageNotFound,
    ProcessSpec,
)
from trissh.backend.podman import PodmanBackend
from trissh.backend.podman.api import PodmanApi, map_podman_errors, socket_path
from trissh.backend.podman.owner import LABEL_OWNER, owner_alive, owner_token

from .conformance import run
from .conftest import PodmanHarness


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("unix:///run/p/podman.sock", "/run/p/podman.sock"),
        ("unix:/run/p/podman.sock", "/run/p/podman.sock"),
        ("http+unix://%2Frun%2Fp%2Fpodman.sock", "/run/p/podman.sock"),
        ("unix:///tmp/a%20b.sock", "/tmp/a b.sock"),
    ],
)
def test_socket_path_accepts_container_host_spellings(url: str, path: str) -> None:
    assert socket_path(url) == path


@pytest.mark.parametrize("url", ["tcp://127.0.0.1:8080", "ssh://h/run/p.sock", "unix://rel.sock"])
def test_socket_path_rejects_others(url: str) -> None:
    with pytest.raises(ValueError, match="podman URL"):
        socket_path(url)


def _api_error(status: int, message: str) -> podman.errors.APIError:
    response = requests.Response()
    response.status_code = status
    response.reason = "Internal Server Error"
    return podman.errors.APIError(message, response=response, explanation=message)


def test_connection_failures_map_to_unavailable() -> None:
    cause = ConnectionRefusedError(111, "Connection refused")
    wrapped = podman.errors.APIError("http://x/containers/create", explanation="POST failed")
    wrapped.__cause__ = requests.ConnectionError(cause)
    unavailable = r"^container backend unavailable: .*refused"
    with pytest.raises(BackendUnavailable, match=unavailable), map_podman_errors(where="/p"):
        raise wrapped
    with pytest.raises(BackendUnavailable, match="No such file"), map_podman_errors():
        raise FileNotFoundError(2, "No such file or directory")


def test_missing_image_maps_from_404_and_from_podman_43s_500() -> None:
    with pytest.raises(ImageNotFound) as info, map_podman_errors(image="x/y:z"):
        raise podman.errors.ImageNotFound("no such image")
    assert info.value.image == "x/y:z"
    with pytest.raises(ImageNotFound), map_podman_errors(image="x/y:z"):
        raise _api_error(500, "x/y:z: image not known")


async def _answer_once(listener: trio.socket.SocketType, status: str, body: bytes) -> None:
    """A fake podman below PodmanApi: one request read, one answer written."""
    conn, _ = await listener.accept()
    with conn:
        request = b""
        while b"\r\n\r\n" not in request:
            request += await conn.recv(4096)
        head = f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        await conn.send(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)


async def test_a_container_gone_meanwhile_is_missing_not_an_error(tmp_path: Path) -> None:
    """podman 4.3 answers a rename of a container removed while the request ran with 500
    "does not exist in database: no such container", not 404: ``missing_ok`` covers both."""
    path = tmp_path / "podman.sock"
    listener = trio.socket.socket(trio.socket.AF_UNIX)
    await listener.bind(str(path))
    listener.listen()
    api = PodmanApi(f"unix://{path}", limiter_capacity=1, request_timeout=5)
    gone = b'{"cause":"no such container","message":"container 1f does not exist in database:'
    gone += b' no such container","response":500}'
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_answer_once, listener, "500 Internal Server Error", gone)
            with trio.fail_after(10):
                answer = await api.request(
                    "POST", "/containers/1f/rename", params={"name": "n"}, missing_ok=True
                )
        assert answer is None
        other = b'{"cause":"x","message":"runc: something else","response":500}'
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_answer_once, listener, "500 Internal Server Error", other)
            with trio.fail_after(10), pytest.raises(BackendError, match="something else"):
                await api.request("POST", "/containers/1f/rename", missing_ok=True)
    finally:
        api.close()
        listener.close()


def test_other_errors_become_one_line_backend_errors() -> None:
    with pytest.raises(BackendError) as info, map_podman_errors(image="img"):
        raise _api_error(500, '/usr/bin/slirp4netns failed: "open(/dev/net/tun)"\nWARNING: x\n')
    assert type(info.value) is BackendError
    assert str(info.value) == 'podman: /usr/bin/slirp4netns failed: "open(/dev/net/tun)"'
    with pytest.raises(BackendError, match="timed out"), map_podman_errors():
        raise requests.ReadTimeout("read timed out")


async def test_cancelled_passes_through_untouched() -> None:
    with trio.move_on_after(0) as scope:
        with map_podman_errors():
            await trio.sleep(1)
    assert scope.cancelled_caught


def test_unreachable_backend_constructs_without_io() -> None:
    backend = PodmanBackend("unix:///nonexistent/podman.sock")
    assert backend.socket_path == "/nonexistent/podman.sock"
    backend.close()


@pytest.mark.podman
async def test_container_is_hardened(podman_harness: PodmanHarness) -> None:
    h = podman_harness
    with trio.fail_after(30):
        async with h.backend.open_sandbox(h.sandbox_spec()) as sandbox:
            info = await h.podman._api.request("GET", f"/containers/{sandbox.container_id}/json")
            spec = ProcessSpec(
                argv=h.sh("grep -E '^(CapEff|NoNewPrivs)' /proc/self/status; ip -o link")
            )
            async with sandbox.open_process(spec) as process:
                out, _, status = await run(process)
    assert status == ExitStatus(code=0)
    assert b"CapEff:\t0000000000000000" in out
    assert b"NoNewPrivs:\t1" in out
    assert out.count(b": ") == 1 + out.count(b"lo:")  # only the loopback interface
    host = info["HostConfig"]
    assert "no-new-privileges" in host["SecurityOpt"]
    assert host["NetworkMode"] == "none"
    labels = info["Config"]["Labels"]
    assert labels["trissh.instance"] == h.instance
    assert labels["trissh.user"] == "alice"
    assert labels["trissh.remote"] == "192.0.2.7:50000"
    assert info["Path"] == "/run/podman-init"  # catatonit is PID 1


@pytest.mark.podman
async def test_lagging_consumer_stops_the_program(podman_harness: PodmanHarness) -> None:
    h = podman_harness
    spec = ProcessSpec(argv=h.sh("head -c 50000000 /dev/zero; echo done >&2"))
    with trio.fail_after(30):
        async with (
            h.backend.open_sandbox(h.sandbox_spec()) as sandbox,
            sandbox.open_process(spec) as process,
        ):
            await trio.sleep(1.0)  # nobody reads: pipes, socket and podman fill up
            exec_id = process.exec_id  # type: ignore[attr-defined]
            info = await h.podman._api.request("GET", f"/exec/{exec_id}/json")
            assert info["Running"], "the program ran ahead of its consumer"
            out, err, status = await run(process)
    assert (len(out), err, status) == (50_000_000, b"done\n", ExitStatus(code=0))


@pytest.mark.podman
async def test_leaving_while_output_is_unread_ends_the_stream(
    podman_harness: PodmanHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Teardown closes the unread pipes first, so the demux task is not stuck on a full one
    and the exec stream ends after the KILL. With the drain and cleanup bounds lifted, a
    stream that does not end is a hang this test's bound reports. How long leaving takes is
    measured by ``python -m tests.backend.bench_backend`` ("leave unread"), not here."""
    monkeypatch.setattr("trissh.backend.podman.exec._DRAIN_AFTER_KILL", math.inf)
    monkeypatch.setattr("trissh.backend.podman.exec.PROCESS_CLEANUP_BOUND", math.inf)
    h = podman_harness
    with trio.fail_after(30):
        async with (
            h.backend.open_sandbox(h.sandbox_spec()) as sandbox,
            sandbox.open_process(ProcessSpec(argv=h.sh("cat /dev/zero"))) as process,
        ):
            await process.stdout.receive_some(10)


@pytest.mark.podman
async def test_signal_after_exit_is_a_no_op(podman_harness: PodmanHarness) -> None:
    h = podman_harness
    with trio.fail_after(30):
        async with (
            h.backend.open_sandbox(h.sandbox_spec()) as sandbox,
            sandbox.open_process(ProcessSpec(argv=h.sh("exit 5"))) as process,
        ):
            assert (await run(process))[2] == ExitStatus(code=5)
            await process.send_signal("TERM")
            assert await process.wait() == ExitStatus(code=5)
            with pytest.raises(BackendError, match="NOPE"):
                await process.send_signal("NOPE")


@pytest.mark.podman
async def test_self_inflicted_signal_is_reported_as_a_code(podman_harness: PodmanHarness) -> None:
    """Podman reports only codes; 128+N is mapped to a signal only when we sent N."""
    h = podman_harness
    with trio.fail_after(30):
        async with (
            h.backend.open_sandbox(h.sandbox_spec()) as sandbox,
            sandbox.open_process(ProcessSpec(argv=h.sh("kill -TERM $$"))) as process,
        ):
            assert (await run(process))[2] == ExitStatus(code=143)


@pytest.mark.podman
async def test_exec_start_error_is_a_backend_error(podman_harness: PodmanHarness) -> None:
    with pytest.raises(BackendError, match="podman: 404"):
        await podman_harness.podman._api.upgrade(
            "/exec/0000000000000000000000000000000000000000000000000000000000000000/start",
            {"Detach": False, "Tty": False},
        )


@pytest.mark.podman
async def test_missing_program_exits_127(podman_harness: PodmanHarness) -> None:
    h = podman_harness
    with trio.fail_after(30):
        async with (
            h.backend.open_sandbox(h.sandbox_spec()) as sandbox,
            sandbox.open_process(ProcessSpec(argv=["/no/such/program"])) as process,
        ):
            _, err, status = await run(process)
    assert status == ExitStatus(code=127)
    assert b"/no/such/program" in err


@pytest.mark.podman
async def test_user_and_workdir_settings(podman_harness: PodmanHarness) -> None:
    h = podman_harness
    settings = ContainerSettings(user="1000:1000", workdir="/tmp")
    with trio.fail_after(30):
        async with h.backend.open_sandbox(h.sandbox_spec(settings=settings)) as sandbox:
            async with sandbox.open_process(ProcessSpec(argv=h.sh("id -u; pwd"))) as process:
                out, _, _ = await run(process)
            # A signal sent as the unprivileged user reaches the user's own process.
            async with sandbox.open_process(ProcessSpec(argv=h.sh("sleep 100"))) as process:
                await process.send_signal("TERM")
                assert await process.wait() == ExitStatus(signal="TERM")
    assert out == b"1000\n/tmp\n"


@pytest.mark.podman
async def test_health_lists_every_check(podman_harness: PodmanHarness) -> None:
    checks = await podman_harness.backend.health(podman_harness.settings)
    assert [c.name for c in checks] == [
        "service", "runtime", "cgroups", "containment", "storage", "stdio", "forwarding", "image"
    ]  # fmt: skip
    assert all(c.ok or c.fix for c in checks)
    by_name = {c.name: c for c in checks}
    assert by_name["service"].detail.startswith("podman ")
    assert by_name["stdio"].detail.startswith("podman's exec stream (direct_stdio = false)")
    forwarding = by_name["forwarding"]  # this harness has no agent: no sockets inside
    assert (forwarding.ok, forwarding.warning) == (True, True)
    assert forwarding.detail.startswith("unavailable (exec_agent = false)")
    assert "controllers" in by_name["cgroups"].detail


#: Asks for 16 processes and 128 MiB; tries 400 MiB, then 40 processes. Memory first: once
#: the pids limit bites, dd could not even start. Forks only through a child shell, whose fork
#: failure ends it and not the count; the count uses no fork at all.
LIMIT_PROBE = (
    "dd if=/dev/zero of=/dev/null bs=400M count=1 2>/dev/null; echo dd=$?; "
    "sh -c 'i=0; while [ $i -lt 40 ]; do sleep 30 & i=$((i+1)); done' 2>/dev/null; "
    "set -- /proc/[0-9]*; echo pids=$#"
)
PIDS_LIMIT, MEMORY_LIMIT = 16, 128 * 1024 * 1024


def enforced_limits(output: bytes) -> dict[str, bool]:
    """``{"pids_limit": ..., "memory_limit": ...}``: whether each limit held in the probe
    (dd fails with ENOMEM under an rlimit, or is killed by the memory controller)."""
    fields = dict(line.split("=", 1) for line in output.decode().split())
    pids, dd = int(fields["pids"]), int(fields["dd"])
    assert pids <= PIDS_LIMIT or pids > 40, f"neither capped nor free: {pids} processes"
    assert dd in (0, 1, 137), f"dd of 400 MiB under a 128 MiB limit exited {dd}"
    return {"pids_limit": pids <= PIDS_LIMIT, "memory_limit": dd != 0}


async def probe_without_trissh(h: PodmanHarness) -> dict[str, bool]:
    """What this host's podman enforces when asked directly (`podman run --pids-limit 16
    --memory 128m`): rootless on cgroup v1 it warns and ignores both."""

    def run_probe() -> bytes:
        with podman.PodmanClient(base_url=h.url) as client:
            container = client.containers.create(
                h.settings.image,
                command=[*h.settings.shell, "-c", LIMIT_PROBE],
                network_mode="none",
                pids_limit=PIDS_LIMIT,
                mem_limit=MEMORY_LIMIT,
                labels=h.scope,
            )
            try:
                container.start()
                container.wait(timeout=60)
                logs = container.logs(stdout=True, stderr=False)
                return logs if isinstance(logs, bytes) else b"".join(logs)
            finally:
                container.remove(force=True)

    return enforced_limits(await trio.to_thread.run_sync(run_probe))


@pytest.mark.podman
async def test_containment_holds_and_the_doctor_says_how(
    podman_harness: PodmanHarness,
) -> None:
    """The same probe in a container podman made with the limits (which hold only where
    the host's cgroups delegate their controller) and in one trissh made: trissh's holds
    both whatever the host, and the doctor's containment line names what holds each,
    cgroup controller exactly where podman alone managed."""
    h = podman_harness
    with trio.fail_after(120):
        host = await probe_without_trissh(h)
        limited = dataclasses.replace(h.settings, pids_limit=PIDS_LIMIT, memory_limit=MEMORY_LIMIT)
        async with (
            h.backend.open_sandbox(h.sandbox_spec(settings=limited)) as sandbox,
            sandbox.open_process(ProcessSpec(argv=h.sh(LIMIT_PROBE))) as process,
        ):
            out, _, status = await run(process)
        checks = {c.name: c for c in await h.backend.health(limited)}
    assert status == ExitStatus(code=0)
    assert enforced_limits(out) == {"pids_limit": True, "memory_limit": True}, out
    line = checks["containment"].detail
    assert f"{PIDS_LIMIT} processes (" in line, line
    assert ("pids controller" in line) == host["pids_limit"], line
    assert "RLIMIT_NPROC per user in the container" in line, line
    assert ("(memory controller)" in line) == host["memory_limit"], line
    assert ("heap per process (RLIMIT_DATA)" in line) != host["memory_limit"], line
    assert checks["containment"].ok  # a host without cgroup limits still runs sessions
    assert checks["containment"].warning == (not all(host.values())), checks["containment"]


def test_owner_token_is_alive_only_for_a_running_process() -> None:
    token = owner_token()
    assert owner_alive(token)
    boot, namespace, _pid, start = token.split("/")
    assert not owner_alive(f"{boot}/{namespace}/1/{start}")  # PID 1 started earlier
    assert not owner_alive(f"{boot}/{namespace}/999999999/{start}")
    assert not owner_alive(f"other-boot/{namespace}/{os.getpid()}/{start}")
    assert not owner_alive("")
    assert not owner_alive("garbage")


@pytest.mark.podman
async def test_sweep_spares_live_instances_and_removes_dead_owners(
    podman_harness: PodmanHarness,
) -> None:
    """Another trissh process sharing the podman user (a second server, a test run) must
    not lose its sessions to our start-up sweep; a crashed one's containers go."""
    h = podman_harness
    boot, namespace, _pid, start = owner_token().split("/")
    dead_owner = f"{boot}/{namespace}/999999999/{start}"
    other = PodmanBackend(h.url, scope_labels=h.scope)
    live_spec = dataclasses.replace(h.sandbox_spec(), instance="live-other")
    with trio.fail_after(30):
        await h.add_orphan("crashed-other", {LABEL_OWNER: dead_owner})
        async with other.open_sandbox(live_spec) as live:
            assert await h.backend.sweep(keep_instance=h.instance) == 1
            assert await h.containers("live-other") == [live.container_id]
            assert await h.containers("crashed-other") == []
    other.close()


@pytest.mark.podman
async def test_pid_fallback_through_podman_top_agrees_with_nspid(
    podman_harness: PodmanHarness,
) -> None:
    """Where /proc is not ours to read (trissh in another PID namespace), ``podman top``
    with ``hpid`` must find the same in-container PID."""
    from trissh.backend.podman.exec import PodmanProcess, _nspid_from_proc

    h = podman_harness
    with trio.fail_after(30):
        async with (
            h.backend.open_sandbox(h.sandbox_spec()) as sandbox,
            sandbox.open_process(ProcessSpec(argv=h.sh("sleep 100"))) as process,
        ):
            assert isinstance(process, PodmanProcess)
            host_pid = int((await process._inspect())["Pid"])
            from_proc = await _nspid_from_proc(host_pid)
            assert from_proc is not None
            assert from_proc > 1
            assert await process._nspid_from_top(host_pid) == from_proc
