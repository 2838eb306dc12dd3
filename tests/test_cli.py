"""The command line: version, help, configuration errors, start-up errors, doctor."""

from __future__ import annotations

from pathlib import Path

import pytest

from trissh import __version__
from trissh.cli import main
from trissh.config import ConfigError, load_config

from .support import run_module


def test_version_via_python_dash_m() -> None:
    """`python -m trissh --version` prints the version."""
    result = run_module("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"trissh {__version__}"


def test_help_documents_the_cli_contract() -> None:
    """`--help` names every flag of the contract and the doctor command."""
    result = run_module("--help")
    for flag in ("--listen", "--host-key", "--authorized-keys", "--podman-url", "--image",
                 "--config", "--log-format", "doctor"):  # fmt: skip
        assert flag in result.stdout


def test_unknown_config_key_names_its_path(tmp_path: Path) -> None:
    """A typo in the TOML file is an error naming the key, not silently ignored."""
    config = tmp_path / "trissh.toml"
    config.write_text('[container]\nimgae = "x"\n')
    with pytest.raises(ConfigError, match=r"container\.imgae: Extra inputs are not permitted"):
        load_config(config, {})


def test_flags_override_the_file(tmp_path: Path) -> None:
    """Flags win over the TOML file."""
    config = tmp_path / "trissh.toml"
    config.write_text('listen = ["127.0.0.1:1"]\n[container]\nimage = "from-file"\n')
    settings = load_config(config, {"container.image": "from-flag"})
    assert settings.container.image == "from-flag"
    assert settings.listen == ("127.0.0.1:1",)


@pytest.mark.parametrize(
    ("listen", "message"),
    [("nohost", "is not HOST:PORT"), ("host:99999", "out of range"), (":22", "has no host")],
)
def test_bad_listen_address(listen: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, {"listen": [listen]})


def test_bad_config_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """An invalid value is reported on stderr with exit status 2."""
    assert main(["--listen", "nonsense"]) == 2
    assert "listen" in capsys.readouterr().err


def test_missing_authorized_keys_is_a_startup_error(tmp_path: Path) -> None:
    """Without any way to log in the server refuses to start, and says what to pass."""
    result = run_module("--listen", "127.0.0.1:0", "--host-key", str(tmp_path / "k"))
    assert result.returncode == 1
    assert "--authorized-keys" in result.stderr


def test_host_key_is_generated_once(tmp_path: Path) -> None:
    """A missing host key is created (mode 0600, .pub beside it) and reused afterwards."""
    from trissh.server.hostkeys import load_or_create_host_key

    path = tmp_path / "sub" / "host_key"
    first, created = load_or_create_host_key(path)
    assert created
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.with_name("host_key.pub").read_text().startswith("ssh-ed25519 ")
    second, created_again = load_or_create_host_key(path)
    assert not created_again
    assert second.public_blob == first.public_blob


def test_doctor_reports_an_unreachable_podman(tmp_path: Path, authorized_keys: Path) -> None:
    """`trissh doctor` fails with a fix hint when the podman socket does not answer."""
    result = run_module(
        "doctor",
        "--authorized-keys", str(authorized_keys),
        "--host-key", str(tmp_path / "host_key"),
        "--podman-url", f"unix://{tmp_path}/nothing.sock",
    )  # fmt: skip
    assert result.returncode == 1
    assert "[FAIL]" in result.stdout
    assert "fix:" in result.stdout
    assert "[ok  ] authorized keys" in result.stdout


def test_user_image_shortcut() -> None:
    """``[users.alice] image = ...`` (the issue's example) is ``container.image``."""
    settings = load_config(None, {"users": {"alice": {"image": "alpine:3"}}})
    assert settings.container_for("alice").image == "alpine:3"
    assert settings.container_for("bob").image == settings.container.image


def test_doctor_tries_each_distinct_per_user_container_once() -> None:
    """Users whose tables change nothing about the container share the server-wide trial;
    users with the same override share one."""
    from trissh.ops.doctor import _container_variants

    settings = load_config(
        None,
        {
            "users": {
                "alice": {"image": "other:1"},
                "bob": {"container": {"image": "other:1"}},
                "carol": {"container": {"shell": ["/bin/bash"]}},
                "dave": {"authorized_keys": []},
            }
        },
    )
    variants = _container_variants(settings)
    assert [name for name, _ in variants] == [
        "session",
        "session of alice, bob",
        "session of carol",
    ]
    assert [section.image for _, section in variants][1] == "other:1"
    assert variants[2][1].shell == ("/bin/bash",)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ('[podman]\nurl = "tcp://127.0.0.1:8080"\n', "only unix sockets are supported"),
        (
            '[podman.registries."r.example"]\nusername = "u"\npassword_file = "/nonexistent/pw"\n',
            "podman.registries.r.example.password_file: No such file or directory",
        ),
    ],
)
def test_unusable_backend_settings_are_told_by_check_config_and_the_start(
    tmp_path: Path, authorized_keys: Path, config: str, message: str
) -> None:
    """What the backend cannot use is a clear one-line error from `check-config` and from
    the start (check-config said OK, then the start printed a traceback)."""
    path = tmp_path / "trissh.toml"
    path.write_text(config)
    common = ("--config", str(path), "--authorized-keys", str(authorized_keys),
              "--host-key", str(tmp_path / "host_key"))  # fmt: skip
    checked = run_module("check-config", *common)
    assert (checked.returncode, checked.stdout) == (2, "")
    assert message in checked.stderr
    started = run_module("--listen", "127.0.0.1:0", *common)
    assert started.returncode == 1
    assert "\ntrissh: " in started.stderr
    assert message in started.stderr
    assert "Traceback" not in started.stderr


def test_the_state_directory_is_systemds_when_the_unit_has_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Under ``StateDirectory=`` (docs/deployment.md's unit) the generated host key goes
    there: the service user's home is read-only under ``ProtectSystem=strict``."""
    monkeypatch.setenv("STATE_DIRECTORY", f"{tmp_path}/state:{tmp_path}/other")
    settings = load_config(None, {})
    assert settings.host_key_paths() == (tmp_path / "state" / "ssh_host_ed25519_key",)
    assert settings.workspace_state_file() == tmp_path / "state" / "workspaces.json"


def test_a_host_key_that_cannot_be_created_is_named(tmp_path: Path, authorized_keys: Path) -> None:
    """By the start (which creates it) and by check-config (which only checks it can)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    key = ("--authorized-keys", str(authorized_keys), "--host-key", str(blocker / "host_key"))
    started = run_module("--listen", "127.0.0.1:0", *key)
    assert started.returncode == 1
    assert f"trissh: host key {blocker}/host_key: cannot create it: " in started.stderr
    checked = run_module("check-config", *key)
    assert checked.returncode == 2
    assert f"host key {blocker}/host_key: cannot create it: {blocker} is not writable" in (
        checked.stderr
    )
    assert "Traceback" not in started.stderr + checked.stderr


def test_odd_config_files_are_config_errors(tmp_path: Path) -> None:
    """A file that is not UTF-8, a key where a flag needs a table, and a MaxStartups of 0
    (which would refuse everyone) are errors naming the problem, not tracebacks."""
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes('[auth]\nbanner = "caf\xe9"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(latin1, {})
    scalar = tmp_path / "scalar.toml"
    scalar.write_text('container = "x"\n')
    with pytest.raises(ConfigError, match=r"container: a table is needed \(for container\.image\)"):
        load_config(scalar, {"container.image": "alpine"})
    with pytest.raises(ConfigError, match="0 would refuse every connection"):
        load_config(None, {"limits.max_startups": "0"})


def test_check_config_writes_no_host_key(tmp_path: Path, authorized_keys: Path) -> None:
    """`check-config` validates; it reports a missing host key instead of making one (a
    root-owned key appeared where the service would later look)."""
    key = tmp_path / "new" / "host_key"
    result = run_module(
        "check-config", "--authorized-keys", str(authorized_keys), "--host-key", str(key)
    )
    assert result.returncode == 0, result.stderr
    assert f"host key {key}: missing; the start generates it" in result.stdout
    assert not (tmp_path / "new").exists()
