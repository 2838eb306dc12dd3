"""LoginConversation: one connection's authentication, between the core and the policy.

The core asks (decision events); the policy knows the answers; this class keeps what a
connection has passed so far, so multi-factor chains advance only when the core confirms a
method really succeeded (a signature is verified *after* our yes), and so the grants of
every passed method end up on the login. Failures wait a randomized delay first: guessing
gets slow, and timing says nothing about why.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import trio

from trissh.auth.policy import AuthPolicy, Decision, Grant, LoginRequest
from trissh.protocol import (
    Authenticated,
    AuthPartiallySucceeded,
    KeyboardInteractiveAuthRequested,
    KeyboardInteractiveResponsesReceived,
    PasswordAuthRequested,
    PublicKeyAuthRequested,
    ServerConnection,
)

DecisionEvent = (
    PublicKeyAuthRequested
    | PasswordAuthRequested
    | KeyboardInteractiveAuthRequested
    | KeyboardInteractiveResponsesReceived
)


class LoginConversation:
    def __init__(
        self,
        policy: AuthPolicy,
        conn: ServerConnection,
        request: Callable[[str], LoginRequest],
        *,
        rng: random.Random | None = None,
    ) -> None:
        self._policy = policy
        self._conn = conn
        self._request = request
        self._rng = rng or random.SystemRandom()
        #: Methods passed so far, in order (confirmed by the core).
        self.passed: list[str] = []
        self.grant = Grant()
        self._pending_grant: Grant | None = None

    async def decide(self, event: DecisionEvent) -> None:
        """Answer one decision event through the core's commands.

        Raises:
            TooManyAuthAttempts: the answer used up the client's attempts.
        """
        request = self._request(event.username)
        method = _method_of(event)
        if method not in self._policy.chains_for(event.username).next_methods(self.passed):
            self._conn.reject_auth(f"{method} not allowed at this point for this user")
            return
        match event:
            case PublicKeyAuthRequested():
                decision = await self._policy.publickey(request, event.public_key)
                await self._answer(event.username, decision, method, delay=event.signed)
            case PasswordAuthRequested():
                decision = await self._policy.password(request, event.password)
                await self._answer(event.username, decision, method)
            case KeyboardInteractiveAuthRequested():
                prompts = self._policy.prompts(request, self.passed)
                self._conn.send_auth_prompts("", "", prompts)
            case KeyboardInteractiveResponsesReceived():
                decision = await self._policy.answers(request, self.passed, event.responses)
                await self._answer(event.username, decision, method)

    async def _answer(
        self, username: str, decision: Decision, method: str, *, delay: bool = True
    ) -> None:
        if not decision.ok:
            if delay and self._policy.failure_delay:
                await trio.sleep(self._policy.failure_delay * self._rng.uniform(0.5, 1.5))
            self._conn.reject_auth(decision.reason)
            return
        self._pending_grant = decision.grant
        after = [*self.passed, method]
        chains = self._policy.chains_for(username)
        remaining = () if chains.complete(after) else chains.next_methods(after)
        self._conn.accept_auth(remaining=remaining)

    def confirmed(self, event: AuthPartiallySucceeded | Authenticated) -> None:
        """The core confirmed ``event.method`` (its proof checked): the chain advances."""
        self.passed.append(event.method)
        if self._pending_grant is not None:
            self.grant = self.grant.merged(self._pending_grant)
            self._pending_grant = None


def _method_of(event: DecisionEvent) -> str:
    match event:
        case PublicKeyAuthRequested():
            return "publickey"
        case PasswordAuthRequested():
            return "password"
        case _:
            return "keyboard-interactive"
