"""An interactive `ssh -tt` session in a container, driven through tmux like a person would."""

from __future__ import annotations

import secrets
import subprocess

import pytest
import trio

from ..support import ClientKey, RunningServer, needs, ssh_argv

pytestmark = [pytest.mark.podman, needs("ssh", "tmux")]


class Tmux:
    def __init__(self) -> None:
        self.socket = f"trissh-test-{secrets.token_hex(4)}"

    def __call__(self, *args: str) -> str:
        done = subprocess.run(
            ["tmux", "-L", self.socket, *args], capture_output=True, text=True, check=True
        )
        return done.stdout

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", "t")

    async def wait_for(self, text: str, timeout: float = 20) -> str:
        screen = ""
        with trio.move_on_after(timeout):
            while text not in (screen := self.screen()):
                await trio.sleep(0.1)
            return screen
        raise AssertionError(f"{text!r} did not appear; the screen shows:\n{screen}")

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, check=False)


async def test_interactive_shell_with_resize(
    podman_server: RunningServer, client_key: ClientKey
) -> None:
    """Prompt appears, typed commands run, `stty size` follows a resize, `exit` ends it."""
    tmux = Tmux()
    command = " ".join(
        [*ssh_argv(podman_server.port, client_key.path, "-tt"), "; echo SSH-DONE-$?; sleep 30"]
    )
    try:
        tmux("new-session", "-d", "-s", "t", "-x", "100", "-y", "30", command)
        await tmux.wait_for(" #")  # busybox ash prompt, root inside the user namespace
        tmux("send-keys", "-t", "t", "echo $TERM; stty size", "Enter")
        await tmux.wait_for("30 100")
        tmux("resize-window", "-t", "t", "-x", "120", "-y", "40")
        await trio.sleep(0.5)
        tmux("send-keys", "-t", "t", "stty size", "Enter")
        await tmux.wait_for("40 120")
        tmux("send-keys", "-t", "t", "exit 7", "Enter")
        screen = await tmux.wait_for("SSH-DONE-")
        assert "SSH-DONE-7" in screen
        assert "screen" in screen or "tmux" in screen  # TERM came through from the client
    finally:
        tmux.kill()


async def test_the_client_terminal_settings_reach_the_container(
    podman_server: RunningServer, client_key: ClientKey
) -> None:
    """OpenSSH sends every terminal mode (VDISCARD and PENDIN too); busybox's stty refused
    the whole set for one name, so the user's own interrupt and erase keys were lost."""
    tmux = Tmux()
    ssh = " ".join([*ssh_argv(podman_server.port, client_key.path, "-tt"), "'stty -a'"])
    command = f"stty intr '^X' erase '^H' -ixon; {ssh}; echo SSH-DONE-$?; sleep 30"
    try:
        tmux("new-session", "-d", "-s", "t", "-x", "200", "-y", "40", command)
        screen = await tmux.wait_for("SSH-DONE-")
        assert "SSH-DONE-0" in screen
        assert "intr = ^X" in screen, screen
        assert "erase = ^H" in screen, screen
        assert "-ixon" in screen.split(), screen
    finally:
        tmux.kill()
