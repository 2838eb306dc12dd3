"""What a connection tells the operator about its key exchanges and its login: one log line
and the metrics of each, and the login's outcome for the connection's channels.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from trissh.auth.names import escaped
from trissh.auth.policy import Grant
from trissh.config import ContainerSection, ForwardingSection, ServerConfig, SessionSection
from trissh.ops.metrics import Metrics
from trissh.protocol import AuthFailed, AuthPartiallySucceeded, KeyExchangeCompleted

log = structlog.get_logger("trissh.connection.handshake")


def kex_completed(event: KeyExchangeCompleted, metrics: Metrics, seconds: float) -> None:
    """``seconds``: since the connection was accepted (the first exchange's latency)."""
    algorithms = event.algorithms
    if not event.is_rekey:
        metrics.handshake_done(algorithms.kex, seconds)
    log.info(
        "kex_completed",
        rekey=event.is_rekey,
        kex=algorithms.kex,
        host_key=algorithms.host_key,
        cipher_in=algorithms.cipher_client_to_server,
        cipher_out=algorithms.cipher_server_to_client,
        strict_kex=algorithms.strict_kex,
    )


def auth_failed(event: AuthFailed, metrics: Metrics) -> None:
    metrics.auth_attempt(event.method, "failure")
    log.info(
        "auth_failed",
        user=escaped(event.username),  # whatever the client sent, the rule's verdict aside
        method=event.method,
        reason=event.reason,
        key_fingerprint=event.key_fingerprint,
    )


def auth_partially_succeeded(event: AuthPartiallySucceeded, metrics: Metrics) -> None:
    metrics.auth_attempt(event.method, "partial")
    log.info(
        "auth_partially_succeeded",
        user=escaped(event.username),
        method=event.method,
        remaining=list(event.remaining),
        key_fingerprint=event.key_fingerprint,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Login:
    """Who logged in, and the settings their channels run with."""

    username: str
    grant: Grant
    #: The server-wide ``[container]`` and ``[session]`` merged with the user's own.
    container: ContainerSection
    session: SessionSection
    #: ``[forwarding]`` merged with the user's own and the configuration server's answer.
    forwarding: ForwardingSection


def login_of(settings: ServerConfig, authenticated_as: str, grant: Grant) -> Login:
    # A webhook may have verified another name (ContainerSSH's authenticatedUsername):
    # that is who the containers, labels, limits and logs are for.
    username = grant.username or authenticated_as
    return Login(
        username=username,
        grant=grant,
        container=settings.with_container_overrides(username, grant.container),
        session=settings.session_for(username),
        forwarding=settings.with_forwarding_grant(username, grant.forwarding),
    )
