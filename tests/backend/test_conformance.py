"""Run the backend conformance suite (``conformance.py``) against every backend."""

from __future__ import annotations

from .conformance import BackendConformance


class TestBackendConformance(BackendConformance):
    """Collected once per ``harness`` param: memory always, podman under the marker."""
