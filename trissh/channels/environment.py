"""The environment sshd gives every program, computed for a session in a container.

sshd sets ``USER``, ``LOGNAME``, ``HOME``, ``SHELL``, ``SSH_CONNECTION``, ``SSH_CLIENT`` and,
with a terminal, ``SSH_TTY``; ``SSH_ORIGINAL_COMMAND`` where a forced command replaced the
client's. Programs rely on them: prompts and git's identity (``USER``), rsync and git
over ssh in the other direction (``SSH_CONNECTION``), tmux and screen (``SSH_TTY``).

The layers, later winning: what the client sent (``accept_env``), the login's identity
(``USER``, ``LOGNAME``, ``SHELL``, and ``HOME`` when trissh knows it), what authentication
granted (authorized_keys ``environment=``, webhook answers), then the connection's own
facts (``SSH_*``), which nobody may forge. ``HOME`` is otherwise the container's: podman
sets it from the image's passwd entry of the container's user, so an image's ``/root`` or
``/home/app`` is right without trissh guessing.

``SSH_TTY`` is only known inside the container, once the terminal exists: a pty session
starts through the shell (:func:`program_argv`), which exports ``$(tty)`` and applies
the client's terminal modes before it ``exec``s the program.

Like sshd, programs start in the home directory (``cd ~``, which is ``$HOME``) unless the
operator set ``[container] workdir``: rsync, scp and sftp paths without a leading ``/``
are relative to it. An ``exec`` command gets the ``cd`` in front of its own shell's
command line (no extra process); other programs are started through the shell. That set-up
is sh: a configured shell that does not read sh (rbash's jail, git-shell, fish, tcsh)
gets it from ``/bin/sh``, which then ``exec``s the program, so the client's command
reaches that shell as sshd passes it.
"""

from __future__ import annotations

import posixpath
import shlex
from collections.abc import Mapping, Sequence
from typing import Final

from trissh.addresses import host_of, port_of
from trissh.channels.termmodes import stty_settings


def connection_environment(remote: str, local: str) -> dict[str, str]:
    """``SSH_CONNECTION`` and ``SSH_CLIENT`` from ``HOST:PORT`` addresses (IPv6 in brackets);
    empty when the client's address is not known."""
    if not remote or ":" not in remote:
        return {}
    client, client_port = host_of(remote), port_of(remote)
    server = host_of(local) if local and ":" in local else "0.0.0.0"  # noqa: S104 - a label
    server_port = port_of(local) if local else "0"
    return {
        "SSH_CONNECTION": f"{client} {client_port} {server} {server_port}",
        "SSH_CLIENT": f"{client} {client_port} {server_port}",
    }


def session_environment(
    *,
    username: str,
    shell: str,
    home: str | None,
    client: Mapping[str, str],
    granted: Mapping[str, str],
    remote: str,
    local: str,
    original_command: str | None = None,
) -> dict[str, str]:
    """A session program's environment, in the order the module docstring gives."""
    identity = {"USER": username, "LOGNAME": username, "SHELL": shell}
    if home:
        identity["HOME"] = home
    env = {**client, **identity, **granted, **connection_environment(remote, local)}
    if original_command is not None:
        env["SSH_ORIGINAL_COMMAND"] = original_command
    return env


#: How a program moves to its home directory first (sshd's chdir to the user's home).
GO_HOME = "cd ~ 2>/dev/null"
#: Shells that read sh's language, by name: the set-up runs in the configured shell itself.
_READS_SH: Final = frozenset({"sh", "bash", "dash", "ash", "ksh", "mksh", "pdksh", "zsh", "yash"})
#: Where the set-up runs for any other shell.
SETUP_SHELL: Final = "/bin/sh"


def _stty_command(settings: list[tuple[str, ...]]) -> str:
    """All settings in one ``stty``; if that ``stty`` refuses any word (it then applies
    none), each setting on its own, so one unknown name costs only itself."""

    def stty(words: tuple[str, ...]) -> str:
        return " ".join(shlex.quote(word) for word in ("stty", *words))

    each = "; ".join(stty(setting) for setting in settings)
    every = tuple(word for setting in settings for word in setting)
    return f"{{ {stty(every)} || {{ {each}; }}; }} 2>/dev/null"


def program_argv(
    shell: Sequence[str], argv: Sequence[str], *, modes: bytes | None, home: bool
) -> list[str]:
    """``argv`` as it starts: with a terminal (``modes`` not None), ``SSH_TTY`` exported
    (``tty``'s answer) and the client's terminal modes applied with ``stty``; with
    ``home``, in the home directory; then ``exec``. Every word is quoted or ours."""
    parts = []
    if modes is not None:
        parts.append("SSH_TTY=$(tty) && export SSH_TTY")
    if home:
        parts.append(GO_HOME)
    settings = stty_settings(modes or b"")
    if settings:
        parts.append(_stty_command(settings))
    if not parts:
        return list(argv)
    reads_sh = posixpath.basename(shell[0]) in _READS_SH
    own = len(shell) + 2
    if reads_sh and modes is None and len(argv) == own and list(argv[: own - 1]) == [*shell, "-c"]:
        return [*argv[:-1], "; ".join([*parts, argv[-1]])]  # the command's own shell
    parts.append("exec " + " ".join(shlex.quote(item) for item in argv))
    return [shell[0] if reads_sh else SETUP_SHELL, "-c", "; ".join(parts)]
