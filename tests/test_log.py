"""The log lines operators feed to their pipelines: one JSON object per line, nothing secret."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Callable, Iterator

import pytest
import structlog

from trissh.ops.log import configure_logging, set_log_level


@pytest.fixture(autouse=True)
def _restore_test_logging() -> Iterator[None]:
    """Put the suite's configuration back as it was, down to the processor list object:
    loggers cached before this test hold it, and ``capture_logs`` edits it in place."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def _captured(has_buffer: bool) -> tuple[io.TextIOBase, Callable[[], str]]:
    """A stderr with a byte buffer (as the real one) or a text-only one, and its text."""
    if not has_buffer:
        text = io.StringIO()
        return text, text.getvalue
    raw = io.BytesIO()
    wrapper = io.TextIOWrapper(raw, encoding="utf-8", write_through=True)
    return wrapper, lambda: raw.getvalue().decode()


@pytest.mark.parametrize("has_buffer", [True, False], ids=["byte-stderr", "text-only-stderr"])
def test_json_lines(monkeypatch: pytest.MonkeyPatch, has_buffer: bool) -> None:
    stderr, written = _captured(has_buffer)
    monkeypatch.setattr(sys, "stderr", stderr)
    configure_logging("json", "info")
    log = structlog.get_logger("test")
    with structlog.contextvars.bound_contextvars(conn_id="c0ffee", user="alice"):
        log.debug("too_detailed")
        log.info("auth_succeeded", method="password", password="hunter2", peer=object())
        log.warning("protocol_error", description='bad \u00e9 "quote"\n')
    text = written()
    assert text.endswith("\n")
    first, second = (json.loads(line) for line in text.splitlines())
    assert first["event"] == "auth_succeeded"
    assert first["level"] == "info"
    assert first["conn_id"] == "c0ffee"
    assert first["user"] == "alice"
    assert first["password"] == "[redacted]"
    assert str(first["peer"]).startswith("<object object at")  # unserializable: its repr
    assert str(first["timestamp"]).endswith("Z")
    assert second["event"] == "protocol_error"
    assert second["description"] == 'bad \u00e9 "quote"\n'


def test_a_reload_changes_the_level_of_loggers_already_in_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Module loggers are cached on first use; SIGHUP's ``set_log_level`` must still reach
    them (turning debug on for a while without a restart, or the noise down)."""
    stderr, written = _captured(True)
    monkeypatch.setattr(sys, "stderr", stderr)
    configure_logging("json", "info")
    log = structlog.get_logger("trissh")
    log.info("first")  # cached from here on
    log.debug("hidden")
    set_log_level("debug")
    log.debug("shown")
    set_log_level("error")
    log.warning("quiet")
    log.error("loud")
    events = [json.loads(line)["event"] for line in written().splitlines()]
    assert events == ["first", "shown", "loud"]


def test_the_console_shows_a_clients_control_characters_as_escapes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`--log-format console` on an operator's terminal: a method name a client sent with
    ESC sequences (window title, clear screen) is printed escaped, not obeyed."""
    stderr, written = _captured(has_buffer=False)
    monkeypatch.setattr(sys, "stderr", stderr)
    configure_logging("console", "info")
    log = structlog.get_logger("test")
    log.info("auth_failed", method="\x1b]0;owned\x07\x1b[2J", user="a")
    try:
        raise ValueError("bad name \x1b[2J")
    except ValueError:
        log.exception("session_crashed")
    text = written()
    assert "\x1b" not in text
    assert "\\x1b]0;owned\\x07\\x1b[2J" in text
    assert "ValueError: bad name \\x1b[2J\n" in text  # a traceback keeps its lines
