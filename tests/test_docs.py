"""The docs name what the code does: every log event in docs/logging.md."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parents[1]
LEVELS = {"debug", "info", "warning", "error", "exception"}


def logged_events() -> set[str]:
    """Names of every ``log.<level>("event", ...)`` in trissh/."""
    events = set()
    for path in (ROOT / "trissh").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            func = node.func
            is_log = (
                isinstance(func, ast.Attribute)
                and isinstance(func.value, ast.Name)
                and func.value.id == "log"
                and func.attr in LEVELS
            ) or isinstance(func, ast.IfExp)  # (log.debug if ... else log.warning)(...)
            first = node.args[0]
            if is_log and isinstance(first, ast.Constant) and isinstance(first.value, str):
                events.add(first.value)
    return events


def test_every_log_event_is_in_the_catalogue() -> None:
    catalogue = (ROOT / "docs" / "logging.md").read_text()
    undocumented = sorted(e for e in logged_events() if f"| `{e}` |" not in catalogue)
    assert undocumented == []


def test_the_catalogue_lists_no_event_that_is_gone() -> None:
    catalogue = (ROOT / "docs" / "logging.md").read_text()
    import re

    listed = set(re.findall(r"^\| `([a-z_]+)` \|", catalogue, re.MULTILINE))
    context_keys = {"conn_id", "remote", "client_version", "user", "channel", "container"}
    assert sorted(listed - logged_events() - context_keys) == []
