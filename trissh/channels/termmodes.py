"""Terminal modes from ``pty-req`` (RFC 4254 §8) turned into ``stty`` arguments.

The container's pty is created by podman, so sshd's way (tcsetattr on the pty master)
is not available; instead a pty session starts with ``stty <modes>`` in the container.
Every argument comes from the fixed tables below or is a number we formatted, so nothing
the client sends reaches the shell unquoted.

``stty`` checks all its arguments before it applies any, so one word it does not know
loses every setting. The tables leave out what GNU or busybox ``stty`` refuses on a pty
and Linux ignores there anyway (VDISCARD, PENDIN, character size and parity, all sent by
OpenSSH); :func:`stty_settings` keeps each setting's words together so that a caller can
fall back to one ``stty`` per setting where an image's ``stty`` refuses another word.
"""

from __future__ import annotations

import struct

#: Control characters (opcode -> stty name).
_CHARACTERS = {
    1: "intr", 2: "quit", 3: "erase", 4: "kill", 5: "eof", 6: "eol", 7: "eol2", 8: "start",
    9: "stop", 10: "susp", 12: "rprnt", 13: "werase", 14: "lnext",
}  # fmt: skip
#: Boolean flags (opcode -> stty name).
_FLAGS = {
    30: "ignpar", 31: "parmrk", 32: "inpck", 33: "istrip", 34: "inlcr", 35: "igncr",
    36: "icrnl", 37: "iuclc", 38: "ixon", 39: "ixany", 40: "ixoff", 41: "imaxbel", 42: "iutf8",
    50: "isig", 51: "icanon", 52: "xcase", 53: "echo", 54: "echoe", 55: "echok", 56: "echonl",
    57: "noflsh", 58: "tostop", 59: "iexten", 60: "echoctl", 61: "echoke",
    70: "opost", 71: "olcuc", 72: "onlcr", 73: "ocrnl", 74: "onocr", 75: "onlret",
}  # fmt: skip
_TTY_OP_END = 0
#: Opcodes 1..159 carry a uint32; 160 and above are undefined and end parsing (RFC 4254 §8).
_LAST_DEFINED = 159
#: POSIX's "disabled" control character value.
_VDISABLE = 255


def _character(value: int) -> str:
    if value == _VDISABLE:
        return "undef"
    if value == 127:
        return "^?"
    if value < 32:
        return "^" + chr(value + 64)
    if 32 < value < 127:
        return chr(value)
    return "undef"


def stty_settings(modes: bytes) -> list[tuple[str, ...]]:
    """The ``stty`` arguments for encoded terminal modes, one tuple per setting
    (``("intr", "^C")``, ``("-echo",)``); unknown opcodes are skipped."""
    settings: list[tuple[str, ...]] = []
    offset = 0
    while offset < len(modes):
        opcode = modes[offset]
        if opcode == _TTY_OP_END or opcode > _LAST_DEFINED or offset + 5 > len(modes):
            break
        (value,) = struct.unpack_from(">I", modes, offset + 1)
        offset += 5
        if opcode in _CHARACTERS:
            settings.append((_CHARACTERS[opcode], _character(value)))
        elif opcode in _FLAGS:
            settings.append((_FLAGS[opcode] if value else "-" + _FLAGS[opcode],))
    return settings
