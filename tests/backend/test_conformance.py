"""Run the backend conformance suite (``conformance.py``) against every backend."""

from __future__ import annotations

from .conformance import BackendConformance
from .conformance_forwarding import ForwardingConformance


class TestBackendConformance(BackendConformance, ForwardingConformance):
    """Collected once per ``harness`` param: memory always, podman under the marker."""
