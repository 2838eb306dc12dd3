"""`trissh doctor` against the real podman service, run as an operator runs it."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from podman import PodmanClient

from ..support import run_module


def _doctor(
    podman_url: str, authorized_keys: Path, tmp_path: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    return run_module(
        "doctor", *args,
        "--authorized-keys", str(authorized_keys),
        "--host-key", str(tmp_path / "host_key"),
        "--podman-url", podman_url,
        timeout=120,
    )  # fmt: skip


def test_doctor_runs_a_program_in_a_container_and_removes_it(
    podman_url: str, authorized_keys: Path, tmp_path: Path
) -> None:
    """Beyond the static checks, doctor starts a container and runs a program the way a
    login does (the agent and pipes by default), probes the host's ceilings with a second
    container, and leaves nothing behind."""
    args = ["--log-format", "json"]
    if helper := os.environ.get("TRISSH_EXEC_HELPER"):  # a build not installed yet
        config = tmp_path / "trissh.toml"
        config.write_text(f"[podman]\nexec_helper = {json.dumps(helper)}\n")
        args += ["--config", str(config)]
    result = _doctor(podman_url, authorized_keys, tmp_path, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    session = [line for line in result.stdout.splitlines() if " session: " in line]
    assert len(session) == 1, result.stdout
    assert session[0].startswith("[ok  ] session: a container started in"), session
    assert "ran `echo` (agent, pipes)" in session[0], session
    lines = result.stdout.splitlines()
    for expected in (  # forwarding: configured, and proven in the trial's container
        "[ok  ] forwarding: ports and unix sockets inside each container",
        "[ok  ] forwarding trial: a connection inside the container reached a listener",
    ):
        assert any(line.startswith(expected) for line in lines), result.stdout
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    created = [e["container"] for e in events if e["event"] == "container_created"]
    removed = [e["container"] for e in events if e["event"] == "container_removed"]
    assert len(created) == 2, events  # the trial session's, and the host limits' probe
    assert sorted(removed) == sorted(created), events
    with PodmanClient(base_url=podman_url) as client:
        assert not any(client.containers.exists(container) for container in created)


def test_doctor_fails_on_a_users_container_that_cannot_run_a_program(
    podman_url: str, authorized_keys: Path, tmp_path: Path
) -> None:
    """A `[users.NAME]` override that would break that user's every login fails doctor."""
    config = tmp_path / "trissh.toml"
    config.write_text('[users.carol.container]\nshell = ["/bin/no-such-shell"]\n')
    result = _doctor(podman_url, authorized_keys, tmp_path, "--config", str(config))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "[ok  ] session: " in result.stdout, result.stdout
    assert "[FAIL] session of carol: " in result.stdout, result.stdout
    assert "/bin/no-such-shell" in result.stdout
