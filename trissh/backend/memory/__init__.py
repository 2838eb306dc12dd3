"""The in-memory backend: a fake of the backend contract for fast tests and benchmarks.

:mod:`.backend` has the sandboxes and processes, :mod:`.shell` the tiny shell their
programs run in. Never configured for a server: constructed in code, like httpcore's
MockBackend.
"""

from trissh.backend.memory.backend import MemoryBackend, MemoryProcess, MemorySandbox

__all__ = ["MemoryBackend", "MemoryProcess", "MemorySandbox"]
