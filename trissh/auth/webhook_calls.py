"""How AuthPolicy asks the webhooks: a client from its section, an answer or ``None``, and
an answer as a decision.

A webhook that gives no answer (down, slow, HTTP errors, an invalid body) refuses what it
was asked about, as sshd treats a failing AuthorizedKeysCommand: the client may go on with
another key or method, and the operator reads one line naming the endpoint.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

import structlog

from trissh.auth.decisions import Decision, Grant
from trissh.auth.webhook import (
    AuthResponse,
    KeyboardInteractiveResponse,
    WebhookClient,
    WebhookError,
)
from trissh.config import WebhookSection

__all__ = ["webhook_answer", "webhook_client", "webhook_decision"]

log = structlog.get_logger("trissh.auth")

_AnswerT = TypeVar("_AnswerT")


async def webhook_answer(question: Awaitable[_AnswerT], endpoint: str) -> _AnswerT | None:
    """The auth webhook's answer, or ``None`` when it gave none (logged here, once)."""
    try:
        return await question
    except WebhookError as exc:
        log.warning("auth_webhook_failed", endpoint=endpoint, error=str(exc))
        return None


def webhook_decision(
    response: AuthResponse | KeyboardInteractiveResponse | None, what: str
) -> Decision:
    """A webhook's answer as a decision; its metadata joins the login's (whose environment
    and files reach the sessions once the login completes: ``metadata_grant``)."""
    if response is None:
        return Decision(False, f"{what}: the auth webhook did not answer")
    if not response.success:
        return Decision(False, f"{what} rejected by the auth webhook")
    grant = Grant(username=response.authenticated_username)
    return Decision(True, grant=grant, log={"via": "webhook"}, metadata=response.metadata)


def webhook_client(section: WebhookSection) -> WebhookClient:
    return WebhookClient(
        section.url,
        timeout=section.timeout,
        retries=section.retries,
        auth_timeout=section.auth_timeout,
        retry_interval=section.retry_interval,
        ca_file=str(section.ca_file) if section.ca_file else None,
        client_cert=str(section.client_cert) if section.client_cert else None,
        client_key=str(section.client_key) if section.client_key else None,
    )
