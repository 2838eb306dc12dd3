"""Algorithm lists: validated at start-up with the unknown name and the valid choices, both
in ``ProtocolConfig`` and in the operator's ``[ssh]`` TOML section."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.sshpeer import make_config
from trissh.config import ConfigError, ServerConfig, load_config
from trissh.protocol.config import (
    DEFAULT_CIPHERS,
    DEFAULT_KEX,
    DEFAULT_MACS,
    POST_QUANTUM_KEX,
)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("kex_algorithms", ("diffie-hellman-group14-sha1",), "unknown kex algorithm"),
        ("ciphers", ("aes128-cbc",), "unknown cipher 'aes128-cbc'; choose from: chacha20"),
        ("ciphers", ("none",), "unknown cipher 'none'"),
        ("macs", ("hmac-sha1",), "unknown MAC 'hmac-sha1'; choose from: hmac-sha2-256-etm"),
        ("host_key_algorithms", ("ssh-rsa",), "unknown host key algorithm 'ssh-rsa'"),
        ("kex_algorithms", (), "at least one kex algorithm"),
        ("ciphers", ("aes128-ctr", "aes128-ctr"), "listed twice"),
    ],
)
def test_protocol_config_names_the_problem(
    option: str, value: tuple[str, ...], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        make_config(**{option: value})  # type: ignore[arg-type]


def test_ctr_ciphers_need_a_mac() -> None:
    with pytest.raises(ValueError, match="need a MAC"):
        make_config(ciphers=("aes256-ctr",), macs=())
    make_config(ciphers=("aes256-gcm@openssh.com",), macs=())


def test_defaults() -> None:
    """Post-quantum first, SHA-1/CBC/none absent, encrypt-then-MAC only."""
    config = make_config()
    assert config.kex_algorithms == DEFAULT_KEX
    assert config.ciphers == DEFAULT_CIPHERS
    assert (
        config.macs
        == DEFAULT_MACS
        == (
            "hmac-sha2-256-etm@openssh.com",
            "hmac-sha2-512-etm@openssh.com",
        )
    )
    assert set(POST_QUANTUM_KEX) <= set(DEFAULT_KEX)
    assert config.rekey_bytes == 1 << 30


def _load(tmp_path: Path, text: str) -> ServerConfig:
    path = tmp_path / "trissh.toml"
    path.write_text(text)
    return load_config(path, {})


def test_ssh_section_maps_to_protocol_options(tmp_path: Path) -> None:
    settings = _load(
        tmp_path,
        '[ssh]\nkex = ["curve25519-sha256"]\nmacs = ["hmac-sha2-512"]\n'
        "rekey_bytes = 1048576\nrekey_interval = 600\n",
    )
    ssh = settings.ssh
    assert ssh.rekey_interval == 600
    assert ssh.protocol_options() == {
        "rekey_bytes": 1 << 20,
        "kex_algorithms": ("curve25519-sha256",),
        "macs": ("hmac-sha2-512",),
    }
    config = make_config(**ssh.protocol_options())
    assert config.kex_algorithms == ("curve25519-sha256",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('kex = ["curve25519-sha256", "diffie-hellman-group1-sha1"]', "ssh.kex: unknown kex"),
        ('ciphers = ["3des-cbc"]', "ssh.ciphers: unknown cipher '3des-cbc'; choose from"),
        ('macs = ["umac-64@openssh.com"]', "ssh.macs: unknown MAC"),
        ('host_key_algorithms = ["ssh-dss"]', "ssh.host_key_algorithms: unknown host key"),
        ("rekey_bytes = 10", "ssh.rekey_bytes"),
        ("zlib = true", "ssh.zlib"),
    ],
)
def test_ssh_section_errors_name_the_key_and_choices(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        _load(tmp_path, f"[ssh]\n{text}\n")
