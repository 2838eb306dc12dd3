"""The publickey subsystem (RFC 4819), served by trissh itself: users list, add and remove
their own keys (auth/user_keys.py), used from their next login on.

It runs as a task on the session channel, never in a container: the keys are trissh's
state, not the container's. Only users with ``[users.NAME] publickey_subsystem = true``
get it (others' requests go to the container like any subsystem), and not after a login
with a restricted key (a forced command): that request is refused, as §3.1 advises.
Requests are answered one at a time, in order (the client waits for each answer, §3.2);
every change is logged.

Cancellation: the peer closing the channel cancels the task; a change in progress is a
whole-file replacement (atomic), so the stored keys are the old set or the new.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import structlog
import trio

from trissh.auth.user_keys import (
    MAX_COMMAND,
    MAX_COMMENT,
    KeyNotSupported,
    StoredKey,
    UserKeyStore,
    check_key,
)
from trissh.channels.session import SessionContext
from trissh.connection.channel import ChannelHandle, ChannelStream
from trissh.protocol import SessionRequested
from trissh.protocol import publickey_subsystem as pk
from trissh.protocol.errors import DecodeError

log = structlog.get_logger("trissh.channels.publickey")

#: ``publickey`` is RFC 4819's name; VanDyke's clients (SecureCRT) also ask for the
#: draft's ``publickey@vandyke.com``.
SUBSYSTEM_NAMES = frozenset(("publickey", "publickey@vandyke.com"))
#: The attributes kept with a key (§4.1): what ``listattributes`` reports.
SUPPORTED_ATTRIBUTES = ("comment", "comment-language", "command-override")
READ_CHUNK = 64 * 1024


def serves(ctx: SessionContext, request: SessionRequested) -> bool:
    """Is this request for the built-in subsystem? (For users who did not opt in, a
    ``publickey`` subsystem is whatever the container has under that name.)"""
    return request.subsystem in SUBSYSTEM_NAMES and ctx.grant.user_keys is not None


def allowed(ctx: SessionContext) -> bool:
    """May this login manage its keys? Not after a restricted key's login (§3.1): a key
    it added would carry none of its restrictions."""
    return not ctx.grant.restricted and ctx.grant.forced_command is None


async def run_publickey_subsystem(
    ctx: SessionContext, handle: ChannelHandle, request: SessionRequested
) -> None:
    """Serve the subsystem until the client closes it (or sends EOF).

    Cancellation: ends the channel; never raises otherwise.
    """
    store = ctx.grant.user_keys
    assert store is not None
    code, reason = 0, "cancelled"
    with structlog.contextvars.bound_contextvars(channel=int(handle.id)):
        handle.port.reply_request(handle.id, True)
        log.info("session_started", kind="subsystem", subsystem=request.subsystem)
        try:
            with handle.cancel_scope:
                await _Server(ctx.username, store, ChannelStream(handle)).serve()
                reason = "exited"
        except DecodeError as exc:
            log.warning("publickey_subsystem_failed", error=exc.description)
            code, reason = 1, "failed"
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:
            log.exception("session_crashed")
            code, reason = 1, "crashed"
        finally:
            if reason == "cancelled" and handle.peer_closed:
                reason = "channel_closed"
            log.info("session_ended", exit_code=code, signal=None, reason=reason)
            handle.port.finish(handle.id, exit_code=code)


class _Server:
    def __init__(self, username: str, store: UserKeyStore, channel: ChannelStream) -> None:
        self._username = username
        self._store = store
        self._channel = channel
        self._buffer = pk.PacketBuffer()

    async def _next(self) -> bytes | None:
        """The next packet body; ``None`` at the client's EOF."""
        while (body := self._buffer.next_body()) is None:
            data = await self._channel.receive_some(READ_CHUNK)
            if not data:
                return None
            self._buffer.feed(data)
        return body

    async def _send(
        self,
        *responses: pk.Version | pk.StatusResponse | pk.PublicKeyResponse | pk.AttributeResponse,
    ) -> None:
        await self._channel.send_all(b"".join(pk.packet(r.encode()) for r in responses))

    async def _status(self, code: pk.Status, description: str) -> None:
        await self._send(pk.StatusResponse(code=code, description=description))

    async def serve(self) -> None:
        """Version first (§3.5), then requests until EOF.

        Raises:
            DecodeError: the stream cannot be parsed any more (a status says so first).
        """
        try:
            if not await self._negotiate():
                return
            while (body := await self._next()) is not None:
                try:
                    request = pk.parse_request(body)
                except DecodeError as exc:
                    await self._status(
                        pk.Status.GENERAL_FAILURE, f"malformed request: {exc.description}"
                    )
                    continue
                await self._answer(request)
        except DecodeError as exc:
            with contextlib.suppress(trio.BrokenResourceError):
                await self._status(pk.Status.GENERAL_FAILURE, exc.description)
            raise

    async def _negotiate(self) -> bool:
        body = await self._next()
        if body is None:
            return False
        request = pk.parse_request(body)
        if not isinstance(request, pk.Version):
            await self._status(pk.Status.GENERAL_FAILURE, "expected the version packet first")
            return False
        if request.version < pk.PROTOCOL_VERSION:
            await self._status(
                pk.Status.VERSION_NOT_SUPPORTED, f"only version {pk.PROTOCOL_VERSION} is supported"
            )
            return False
        await self._send(pk.Version(version=pk.PROTOCOL_VERSION))
        return True

    async def _answer(self, request: pk.Request | pk.UnknownRequest) -> None:
        match request:
            case pk.AddRequest():
                await self._add(request)
            case pk.RemoveRequest():
                await self._remove(request)
            case pk.ListRequest():
                keys = await self._store.keys(self._username)
                await self._send(*(_listed(key) for key in keys), _OK)
            case pk.ListAttributesRequest():
                attributes = (pk.AttributeResponse(name=name) for name in SUPPORTED_ATTRIBUTES)
                await self._send(*attributes, _OK)
            case pk.Version():
                await self._status(pk.Status.REQUEST_NOT_SUPPORTED, "version already agreed")
            case pk.UnknownRequest():
                await self._status(
                    pk.Status.REQUEST_NOT_SUPPORTED, f"request {request.name!r} not supported"
                )

    async def _add(self, request: pk.AddRequest) -> None:
        try:
            check_key(request.algorithm, request.blob)
            key = _stored(request.algorithm, request.blob, request.attributes)
        except KeyNotSupported as exc:
            await self._status(pk.Status.KEY_NOT_SUPPORTED, str(exc))
            return
        except _AttributeRefused as exc:
            await self._status(pk.Status.ATTRIBUTE_NOT_SUPPORTED, str(exc))
            return
        try:
            outcome = await self._store.add(self._username, key, overwrite=request.overwrite)
        except (OSError, ValueError) as exc:
            log.error(
                "user_keys_unwritable",
                path=str(self._store.path_for(self._username)),
                error=str(exc),
            )
            await self._status(pk.Status.GENERAL_FAILURE, "the key store cannot be written")
            return
        if outcome == "present":
            await self._status(pk.Status.KEY_ALREADY_PRESENT, "key already present")
        elif outcome == "full":
            limit = self._store.max_keys
            await self._status(pk.Status.STORAGE_EXCEEDED, f"at most {limit} keys per user")
        else:
            _log_change(self._username, outcome, key)
            await self._send(_OK)

    async def _remove(self, request: pk.RemoveRequest) -> None:
        try:
            removed = await self._store.remove(self._username, request.blob)
        except (OSError, ValueError) as exc:
            log.error(
                "user_keys_unwritable",
                path=str(self._store.path_for(self._username)),
                error=str(exc),
            )
            await self._status(pk.Status.GENERAL_FAILURE, "the key store cannot be written")
            return
        if removed is None:
            await self._status(pk.Status.KEY_NOT_FOUND, "no such key")
            return
        _log_change(self._username, "removed", removed)
        await self._send(_OK)


_OK = pk.StatusResponse(code=pk.Status.SUCCESS, description="success")


class _AttributeRefused(Exception):
    pass


def _stored(algorithm: str, blob: bytes, attributes: Sequence[pk.Attribute]) -> StoredKey:
    """The key with the attributes trissh keeps; a critical one it cannot keep refuses it."""
    comment, command = "", None
    for attribute in attributes:
        if attribute.name == "comment" and len(attribute.value) <= MAX_COMMENT:
            comment = attribute.value
        elif attribute.name == "command-override" and len(attribute.value) <= MAX_COMMAND:
            command = attribute.value
        elif attribute.name == "comment-language":
            continue  # one comment is kept, in whatever language it came
        elif attribute.critical:
            raise _AttributeRefused(f"attribute {attribute.name!r} is not supported")
    return StoredKey(algorithm, blob, comment, command)


def _listed(key: StoredKey) -> pk.PublicKeyResponse:
    attributes = []
    if key.comment:
        attributes.append(pk.Attribute(name="comment", value=key.comment))
    if key.command is not None:
        attributes.append(pk.Attribute(name="command-override", value=key.command))
    return pk.PublicKeyResponse(
        algorithm=key.algorithm, blob=key.blob, attributes=tuple(attributes)
    )


def _log_change(username: str, action: str, key: StoredKey) -> None:
    log.info(
        "user_key_changed",
        user=username,
        action=action,
        key_type=key.algorithm,
        key_fingerprint=key.fingerprint(),
        forced_command=key.command is not None,
    )
