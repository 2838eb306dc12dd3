"""Forwarding's metrics (``ssh -L/-D/-W/-R/-A``), registered beside the others."""

from __future__ import annotations

from typing import final

from prometheus_client import CollectorRegistry, Counter, Gauge

#: The kinds a label may take; anything else would be a bug, not a client's choice.
KINDS = ("direct-tcpip", "direct-streamlocal", "forwarded-tcpip", "forwarded-streamlocal", "agent")
#: Why a forward failed or was refused, as labels (bounded, never the client's text).
REASONS = (
    "prohibited", "limit", "refused", "unreachable", "unknown_host", "timeout",
    "unsupported", "container", "client_refused", "failed",
)  # fmt: skip


@final
class ForwardMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.active = Gauge(
            "trissh_forwards_active", "Forwarded connections open now, by kind.", ["kind"],
            registry=registry,
        )  # fmt: skip
        self.bytes_total = Counter(
            "trissh_forward_bytes_total",
            "Bytes through forwarded connections: out (to the client), in (from it).",
            ["direction"],
            registry=registry,
        )
        self.failures_total = Counter(
            "trissh_forward_failures_total",
            "Forwards and listeners refused or failed, by reason.",
            ["reason"],
            registry=registry,
        )
        self.listeners_active = Gauge(
            "trissh_forward_listeners_active",
            "Listeners inside containers for ssh -R and agent forwarding.",
            registry=registry,
        )
        for kind in KINDS:
            self.active.labels(kind=kind)
        for direction in ("in", "out"):
            self.bytes_total.labels(direction=direction)

    def opened(self, kind: str) -> None:
        self.active.labels(kind=kind if kind in KINDS else "direct-tcpip").inc()

    def moved(self, bytes_in: int, bytes_out: int) -> None:
        """Bytes a forward carried since its last report (while it runs, and at its end)."""
        self.bytes_total.labels(direction="in").inc(bytes_in)
        self.bytes_total.labels(direction="out").inc(bytes_out)

    def closed(self, kind: str) -> None:
        self.active.labels(kind=kind if kind in KINDS else "direct-tcpip").dec()

    def failed(self, reason: str) -> None:
        self.failures_total.labels(reason=reason if reason in REASONS else "failed").inc()
