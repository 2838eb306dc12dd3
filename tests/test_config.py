"""The configuration: the shipped example is the defaults, and bad input gets exact messages."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from trissh.cli import default_config_text
from trissh.config import ConfigError, ServerConfig, load_config


def test_example_config_is_exactly_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "trissh.toml"
    path.write_text(default_config_text())
    assert load_config(path, {}) == ServerConfig()


def _fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    names = []
    for name, info in model.model_fields.items():
        names.append(prefix + name)
        annotation = info.annotation
        candidates = getattr(annotation, "__args__", (annotation,))
        for candidate in candidates:
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                names += _fields(candidate, prefix + name + ".")
    return names


def _example_keys(text: str) -> set[str]:
    """The dotted names the example sets or shows (commented out too), by section."""
    keys: set[str] = set()
    section = ""
    for line in text.splitlines():
        if header := re.match(r"^#?\s*\[([a-z_.]+?)\.?(?:\"[^\"]*\")?\]", line):
            section = header.group(1) + "."
            keys.add(header.group(1))
        elif key := re.match(r"^#?\s*([a-z_]+)\s*=", line):
            keys.add(section + key.group(1))
    return keys


def test_example_config_names_every_key() -> None:
    """A new setting without a line in the example, in its own section, fails here (docs
    never drift); a key of the same name in another section does not count for it."""
    keys = _example_keys(default_config_text())
    missing = [name for name in _fields(ServerConfig) if name not in keys]
    assert [name for name in missing if not name.startswith("users")] == []


BAD: list[tuple[str, str]] = [
    ('listen = ["nohost"]', "listen: listen address 'nohost' is not HOST:PORT"),
    ("log_format = \"xml\"", "log_format: Input should be 'json' or 'console'"),
    ("surprise = 1", "surprise: Extra inputs are not permitted"),
    ("[backend]\nkind = \"kubernetes\"", "backend.kind: Input should be 'podman'"),
    ("[container]\nimgae = \"x\"", "container.imgae: Extra inputs are not permitted"),
    ("[container]\npids_limit = 1", "container.pids_limit: Input should be greater than or equal to 8"),
    ("[container]\nnetwork = \"host\"",
     "container.network: Input should be 'none', 'slirp4netns' or 'pasta'"),
    ("[container]\nvolumes = [\"relative:/data\"]",
     "container.volumes: volume 'relative:/data': both paths must be absolute"),
    ("[container]\nlabels = { \"trissh.user\" = \"x\" }",
     "container.labels: label 'trissh.user': the trissh. prefix is reserved"),
    ("[session]\nidle_timeout = -1", "session.idle_timeout: Input should be greater than or equal to 0"),
    ("[limits]\nmax_startups = \"10:x\"",
     "limits.max_startups: max_startups '10:x' is not START:RATE:FULL"),
    ("[recording]\nmax_bytes = 10", "recording.max_bytes: max_bytes must be 0 (no cap) or at least 16384"),
    ("[proxy]\ntrusted_networks = [\"not-a-net\"]",
     "proxy.trusted_networks: 'not-a-net' does not appear to be an IPv4 or IPv6 network"),
    ("[proxy]\ntrusted_networks = [\"10.0.0.1/8\"]",
     "proxy.trusted_networks: 10.0.0.1/8 has host bits set"),
    ("[auth.webhook]\nurl = \"ftp://x\"", "auth.webhook.url: url must start with http:// or https://"),
    ("[ssh]\nkex = [\"diffie-hellman-group1-sha1\"]", "ssh.kex: unknown kex algorithm 'diffie-hellman-group1-sha1'"),
    ("[users.al]\npassword_hash = \"plain\"",
     "users.al.password_hash: password_hash must be an argon2id hash (see `trissh hash-password`)"),
    ("[users.al]\nauthentication_methods = [\"publickey,otp\"]",
     "users.al.authentication_methods: chain 'publickey,otp': methods are comma-separated, "
     "from publickey, password, keyboard-interactive, gssapi-with-mic"),
    ("[auth]\nauthentication_methods = [\"publickey,gssapi-with-mic\"]",
     "gssapi-with-mic in authentication_methods needs [auth.kerberos]"),
    ("[auth.kerberos]\nkeytab = \"/k\"",
     "auth.kerberos: set realms or principals: no one could log in"),
    ("[auth.kerberos]\nkeytab = \"/k\"\nrealms = [\"R\"]\nservice_principal = \"ssh.example.org\"",
     "auth.kerberos.service_principal: must look like host/NAME@REALM, or be empty"),
    ("[auth]\nmax_user_keys = 0", "auth.max_user_keys: Input should be greater than or equal to 1"),
    ("[users.al.container]\nimage = 5", "users.al.container.image: Input should be a valid string"),
    ("[users.al.session]\naccept_env = [\"*\"]", "users.al.session.accept_env: cannot be set per user"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("toml", "message"), BAD, ids=[message.split(":")[0] for _, message in BAD]
)
def test_bad_configuration_gets_an_exact_message(tmp_path: Path, toml: str, message: str) -> None:
    path = tmp_path / "trissh.toml"
    path.write_text(toml + "\n")
    with pytest.raises(ConfigError) as raised:
        load_config(path, {})
    assert str(raised.value).splitlines()[0].startswith(f"{path}: {message}")


def test_toml_syntax_errors_name_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "trissh.toml"
    path.write_text('log_level = "info"\nlisten = ["a" "b"]\n')
    with pytest.raises(ConfigError, match=rf"{re.escape(str(path))}: .*line 2"):
        load_config(path, {})


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "trissh.toml"
    path.write_text("a = 1\nb = 2\n")
    with pytest.raises(ConfigError) as raised:
        load_config(path, {})
    assert len(str(raised.value).splitlines()) == 2


def test_overrides_dict(tmp_path: Path) -> None:
    settings: Any = load_config(None, {"container.image": "x", "log_level": None})
    assert settings.container.image == "x"


def test_podman_url_lookup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """$CONTAINER_HOST, else the user's own socket, else (only if the user's is missing)
    the one scripts/setup-host.sh starts; with neither, the user's, so errors name it."""
    settings = load_config(None, {})
    setup_socket = tmp_path / "setup" / "podman.sock"
    monkeypatch.setattr("trissh.config.server.SETUP_HOST_SOCKET", str(setup_socket))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    own = tmp_path / "run" / "podman" / "podman.sock"
    monkeypatch.setenv("CONTAINER_HOST", "unix:///elsewhere.sock")
    assert settings.podman_url() == "unix:///elsewhere.sock"
    monkeypatch.delenv("CONTAINER_HOST")
    assert settings.podman_url() == f"unix://{own}"
    setup_socket.parent.mkdir()
    setup_socket.touch()
    assert settings.podman_url() == f"unix://{setup_socket}"
    own.parent.mkdir(parents=True)
    own.touch()
    assert settings.podman_url() == f"unix://{own}"


@pytest.mark.parametrize("length", [98, 107])
def test_an_admin_socket_path_trissh_cannot_bind_is_refused_at_check(length: int) -> None:
    """The socket is bound under a temporary name 10 bytes longer, then renamed: a path of
    98 to 107 bytes passed check-config and failed at the start (reviewer)."""
    path = "/" + "a" * (length - 1)
    with pytest.raises(ConfigError, match="97 bytes"):
        load_config(None, {"admin.socket": path})
    assert load_config(None, {"admin.socket": "/" + "a" * 96}).admin.socket


@pytest.mark.parametrize("key", ["session.client_alive_interval", "ssh.rekey_interval"])
def test_timers_are_off_or_at_least_a_second(key: str) -> None:
    """As sshd's whole seconds: 0.001 was taken, and one idle connection then cost a
    quarter of a core in keepalives (cfg reviewer)."""
    for ok in (0, 1, 2.5):
        load_config(None, {key: ok})
    with pytest.raises(ConfigError, match=key.split(".")[1]):
        load_config(None, {key: 0.001})
