"""Run the backend conformance suite (``conformance.py``) against every backend."""

from __future__ import annotations

from .conformance import BackendConformance
from .conformance_forwarding import ForwardingConformance
from .conformance_keeping import KeepingConformance


class TestBackendConformance(BackendConformance, ForwardingConformance, KeepingConformance):
    """Collected once per ``harness`` param: memory always, podman under the marker."""
