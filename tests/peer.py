"""An async SSH test client: the sans-IO ``tests.sshpeer`` client on any trio stream.

Used by the driver tests (memory streams) and the chaos test (real TCP): it shares the
core's wire code, so it proves the server's behaviour, not interoperability.
"""

from __future__ import annotations

import trio

from tests.sshpeer import ClientConnection, SeededRng
from tests.sshpeer.client import SERVER_MESSAGES, M
from trissh.protocol.messages import connection as conn
from trissh.protocol.messages import transport as tr
from trissh.protocol.messages import userauth as ua
from trissh.protocol.wire import Reader


class Peer:
    """The test client on the far end of a memory stream."""

    def __init__(self, stream: trio.abc.Stream, *, answer_keepalives: bool = False) -> None:
        self.stream = stream
        self.client = ClientConnection(rng=SeededRng(7))
        #: Answer keepalive probes as real clients do (else tests see them as messages).
        self.answer_keepalives = answer_keepalives

    async def flush(self) -> None:
        if data := self.client.data_to_send():
            await self.stream.send_all(data)

    async def _read(self) -> bool:
        await self.flush()
        data = await self.stream.receive_some(65536)
        if data:
            self.client.receive_data(bytes(data))
        return bool(data)

    async def next_message(self) -> object | None:
        """The next decoded message from the server; ``None`` once the stream ended.

        The host-key announcement (``hostkeys-00@openssh.com``) is informational and
        skipped, as OpenSSH does when it does not update known_hosts.
        """
        while True:
            while not self.client.inbox:
                if not await self._read():
                    return None
            payload = self.client.inbox.popleft()
            decode = SERVER_MESSAGES.get(payload[0])
            message = decode(Reader(payload, 1)) if decode else payload
            if isinstance(message, conn.GlobalRequest):
                if message.name == "hostkeys-00@openssh.com":
                    continue
                if self.answer_keepalives and message.want_reply:
                    self.client.send(conn.RequestFailure())
                    continue
            return message

    async def expect(self, cls: type[M]) -> M:
        message = await self.next_message()
        assert isinstance(message, cls), f"expected {cls.__name__}, got {message!r}"
        return message

    async def login(self) -> None:
        while not self.client.established:
            assert await self._read(), "stream ended during key exchange"
        self.client.request_service()
        self.client.auth_publickey()
        await self.expect(tr.ExtInfo)
        await self.expect(tr.ServiceAccept)
        await self.expect(ua.UserauthSuccess)

    async def open_session(self, sender: int = 0, *, window: int = 1 << 20) -> int:
        self.client.open_channel(sender, window=window)
        return (await self.expect(conn.ChannelOpenConfirmation)).sender_channel

    async def exec(self, channel: int, command: str, *, stdin: bytes = b"") -> None:
        self.client.channel_request(channel, "exec", conn.ExecData(command=command).encode())
        if stdin:
            self.client.channel_data(channel, stdin)
            self.client.channel_eof(channel)
        await self.flush()

    async def until_close(self, channel: int, *, adjust_window: bool = True) -> list[object]:
        """What the server sends on a channel up to its CLOSE (which is answered)."""
        messages: list[object] = []
        while not isinstance(messages[-1:] and messages[-1], conn.ChannelClose):
            message = await self.next_message()
            assert message is not None, f"stream ended after {messages}"
            if isinstance(message, conn.ChannelData) and adjust_window:
                self.client.window_adjust(channel, len(message.data))
            messages.append(message)
        self.client.channel_close(channel)
        await self.flush()
        return messages


def output_of(messages: list[object]) -> bytes:
    return b"".join(m.data for m in messages if isinstance(m, conn.ChannelData))


def exit_status_of(messages: list[object]) -> int | None:
    for message in messages:
        if isinstance(message, conn.ChannelRequest) and message.request_type == "exit-status":
            return conn.ExitStatusData.decode(Reader(message.data)).code
    return None
