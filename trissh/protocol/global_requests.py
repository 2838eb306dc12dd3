"""Global requests (RFC 4254 §4): the connection-level requests and their replies.

Replies leave in request order although forwarding requests are answered later, by the
driver, once the listener exists (or failed): each request that wants a reply gets a slot
in a bounded queue, and resolved slots are sent from its front. Requests that are not
forwarding are answered here at once: ``no-more-sessions@openssh.com`` (noted),
``hostkeys-prove-00@openssh.com`` (by the callback the façade gives), liveness probes and
everything unknown (refused).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from trissh.protocol.channels import PROBES, SendPayload
from trissh.protocol.errors import DecodeError, UnexpectedMessage
from trissh.protocol.events import Event, GlobalRequestReceived, RequestRefused
from trissh.protocol.forwarding import FORWARD_REQUESTS, read_forward_request
from trissh.protocol.messages.connection import GlobalRequest, RequestFailure, RequestSuccess
from trissh.protocol.session_channel import SessionPolicy
from trissh.protocol.wire import Reader

NO_MORE_SESSIONS: Final = "no-more-sessions@openssh.com"
#: OpenSSH PROTOCOL §2.5: host key rotation.
HOSTKEYS_PROVE: Final = "hostkeys-prove-00@openssh.com"
#: Bound on unanswered global requests (each forwarding request is a pending listen): the
#: OpenSSH client sends all its RemoteForwards at once after login, answered only when the
#: container is up, and ``[forwarding] max_listeners`` may be up to 1024 (a slot is ~100 B).
MAX_PENDING_REPLIES: Final = 4096
#: Host key proofs one connection gets: OpenSSH asks once; each is a signature per key
#: (1.7 ms with RSA-4096) in the event loop every user shares.
MAX_HOSTKEY_PROOFS: Final = 4


@dataclass(slots=True)
class _Slot:
    request_id: int
    ok: bool | None = None
    data: bytes = b""


class GlobalRequests:
    def __init__(
        self,
        send: SendPayload,
        emit: Callable[[Event], None],
        policy: SessionPolicy,
        prove_host_keys: Callable[[bytes], bytes | None],
    ) -> None:
        self._send = send
        self._emit = emit
        self._policy = policy
        self._prove_host_keys = prove_host_keys
        self._slots: deque[_Slot] = deque()
        self._pending: dict[int, _Slot | None] = {}
        self._ids = itertools.count(1)
        self._proofs = 0

    def handle(self, payload: bytes) -> None:
        request = GlobalRequest.decode(Reader(payload, 1))
        slot = None
        if request.want_reply:
            if len(self._slots) >= MAX_PENDING_REPLIES:
                raise UnexpectedMessage("too many unanswered global requests")
            slot = _Slot(next(self._ids))
            self._slots.append(slot)
        if request.name in FORWARD_REQUESTS:
            self._forward(request, slot)
            return
        ok, data = self._answer_now(request)
        if slot is not None:
            slot.ok, slot.data = ok, data
            self._flush()

    def _answer_now(self, request: GlobalRequest) -> tuple[bool, bytes]:
        if request.name == NO_MORE_SESSIONS:
            self._policy.no_more_sessions = True
            return False, b""  # sshd answers it with failure too; the note is what counts
        if request.name == HOSTKEYS_PROVE:
            if not request.want_reply or self._proofs >= MAX_HOSTKEY_PROOFS:
                return False, b""  # a proof nobody would read, or one too many
            self._proofs += 1
            signatures = self._prove_host_keys(request.data)
            return signatures is not None, signatures or b""
        if request.name not in PROBES:
            self._emit(RequestRefused(request=request.name, reason="not supported"))
        return False, b""

    def _forward(self, request: GlobalRequest, slot: _Slot | None) -> None:
        try:
            target = read_forward_request(request.name, request.data)
        except DecodeError as exc:
            self._emit(RequestRefused(request=request.name, reason=f"malformed: {exc}"))
            if slot is not None:
                slot.ok = False
                self._flush()
            return
        request_id = slot.request_id if slot is not None else next(self._ids)
        self._pending[request_id] = slot
        self._emit(
            GlobalRequestReceived(
                request_id=request_id,
                name=request.name,
                target=target,
                want_reply=request.want_reply,
            )
        )

    def reply(self, request_id: int, ok: bool, data: bytes = b"") -> None:
        """Answer a ``GlobalRequestReceived``; unknown or answered ids are ignored."""
        if request_id not in self._pending:
            return
        slot = self._pending.pop(request_id)
        if slot is not None:
            slot.ok, slot.data = ok, data
            self._flush()

    def _flush(self) -> None:
        while self._slots and self._slots[0].ok is not None:
            slot = self._slots.popleft()
            self._send(RequestSuccess(data=slot.data).encode() if slot.ok else _FAILURE)


_FAILURE: Final = RequestFailure().encode()
