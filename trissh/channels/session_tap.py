"""SessionTap: where a session's stdio goes besides its channel (its recording, its live
view for operators)."""

from __future__ import annotations

from trissh.admin.live import LiveSession
from trissh.backend import TerminalSize as BackendTerminalSize
from trissh.ops.recording import SessionRecording


class SessionTap:
    """Where a session's stdio is copied besides the channel: its recording, if any, and
    its live view for operators (admin/live.py).

    Recording calls are synchronous and never raise (recording.py); the buffered bytes
    are written from a worker thread whenever due (``flush_now_and_then``, which the pumps
    await), so a slow disk never stalls the event loop.
    The live view never waits either: a watcher that falls behind is dropped.
    """

    def __init__(self, recording: SessionRecording | None, live: LiveSession | None) -> None:
        self._recording = recording
        self._live = live
        if recording is not None:
            recording.defer_writes()

    def stdin(self, data: bytes | bytearray) -> None:
        if self._recording is not None:
            self._recording.stdin(bytes(data))
        if self._live is not None:
            self._live.input(data)

    def stdout(self, data: bytes | bytearray) -> None:
        if self._recording is not None:
            self._recording.stdout(bytes(data))
        if self._live is not None:
            self._live.output(data)

    def stderr(self, data: bytes | bytearray) -> None:
        if self._recording is not None:
            self._recording.stderr(bytes(data))
        if self._live is not None:
            self._live.output(data)

    def resize(self, size: BackendTerminalSize) -> None:
        if self._recording is not None:
            self._recording.resize(size.columns, size.rows)
        if self._live is not None:
            self._live.resize(size.columns, size.rows)

    def attached(self, container_id: str) -> None:
        if self._live is not None:
            self._live.container = container_id

    async def flush_now_and_then(self) -> None:
        if self._recording is not None and self._recording.due:
            await self._recording.flush()

    def close(self, code: int | None, signal: str | None) -> None:
        if self._recording is not None:
            self._recording.close(code, signal=signal)
        if self._live is not None:
            self._live.end()
