"""RFC 4716 public key blocks among OpenSSH lines: what ``ssh-keygen -e`` and PuTTYgen write
gives the same blob as the OpenSSH ``.pub`` line; problems name their line."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest

from trissh.protocol.keyfile import (
    BEGIN,
    END,
    KeyLine,
    KeyTextProblem,
    Rfc4716Key,
    iter_key_text,
)

from ..support import require_binary

SPECS = {
    "ed25519": ["-t", "ed25519"],
    "ecdsa256": ["-t", "ecdsa", "-b", "256"],
    "ecdsa521": ["-t", "ecdsa", "-b", "521"],
    "rsa": ["-t", "rsa", "-b", "4096"],
}


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_binary("ssh-keygen")
    directory = tmp_path_factory.mktemp("rfc4716")
    for name, spec in SPECS.items():
        subprocess.run(
            ["ssh-keygen", "-q", *spec, "-N", "", "-C", f"{name} key", "-f", str(directory / name)],
            check=True,
        )
    return directory


def exported(path: Path) -> str:
    return subprocess.run(
        ["ssh-keygen", "-e", "-f", str(path)], check=True, capture_output=True, text=True
    ).stdout


@pytest.mark.parametrize("name", list(SPECS))
def test_ssh_keygen_export_gives_the_openssh_blob(made: Path, name: str) -> None:
    text = exported(made / f"{name}.pub")
    [block] = iter_key_text(text)
    assert isinstance(block, Rfc4716Key)
    assert block.blob == base64.b64decode((made / f"{name}.pub").read_text().split()[1])
    assert block.line_number == 1
    assert "converted by" in block.comment or block.comment == f"{name} key"


def test_puttygen_export_with_wrapped_lines(made: Path) -> None:
    puttygen = require_binary("puttygen")
    text = subprocess.run(
        [puttygen, str(made / "rsa"), "-O", "public"], check=True, capture_output=True, text=True
    ).stdout
    assert text.count("\n") > 4  # the body really spans lines
    [block] = iter_key_text(text)
    assert isinstance(block, Rfc4716Key)
    assert block.blob == base64.b64decode((made / "rsa.pub").read_text().split()[1])
    assert block.comment == "rsa key"


def test_mixed_text_keeps_order_and_line_numbers() -> None:
    body = base64.b64encode(b"\x00\x00\x00\x0bssh-ed25519" + bytes(36)).decode()
    text = "\n".join(
        [
            "# a comment",
            "ssh-ed25519 AAAA first",
            "",
            f"  {BEGIN}  ",
            'Comment: "a long comment \\',
            'that continues"',
            "x-private: ignored",
            body[:20],
            body[20:],
            END,
            'restrict,command="x" ssh-ed25519 AAAA last',
        ]
    )
    items = list(iter_key_text(text))
    assert items == [
        KeyLine(2, "ssh-ed25519 AAAA first"),
        Rfc4716Key(
            4,
            base64.b64decode(body),
            (("Comment", '"a long comment that continues"'), ("x-private", "ignored")),
        ),
        KeyLine(11, 'restrict,command="x" ssh-ed25519 AAAA last'),
    ]
    block = items[1]
    assert isinstance(block, Rfc4716Key)
    assert block.comment == "a long comment that continues"


CONTINUED = "v\\\n"
HEADER = "h: v\n"


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        (f"x\n{BEGIN}\nAAAA\n", 2, "without an END line"),
        (f"{BEGIN}\nAAAA\n{BEGIN}\nAAAA\n{END}\n", 1, "without an END line"),
        (f"{BEGIN}\nComment: x\n{END}\n", 1, "without key data"),
        (f"{BEGIN}\nComment: x\nAA!A\n{END}\n", 3, "invalid base64"),
        (f"{BEGIN}\nAAAAé\n{END}\n", 2, "invalid base64"),
        (f"{BEGIN}\n{'t' * 65}: v\nAAAA\n{END}\n", 2, "malformed header tag"),
        (f"{BEGIN}\n: v\nAAAA\n{END}\n", 2, "malformed header tag"),
        (f"{BEGIN}\nComment: {'v' * 1025}\nAAAA\n{END}\n", 2, "header 'Comment' is too long"),
        (f"{BEGIN}\nComment: a\\\n{CONTINUED * 1100}b\nAAAA\n{END}\n", 2, "too long"),
        (f"{BEGIN}\n{HEADER * 65}AAAA\n{END}\n", 66, "more than 64 headers"),
        (f"{BEGIN}\n{'A' * 8196}\n{END}\n", 1, "key data is too long"),
    ],
)
def test_problems_name_their_line(text: str, line: int, problem: str) -> None:
    items = list(iter_key_text(text))
    problems = [item for item in items if isinstance(item, KeyTextProblem)]
    assert len(problems) == 1, items
    assert problems[0].line_number == line
    assert problem in problems[0].problem


def test_a_broken_block_does_not_hide_the_lines_after_it() -> None:
    text = f"{BEGIN}\n!!!\n{END}\nssh-ed25519 AAAA after\n"
    items = list(iter_key_text(text))
    assert isinstance(items[0], KeyTextProblem)
    assert items[1] == KeyLine(4, "ssh-ed25519 AAAA after")
