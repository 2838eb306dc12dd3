"""Terminal modes (RFC 4254 §8) to stty arguments."""

from __future__ import annotations

import os
import shlex
import shutil
import struct
import subprocess

import pytest

from trissh.channels.environment import program_argv
from trissh.channels.termmodes import stty_settings

from .support import needs


def stty_arguments(modes: bytes) -> list[str]:
    return [word for setting in stty_settings(modes) for word in setting]


def encode(*pairs: tuple[int, int]) -> bytes:
    return b"".join(struct.pack(">BI", op, value) for op, value in pairs) + b"\x00"


def test_typical_openssh_modes() -> None:
    """Control characters in caret notation, flags on and off, speeds ignored."""
    modes = encode((1, 3), (3, 127), (4, 21), (53, 1), (36, 0), (128, 38400), (129, 38400))
    assert stty_arguments(modes) == ["intr", "^C", "erase", "^?", "kill", "^U", "echo", "-icrnl"]


def test_disabled_and_printable_characters() -> None:
    assert stty_arguments(encode((2, 255), (5, ord("q")))) == ["quit", "undef", "eof", "q"]


def test_parsing_stops_at_end_undefined_opcodes_and_truncation() -> None:
    """TTY_OP_END, an opcode >= 160, or a truncated argument end the list without error."""
    assert stty_arguments(encode((53, 1)) + struct.pack(">BI", 53, 0)) == ["echo"]
    assert stty_arguments(struct.pack(">BI", 200, 1) + struct.pack(">BI", 53, 1)) == []
    assert stty_arguments(struct.pack(">BI", 53, 1) + b"\x35\x00") == ["echo"]
    assert stty_arguments(b"") == []


def test_unknown_defined_opcodes_are_skipped() -> None:
    assert stty_arguments(encode((11, 25), (53, 0))) == ["-echo"]


#: Every opcode OpenSSH's client sends (its ttymodes.h), VDSUSP..VSTATUS included.
OPENSSH_OPCODES = (*range(1, 19), *range(30, 43), *range(50, 63), *range(70, 76), 90, 91, 92, 93)


@needs("stty")
@pytest.mark.parametrize("value", [0, 1, 3])
def test_a_real_stty_on_a_pty_takes_every_setting_openssh_sends(value: int) -> None:
    """``stty`` refuses all its arguments for one it does not take, so the client's whole
    terminal set-up was lost: GNU stty refuses ``-pendin`` and (on a pty) ``-cs8``."""
    words = stty_arguments(encode(*((op, value) for op in OPENSSH_OPCODES)))
    assert "intr" in words
    assert "echo" in words or "-echo" in words
    controller, terminal = os.openpty()
    try:
        done = subprocess.run(
            [shutil.which("stty") or "stty", *words],
            stdin=terminal,
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        os.close(controller)
        os.close(terminal)
    assert done.returncode == 0, done.stderr


def test_each_setting_again_on_its_own_when_stty_refuses_a_word() -> None:
    """An image whose stty lacks one name still gets every other setting."""
    wrapped = program_argv(["/bin/sh"], ["/bin/sh"], modes=encode((1, 3), (53, 0)), home=False)
    assert "{ stty intr '^C' -echo || { stty intr '^C'; stty -echo; }; } 2>/dev/null" in wrapped[2]


def test_command_is_quoted_and_execs_the_program() -> None:
    """SSH_TTY exported, stty applied, then the original argv exec'd, each word quoted."""
    argv = ["/bin/sh", "-c", "echo 'it''s'; rm -rf $HOME"]
    wrapped = program_argv(["/bin/sh"], argv, modes=encode((53, 0)), home=False)
    assert wrapped[:2] == ["/bin/sh", "-c"]
    assert wrapped[2].startswith(
        "SSH_TTY=$(tty) && export SSH_TTY; { stty -echo || { stty -echo; }; } 2>/dev/null; "
        "exec /bin/sh -c "
    )
    assert "'echo '\"'\"'it'\"'\"''\"'\"'s'\"'\"'; rm -rf $HOME'" in wrapped[2]


def test_no_modes_still_names_the_terminal() -> None:
    wrapped = program_argv(["/bin/sh"], ["/bin/sh", "-l"], modes=b"\x00", home=False)
    assert wrapped == ["/bin/sh", "-c", "SSH_TTY=$(tty) && export SSH_TTY; exec /bin/sh -l"]


def test_home_first_rides_on_an_exec_s_own_shell() -> None:
    """An exec command's shell does the `cd` itself; other programs go through the shell;
    with a terminal the `cd` comes after SSH_TTY; without either, argv is left alone."""
    shell = ["/bin/bash", "--noprofile"]
    command = [*shell, "-c", "ls -la"]
    assert program_argv(shell, command, modes=None, home=True) == [
        "/bin/bash", "--noprofile", "-c", "cd ~ 2>/dev/null; ls -la"
    ]  # fmt: skip
    assert program_argv(shell, ["/usr/lib/sftp-server"], modes=None, home=True) == [
        "/bin/bash", "-c", "cd ~ 2>/dev/null; exec /usr/lib/sftp-server"
    ]  # fmt: skip
    assert program_argv(shell, command, modes=b"", home=True)[2].startswith(
        "SSH_TTY=$(tty) && export SSH_TTY; cd ~ 2>/dev/null; exec /bin/bash --noprofile -c "
    )
    assert program_argv(shell, command, modes=None, home=False) == command


def test_a_shell_that_does_not_read_sh_gets_its_set_up_from_bin_sh() -> None:
    """rbash, git-shell, fish, tcsh: trissh's set-up is sh, so /bin/sh runs it and then
    execs the program, whose own shell gets the client's command untouched."""
    for shell in (["/bin/rbash"], ["/usr/bin/git-shell"], ["/usr/bin/fish", "-l"]):
        command = [*shell, "-c", "git-upload-pack 'repo'"]
        wrapped = program_argv(shell, command, modes=None, home=True)
        quoted = " ".join(shlex.quote(word) for word in command)
        assert wrapped == ["/bin/sh", "-c", f"cd ~ 2>/dev/null; exec {quoted}"]
        terminal = program_argv(shell, [shell[0]], modes=b"", home=True)
        assert terminal[:2] == ["/bin/sh", "-c"]
        assert terminal[2].endswith(f"; exec {shell[0]}")
