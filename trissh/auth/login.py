"""LoginConversation: one connection's authentication, between the core and the policy.

The core asks (decision events); the policy knows the answers; this class keeps what a
connection has passed so far, so multi-factor chains advance only when the core confirms a
method really succeeded (a signature is verified *after* our yes), and so the grants of
every passed method end up on the login. Failures wait a randomized delay first: guessing
gets slow, and timing says nothing about why.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable

import trio

from trissh.auth.policy import AuthPolicy, Decision, Grant, LoginRequest, Prompts
from trissh.auth.webhook import Metadata
from trissh.protocol import (
    AuthDecisionRequested,
    Authenticated,
    AuthPartiallySucceeded,
    KeyboardInteractiveAuthRequested,
    KeyboardInteractiveResponsesReceived,
    PasswordAuthRequested,
    PublicKeyAuthRequested,
    ServerConnection,
)


class LoginConversation:
    def __init__(
        self,
        policy: AuthPolicy,
        conn: ServerConnection,
        request: Callable[[str, Metadata], LoginRequest],
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
        #: Extra fields for the log line of the last accepted method.
        self.log_fields: dict[str, str] = {}
        #: Webhook metadata so far, passed on with every later webhook call.
        self.metadata = Metadata()
        self._kbd_state: object = None
        self._kbd_submethods = ""

    async def decide(self, event: AuthDecisionRequested) -> None:
        """Answer one decision event through the core's commands.

        Raises:
            TooManyAuthAttempts: the answer used up the client's attempts.
        """
        request = self._request(event.username, self.metadata)
        method = _method_of(event)
        if method not in self._policy.chains_for(event.username).next_methods(self.passed):
            self._conn.reject_auth(f"{method} not allowed at this point for this user")
            return
        match event:
            case PublicKeyAuthRequested():
                decision = await self._policy.publickey(
                    request, event.public_key, event.certificate, event.security_key
                )
                await self._answer(request, decision, method, final=event.signed)
            case PasswordAuthRequested():
                decision = await self._policy.password(request, event.password)
                await self._answer(request, decision, method)
            case KeyboardInteractiveAuthRequested():
                self._kbd_submethods, self._kbd_state = event.submethods, None
                step = await self._policy.keyboard_interactive(
                    request, self.passed, event.submethods
                )
                await self._step(request, step, method)
            case KeyboardInteractiveResponsesReceived():
                step = await self._policy.keyboard_interactive(
                    request, self.passed, self._kbd_submethods, event.responses, self._kbd_state
                )
                await self._step(request, step, method)

    async def _step(self, request: LoginRequest, step: Prompts | Decision, method: str) -> None:
        if isinstance(step, Prompts):
            self._kbd_state = step.state
            self._conn.send_auth_prompts(step.name, step.instruction, step.prompts)
            return
        await self._answer(request, step, method)

    async def _answer(
        self, request: LoginRequest, decision: Decision, method: str, *, final: bool = True
    ) -> None:
        """``final`` is False for a publickey query: PK_OK, no chain step, no webhooks."""
        if decision.ok and decision.metadata is not None:
            self.metadata = self.metadata.merged(decision.metadata)
        after = [*self.passed, method]
        chains = self._policy.chains_for(request.username)
        complete = chains.complete(after)
        if decision.ok and final and complete:
            granted = self.grant.merged(decision.grant)
            finish = await self._policy.finish(
                dataclasses.replace(request, metadata=self.metadata), granted
            )
            decision = (
                dataclasses.replace(decision, grant=decision.grant.merged(finish.grant))
                if finish.ok
                else finish
            )
        if not decision.ok:
            if final and self._policy.failure_delay:
                await trio.sleep(self._policy.failure_delay * self._rng.uniform(0.5, 1.5))
            self._conn.reject_auth(decision.reason)
            return
        self._pending_grant = decision.grant
        self.log_fields = dict(decision.log)
        self._conn.accept_auth(remaining=() if complete else chains.next_methods(after))

    def confirmed(self, event: AuthPartiallySucceeded | Authenticated) -> None:
        """The core confirmed ``event.method`` (its proof checked): the chain advances."""
        self.passed.append(event.method)
        if self._pending_grant is not None:
            self.grant = self.grant.merged(self._pending_grant)
            self._pending_grant = None


def _method_of(event: AuthDecisionRequested) -> str:
    match event:
        case PublicKeyAuthRequested():
            return "publickey"
        case PasswordAuthRequested():
            return "password"
        case _:
            return "keyboard-interactive"
