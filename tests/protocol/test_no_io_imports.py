"""The sans-IO boundary (ARCHITECTURE.md §2.1, §3.1): trissh/protocol imports no I/O,
clock, logging or hidden-randomness modules, and nothing from trissh outside itself.

One exception, decided here: ``config.py`` may ``import os`` solely to name ``os.urandom``
as the default of ``ProtocolConfig.rng``. Every use of the name ``os`` there must be the
attribute ``os.urandom``, never called: the core draws randomness only through ``rng``.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import trissh.protocol

PACKAGE = Path(trissh.protocol.__file__).parent
FILES = sorted(PACKAGE.rglob("*.py"))

#: Top-level modules the core must never import (I/O, clocks, logging, concurrency,
#: randomness that bypasses ``ProtocolConfig.rng``, dynamic import).
FORBIDDEN = frozenset(
    {
        "trio",
        "structlog",
        "podman",
        "socket",
        "time",
        "asyncio",
        "os",
        "logging",
        "subprocess",
        "threading",
        "selectors",
        "select",
        "ssl",
        "signal",
        "random",
        "secrets",
        "importlib",
        "pathlib",
        "shutil",
    }
)
OS_EXCEPTION_FILE = PACKAGE / "config.py"
THIRD_PARTY_ALLOWED = frozenset({"cryptography", "trissh"})


def _imports(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, fully qualified module) for every import, including ones inside functions."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against trissh.protocol
                found.append((node.lineno, "trissh.protocol." + (node.module or "")))
            else:
                module = node.module or ""
                found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
                found.append((node.lineno, module))
    return found


def _os_import_is_the_allowed_one(tree: ast.Module, path: Path) -> bool:
    """Only ``import os`` (unaliased) in config.py, used only as ``os.urandom``, uncalled."""
    if path != OS_EXCEPTION_FILE:
        return False
    os_imports = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        and any(
            (alias.name if isinstance(node, ast.Import) else node.module or "").split(".")[0]
            == "os"
            for alias in node.names
        )
    ]
    if len(os_imports) != 1:
        return False
    [node] = os_imports
    if not isinstance(node, ast.Import) or [(a.name, a.asname) for a in node.names] != [
        ("os", None)
    ]:
        return False
    parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
    uses = [n for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id == "os"]
    for use in uses:
        attribute = parents.get(use)
        if not (isinstance(attribute, ast.Attribute) and attribute.attr == "urandom"):
            return False
        call = parents.get(attribute)
        if isinstance(call, ast.Call) and call.func is attribute:
            return False
    return bool(uses)


def _rel(path: Path) -> str:
    return str(path.relative_to(PACKAGE.parent.parent))


def test_the_walk_sees_every_module() -> None:
    """Guard against an empty or wrong glob making the other tests vacuous."""
    names = {p.name for p in FILES}
    assert {"connection.py", "transport.py", "config.py"} <= names
    assert any(p.parent.name == "messages" for p in FILES)


@pytest.mark.parametrize("path", FILES, ids=_rel)
def test_no_io_or_hidden_input_imports(path: Path) -> None:
    """No forbidden top-level module is imported anywhere in the file."""
    tree = ast.parse(path.read_text(), str(path))
    offending = [
        f"{_rel(path)}:{line}: {module}"
        for line, module in _imports(tree)
        if module.split(".")[0] in FORBIDDEN
        and not (module == "os" and _os_import_is_the_allowed_one(tree, path))
    ]
    assert offending == []


@pytest.mark.parametrize("path", FILES, ids=_rel)
def test_no_trissh_imports_outside_the_protocol_package(path: Path) -> None:
    """trissh.backend, the connection driver and every other trissh module stay out of the core."""
    tree = ast.parse(path.read_text(), str(path))
    offending = [
        f"{_rel(path)}:{line}: {module}"
        for line, module in _imports(tree)
        if module.split(".")[0] == "trissh"
        and module != "trissh"  # the "from trissh import x" base entry; x is listed too
        and not module.startswith("trissh.protocol")
    ]
    assert offending == []


@pytest.mark.parametrize("path", FILES, ids=_rel)
def test_only_stdlib_and_cryptography(path: Path) -> None:
    """Third-party code in the core is limited to ``cryptography``."""
    tree = ast.parse(path.read_text(), str(path))
    offending = [
        f"{_rel(path)}:{line}: {module}"
        for line, module in _imports(tree)
        if module
        and module.split(".")[0] not in sys.stdlib_module_names
        and module.split(".")[0] not in THIRD_PARTY_ALLOWED
    ]
    assert offending == []


@pytest.mark.parametrize("path", FILES, ids=_rel)
def test_no_dynamic_imports(path: Path) -> None:
    """``__import__(...)`` would get around the checks above."""
    tree = ast.parse(path.read_text(), str(path))
    calls = [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in ("__import__", "eval", "exec")
    ]
    assert calls == []


@pytest.mark.parametrize(
    ("source", "allowed"),
    [
        ("import os\nrng = os.urandom\n", True),
        ("import os\nrng = os.urandom\nos.getpid()\n", False),
        ("import os\nkey = os.urandom(32)\n", False),
        ("import os as o\nrng = o.urandom\n", False),
        ("from os import urandom\nrng = urandom\n", False),
        ("import os.path\nrng = os.urandom\n", False),
        ("import os\n", False),
    ],
)
def test_os_exception_is_exactly_os_urandom_uncalled(source: str, allowed: bool) -> None:
    """The config.py exception accepts the one sanctioned form and nothing else."""
    tree = ast.parse(source)
    assert _os_import_is_the_allowed_one(tree, OS_EXCEPTION_FILE) is allowed
    assert not _os_import_is_the_allowed_one(tree, PACKAGE / "transport.py")
