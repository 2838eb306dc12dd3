"""The ContainerSSH-compatible webhook client against a real HTTP server on loopback.

The server is trio + h11 (plain or TLS with client certificates); every test checks the
exact JSON the server received, as a ContainerSSH auth or config server would see it.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import itertools
import json
import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from trissh.auth.webhook import (
    AuthorizationRequest,
    ConfigRefused,
    ConfigRequest,
    ConfigResult,
    FileValue,
    KeyboardInteractiveRequest,
    Metadata,
    PasswordRequest,
    Prompt,
    PublicKeyRequest,
    Value,
    WebhookClient,
    WebhookError,
    authorized_key,
    mapped_config,
    remote_address,
)
from trissh.config import Direction, DirectionGrant, ForwardingGrant, load_config
from trissh.protocol import parse_public_key

from .http_server import Answer, Received, answer, sequence, start

BASE = {
    "username": "alice",
    "remoteAddress": "192.0.2.7:50022",
    "connectionId": "0123456789abcdef",
    "clientVersion": "SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3",
}


class Info(TypedDict):
    username: str
    remote_address: str
    connection_id: str
    client_version: str


INFO: Info = {
    "username": "alice",
    "remote_address": "192.0.2.7:50022",
    "connection_id": "0123456789abcdef",
    "client_version": "SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3",
}
PASSWORD = "correct horse ✓"


def client(url: str, **kw: Any) -> WebhookClient:
    options: dict[str, Any] = {"timeout": 2.0, "retries": 2, "retry_interval": 0.01}
    options.update(kw)
    return WebhookClient(url, **options)


# --- password, pubkey, authz ----------------------------------------------------------------


async def test_password_success_sends_exactly_containerssh_fields(nursery: trio.Nursery) -> None:
    server = await start(
        nursery,
        answer(
            {
                "success": True,
                "metadata": {"team": {"value": "ops", "sensitive": False}},
                "environment": {"GITHUB_TOKEN": {"value": "ghp_x", "sensitive": True}},
                "files": {
                    "/etc/motd": {"value": base64.b64encode(b"hi\n").decode(), "sensitive": False}
                },
            }
        ),
    )
    async with client(server.url) as hook:
        result = await hook.password(PasswordRequest(**INFO, password=PASSWORD))
    [got] = server.received
    assert (got.method, got.path) == ("POST", "/hooks/password")
    assert got.headers["content-type"] == "application/json"
    assert got.headers["accept"] == "application/json"
    assert got.headers["content-length"] == str(len(json.dumps(got.body, separators=(",", ":"))))
    assert got.body == {**BASE, "passwordBase64": base64.b64encode(PASSWORD.encode()).decode()}
    assert result.success is True
    assert result.authenticated_username is None
    assert result.metadata.metadata == {"team": Value("ops")}
    assert result.metadata.environment == {"GITHUB_TOKEN": Value("ghp_x", sensitive=True)}
    assert result.metadata.files == {"/etc/motd": FileValue(b"hi\n")}
    assert "ghp_x" not in repr(result)


async def test_password_failure_is_an_answer_and_not_retried(nursery: trio.Nursery) -> None:
    server = await start(nursery, answer({"success": False}))
    async with client(server.url) as hook:
        result = await hook.password(PasswordRequest(**INFO, password="wrong"))
    assert result.success is False
    assert len(server.received) == 1


async def test_authenticated_username_override(nursery: trio.Nursery) -> None:
    server = await start(nursery, answer({"success": True, "authenticatedUsername": "alice.smith"}))
    async with client(server.url) as hook:
        result = await hook.password(PasswordRequest(**INFO, password=PASSWORD))
    assert result.authenticated_username == "alice.smith"


async def test_pubkey_sends_the_key_in_authorized_keys_format(nursery: trio.Nursery) -> None:
    raw = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    blob = b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + raw
    key = parse_public_key(blob)
    line = authorized_key(key.blob)
    assert line == "ssh-ed25519 " + base64.b64encode(blob).decode()
    server = await start(nursery, answer({"success": True}))
    metadata = Metadata(
        metadata={"shown": Value("1"), "secret": Value("2", sensitive=True)},
        environment={"TOKEN": Value("t", sensitive=True)},
        files={"/a": FileValue(b"\x00\xff"), "/b": FileValue(b"k", sensitive=True)},
    )
    async with client(server.url) as hook:
        await hook.pubkey(PublicKeyRequest(**INFO, public_key=line, metadata=metadata))
    [got] = server.received
    assert got.path == "/hooks/pubkey"
    assert got.body == {
        **BASE,
        "publicKey": line,
        # sensitive entries are never sent on; empty maps are left out
        "metadata": {"shown": {"value": "1", "sensitive": False}},
        "files": {"/a": {"value": "AP8=", "sensitive": False}},
    }


async def test_authz_after_authentication(nursery: trio.Nursery) -> None:
    server = await start(nursery, answer({"success": False}))
    request = AuthorizationRequest(
        **INFO,
        authenticated_username="alice@EXAMPLE.ORG",
        metadata=Metadata(metadata={"k": Value("v")}),
    )
    async with client(server.url) as hook:
        result = await hook.authz(request)
    assert not result.success
    [got] = server.received
    assert got.path == "/hooks/authz"
    assert got.body == {
        **BASE,
        "authenticatedUsername": "alice@EXAMPLE.ORG",
        "metadata": {"k": {"value": "v", "sensitive": False}},
    }


def test_secrets_stay_out_of_reprs() -> None:
    password = PasswordRequest(**INFO, password="hunter2")
    answers = KeyboardInteractiveRequest(**INFO, answers=("hunter2", "974316"))
    for text in (repr(password), repr(answers), str(password)):
        assert "hunter2" not in text
        assert "974316" not in text
    assert "hunter2" not in repr(Value("hunter2", sensitive=True))
    assert "hunter2" not in repr(FileValue(b"hunter2"))


def test_remote_address_is_written_as_go_does() -> None:
    assert remote_address("192.0.2.1", 22) == "192.0.2.1:22"
    assert remote_address("2001:db8::1", 2222) == "[2001:db8::1]:2222"


# --- failures and retries -------------------------------------------------------------------


async def test_slow_server_times_out_per_attempt(nursery: trio.Nursery) -> None:
    async def slow(_: Received) -> Answer:
        await trio.sleep(30)
        return {"success": True}

    server = await start(nursery, slow)
    start_time = trio.current_time()
    async with client(server.url, timeout=0.3, retries=1) as hook:
        with pytest.raises(WebhookError, match=r"no answer within 0\.3 s \(after 2 attempts\)"):
            await hook.password(PasswordRequest(**INFO, password=PASSWORD))
    elapsed = trio.current_time() - start_time
    assert 0.6 <= elapsed < 2.0
    assert len(server.received) == 2


async def test_failing_server_is_retried_every_interval_until_the_auth_timeout(
    nursery: trio.Nursery,
) -> None:
    """ContainerSSH's policy: a failure is tried again every retry_interval until
    auth_timeout has passed since the first attempt; checked on the attempts' own times,
    so a slow machine changes how many fit, never whether the rule holds."""
    times: list[float] = []

    async def failing(_: Received) -> Answer:
        times.append(trio.current_time())
        return 500, b"oops"

    server = await start(nursery, failing)
    interval, limit = 0.2, 0.9
    async with client(
        server.url, retries=None, retry_interval=interval, auth_timeout=limit
    ) as hook:
        with pytest.raises(WebhookError) as caught:
            await hook.pubkey(PublicKeyRequest(**INFO, public_key="ssh-ed25519 AAAA"))
    assert str(caught.value) == f"{server.url}/pubkey: HTTP 500 (after {len(times)} attempts)"
    assert len(times) >= 3
    assert all(b - a >= interval for a, b in itertools.pairwise(times))
    assert times[-1] - times[0] < limit
    assert times[-1] - times[0] + interval >= limit - 0.1  # no room was left for another


async def test_transient_failure_then_success(nursery: trio.Nursery) -> None:
    server = await start(nursery, sequence((503, b""), (502, b""), {"success": True}))
    async with client(server.url) as hook:
        result = await hook.password(PasswordRequest(**INFO, password=PASSWORD))
    assert result.success
    assert len(server.received) == 3


@pytest.mark.parametrize("status", [400, 401, 403, 404, 302, 204])
async def test_every_other_status_is_retried_too(nursery: trio.Nursery, status: int) -> None:
    """As ContainerSSH: any answer but a 200 is a failure to try again."""
    refusal = (status, b"" if status == 204 else b"{}")  # (a 204 has no body)
    server = await start(nursery, sequence(refusal, {"success": True}))
    async with client(server.url) as hook:
        assert (await hook.password(PasswordRequest(**INFO, password=PASSWORD))).success
    assert len(server.received) == 2
    server.handler = answer(refusal)
    async with client(server.url, retries=1) as hook:
        with pytest.raises(WebhookError, match=f"/password: HTTP {status} \\(after 2 attempts\\)$"):
            await hook.password(PasswordRequest(**INFO, password=PASSWORD))


async def test_an_answer_that_does_not_decode_is_a_webhook_failure(
    nursery: trio.Nursery,
) -> None:
    """A 200 marked gzip whose body is not (a misconfigured proxy): a failure like any
    other, retried, then WebhookError; before, httpx's DecodingError escaped and crashed
    the connection (second reader)."""
    server = await start(nursery, answer({"success": True}))
    server.extra_headers = [("Content-Encoding", "gzip")]
    async with client(server.url, retries=1) as hook:
        with pytest.raises(WebhookError, match=r"DecodingError.*\(after 2 attempts\)$"):
            await hook.password(PasswordRequest(**INFO, password=PASSWORD))


async def test_connection_refused_is_retried() -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with client(f"http://127.0.0.1:{port}", retries=2) as hook:
        with pytest.raises(WebhookError, match=r"ConnectError.*\(after 3 attempts\)$"):
            await hook.password(PasswordRequest(**INFO, password=PASSWORD))


async def test_errors_never_carry_the_password_or_url_credentials(nursery: trio.Nursery) -> None:
    server = await start(nursery, answer((200, b'{"success": "hunter2"}')))
    url = server.url.replace("http://", "http://user:pw@") + "?token=abc"
    async with client(url, retries=0) as hook:
        with pytest.raises(WebhookError) as caught:
            await hook.password(PasswordRequest(**INFO, password="hunter2"))
    message = str(caught.value)
    assert "hunter2" not in message
    assert "pw@" not in message
    assert "abc" not in message
    assert "\n" not in message
    assert "invalid answer: success" in message
    assert server.received[0].path == "/hooks/password?token=abc"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"success": true, "extra": 1}', "extra: Extra inputs are not permitted"),
        (b"{}", "success: Field required"),
        (b'{"success": 1}', "success: Input should be a valid boolean"),
        (b"not json", "body: Invalid JSON"),
        (b"[]", "body: Input should be an object"),
        (b'{"success": true, "metadata": {"k": "v"}}', "metadata.k: Input should be an object"),
        (b'{"success": true, "metadata": {"k": {"value": 1}}}', "metadata.k.value"),
        (b'{"success": true, "files": {"/f": {"value": "!!"}}}', "files./f: value is not base64"),
        (b'{"success": true, "authenticatedUsername": 7}', "authenticatedUsername"),
    ],
)
async def test_answers_are_parsed_strictly(
    nursery: trio.Nursery, body: bytes, message: str
) -> None:
    server = await start(nursery, answer((200, body)))
    async with client(server.url) as hook:
        with pytest.raises(WebhookError, match="invalid answer") as caught:
            await hook.password(PasswordRequest(**INFO, password=PASSWORD))
    assert message in str(caught.value)
    assert len(server.received) == 3  # retried, as ContainerSSH retries what it cannot decode


# Abandoning an oversized chunked body leaves httpx's and httpcore's async-generator layers
# unexhausted, which trio reports as a ResourceWarning at collection (encode/httpx#3686).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_answer_size_is_capped(nursery: trio.Nursery) -> None:
    big = json.dumps({"success": True, "metadata": {"k": {"value": "x" * 5000}}}).encode()
    server = await start(nursery, answer((200, big)))
    async with client(server.url, max_response_bytes=4096, retries=0) as hook:
        with pytest.raises(WebhookError, match="answer over 4096 bytes"):
            await hook.password(PasswordRequest(**INFO, password=PASSWORD))
    async with client(server.url, max_response_bytes=8192) as hook:
        assert (await hook.password(PasswordRequest(**INFO, password=PASSWORD))).success
    server.chunked = True  # no Content-Length: the cap applies while reading
    async with client(server.url, max_response_bytes=4096, retries=0) as hook:
        with pytest.raises(WebhookError, match="answer over 4096 bytes"):
            await hook.password(PasswordRequest(**INFO, password=PASSWORD))
        server.handler = answer({"success": True})
        assert (await hook.password(PasswordRequest(**INFO, password=PASSWORD))).success


async def test_outer_cancellation_is_prompt(nursery: trio.Nursery) -> None:
    """A login cancelled while its webhook call waits (client gone, grace time over) ends
    then, not when the webhook's own 20-s timeout would have. The bound is generous: it only
    tells "abandoned" from "sat out"."""

    async def slow(_: Received) -> Answer:
        await trio.sleep(30)
        return {"success": True}

    server = await start(nursery, slow)
    async with client(server.url, timeout=20) as hook:
        started = trio.current_time()
        with trio.move_on_after(0.2) as scope:
            await hook.password(PasswordRequest(**INFO, password=PASSWORD))
        waited = trio.current_time() - started
        assert scope.cancelled_caught
        assert waited < 5, f"the cancelled call took {waited:.1f} s to end"
        server.handler = answer({"success": True})  # the client is still usable afterwards
        assert (await hook.password(PasswordRequest(**INFO, password=PASSWORD))).success


@pytest.mark.parametrize(
    "kwargs",
    [
        {"url": "ftp://example.com"},
        {"url": "http://"},
        {"timeout": 0},
        {"auth_timeout": 0},
        {"retries": -1},
        {"client_key": "/k.pem"},
        {"ca_file": "/nonexistent/ca.pem"},
    ],
)
def test_bad_settings(kwargs: dict[str, Any]) -> None:
    url = kwargs.pop("url", "https://auth.example.com")
    with pytest.raises(ValueError):  # noqa: PT011
        WebhookClient(url, **kwargs)


# --- TLS ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path
    other_ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def server_context(self, *, require_client: bool = True) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(self.ca))
        context.load_cert_chain(self.server_cert, self.server_key)
        context.verify_mode = ssl.CERT_REQUIRED if require_client else ssl.CERT_NONE
        return context


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[str, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, issuer_key = issuer if issuer else (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        ).add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    else:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([usage]), critical=False
        ).add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    if server:
        names = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A test CA, a server certificate for 127.0.0.1, a client certificate; another CA."""
    directory = tmp_path_factory.mktemp("pki")

    def write(name: str, data: bytes) -> Path:
        (directory / name).write_bytes(data)
        return directory / name

    def pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def pem(cert: x509.Certificate) -> bytes:
        return cert.public_bytes(serialization.Encoding.PEM)

    ca_key, other_key, server_key, client_key = (
        ec.generate_private_key(ec.SECP256R1()) for _ in range(4)
    )
    ca = _issue("Test Webhook CA", ca_key, None, ca=True)
    other = _issue("Other CA", other_key, None, ca=True)
    return Pki(
        ca=write("ca.pem", pem(ca)),
        other_ca=write("other.pem", pem(other)),
        server_cert=write(
            "server.pem",
            pem(_issue("webhook", server_key, ("Test Webhook CA", ca_key), server=True)),
        ),
        server_key=write("server-key.pem", pem_key(server_key)),
        client_cert=write(
            "client.pem", pem(_issue("trissh-client", client_key, ("Test Webhook CA", ca_key)))
        ),
        client_key=write("client-key.pem", pem_key(client_key)),
    )


async def test_tls_with_test_ca_and_client_certificate(nursery: trio.Nursery, pki: Pki) -> None:
    server = await start(nursery, answer({"success": True}), pki.server_context())
    assert server.url.startswith("https://")
    hook = client(
        server.url,
        ca_file=str(pki.ca),
        client_cert=str(pki.client_cert),
        client_key=str(pki.client_key),
    )
    async with hook:
        assert (await hook.password(PasswordRequest(**INFO, password=PASSWORD))).success
        assert (await hook.authz(AuthorizationRequest(**INFO))).success
    assert [got.client_cn for got in server.received] == ["trissh-client", "trissh-client"]


async def test_tls_server_not_signed_by_the_configured_ca(nursery: trio.Nursery, pki: Pki) -> None:
    server = await start(
        nursery, answer({"success": True}), pki.server_context(require_client=False)
    )
    async with client(server.url, ca_file=str(pki.other_ca), retries=1) as hook:
        with pytest.raises(WebhookError, match=r"TLS: ConnectError.*certificate verify failed"):
            await hook.password(PasswordRequest(**INFO, password=PASSWORD))
    assert server.received == []
    assert server.connections == 2  # retried like any failure (ContainerSSH's policy)


async def test_tls_server_requires_a_client_certificate(nursery: trio.Nursery, pki: Pki) -> None:
    server = await start(nursery, answer({"success": True}), pki.server_context())
    async with client(server.url, ca_file=str(pki.ca), retries=0) as hook:
        with pytest.raises(WebhookError):
            await hook.password(PasswordRequest(**INFO, password=PASSWORD))
    assert server.received == []


# --- keyboard-interactive -------------------------------------------------------------------


async def test_keyboard_interactive_multi_round(nursery: trio.Nursery) -> None:
    async def mfa(got: Received) -> Answer:
        body = got.body
        if body["round"] == 0:
            return {
                "success": None,
                "instruction": "Two factors",
                "prompts": [{"prompt": "Password: ", "echo": False}],
                "state": "s1",
            }
        if body["round"] == 1 and body["state"] == "s1" and body["answers"] == [PASSWORD]:
            return {"success": None, "prompts": [{"prompt": "Code: ", "echo": True}], "state": "s2"}
        ok = body["state"] == "s2" and body["answers"] == ["123456"]
        return {
            "success": ok,
            "authenticatedUsername": "alice",
            "environment": {"MFA": {"value": "totp"}},
        }

    server = await start(nursery, mfa)
    request = KeyboardInteractiveRequest(**INFO, submethods="")
    async with client(server.url) as hook:
        first = await hook.keyboard_interactive(request)
        assert first.success is None
        assert first.instruction == "Two factors"
        assert first.prompts == (Prompt("Password: ", False),)
        request = request.next_round(first, (PASSWORD,))
        second = await hook.keyboard_interactive(request)
        assert second.prompts == (Prompt("Code: ", True),)
        request = request.next_round(second, ("123456",))
        third = await hook.keyboard_interactive(request)
    assert third.success is True
    assert third.prompts == ()
    assert third.authenticated_username == "alice"
    assert third.metadata.environment == {"MFA": Value("totp")}
    bodies = [got.body for got in server.received]
    assert all(got.path == "/hooks/keyboard-interactive" for got in server.received)
    assert bodies == [
        {**BASE, "submethods": "", "round": 0, "state": None, "answers": []},
        {**BASE, "submethods": "", "round": 1, "state": "s1", "answers": [PASSWORD]},
        {**BASE, "submethods": "", "round": 2, "state": "s2", "answers": ["123456"]},
    ]


async def test_keyboard_interactive_wrong_code_fails(nursery: trio.Nursery) -> None:
    server = await start(nursery, answer({"success": False}))
    async with client(server.url) as hook:
        result = await hook.keyboard_interactive(
            KeyboardInteractiveRequest(**INFO, round=1, answers=("0",))
        )
    assert result.success is False


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"success": True, "prompts": [{"prompt": "p", "echo": False}]}, "a verdict with prompts"),
        ({"success": None, "prompts": [{"prompt": "p"}] * 17}, "prompts"),
        ({"success": None, "state": "x" * 4097}, "state"),
        ({"success": None, "prompts": [{"prompt": "p", "echo": "no"}]}, "prompts.0.echo"),
        ({"prompts": []}, "success: Field required"),
    ],
)
async def test_keyboard_interactive_bad_answers(
    nursery: trio.Nursery, body: dict[str, Any], message: str
) -> None:
    server = await start(nursery, answer(body))
    async with client(server.url) as hook:
        with pytest.raises(WebhookError, match=message):
            await hook.keyboard_interactive(KeyboardInteractiveRequest(**INFO))


async def test_keyboard_interactive_round_limit(nursery: trio.Nursery) -> None:
    server = await start(
        nursery, answer({"success": None, "prompts": [{"prompt": "again", "echo": False}]})
    )
    async with client(server.url, max_rounds=3) as hook:
        request = KeyboardInteractiveRequest(**INFO)
        for _ in range(3):
            response = await hook.keyboard_interactive(request)
            request = request.next_round(response, ("x",))
        with pytest.raises(WebhookError, match="more than 3 rounds"):
            await hook.keyboard_interactive(request)
    assert len(server.received) == 3


# --- configuration server -------------------------------------------------------------------

CONTAINERSSH_CONFIG = {
    "backend": "docker",
    "docker": {
        "connection": {"host": "unix:///var/run/docker.sock"},
        "execution": {
            "container": {
                "image": "registry.example.com/dev:1.2",
                "env": ["LANG=C.UTF-8", "EMPTY="],
                "user": "1000:1000",
                "workingdir": "/work",
                "labels": {"team": "ops"},
                "cmd": ["/bin/sleep", "infinity"],
                "tty": False,
            },
            "host": {
                "binds": ["/srv/home/alice:/home/alice", "/srv/data:/data:ro"],
                "networkmode": "pasta",
                "memory": 512 * 1024 * 1024,
                "cpushares": 512,
                "pidslimit": 128,
                "readonlyrootfs": True,
            },
            "mode": "session",
            "imagePullPolicy": "Never",
            "shellCommand": ["/bin/bash", "-l"],
            "subsystems": {"sftp": "/usr/libexec/sftp-server"},
        },
        "timeouts": {"containerStart": 30_000_000_000, "containerStop": "10s"},
    },
}


async def test_config_server_override(nursery: trio.Nursery) -> None:
    """What maps is applied; ContainerSSH's plumbing (how it reaches Docker, its mode, the
    container's idle command, timeouts trissh has no use for) is noted."""
    server = await start(
        nursery,
        answer(
            {
                "config": CONTAINERSSH_CONFIG,
                "metadata": {"tier": {"value": "gold", "sensitive": False}},
            }
        ),
    )
    request = ConfigRequest(
        **INFO, authenticated_username="alice", metadata=Metadata(metadata={"a": Value("b")})
    )
    async with client(server.url + "/config") as hook:
        result = await hook.config(request)
    [got] = server.received
    assert got.path == "/hooks/config"  # the configuration server's URL itself
    assert got.body == {
        **BASE,
        "authenticatedUsername": "alice",
        "metadata": {"a": {"value": "b", "sensitive": False}},
    }
    assert result.container == {
        "image": "registry.example.com/dev:1.2",
        "user": "1000:1000",
        "workdir": "/work",
        "env": {"LANG": "C.UTF-8", "EMPTY": ""},
        "labels": {"team": "ops"},
        "network": "pasta",
        "volumes": ("/srv/home/alice:/home/alice:rw", "/srv/data:/data:ro"),
        "memory_limit_mb": 512,
        "cpu_shares": 512,
        "pids_limit": 128,
        "read_only": True,
        "pull_policy": "never",
        "start_timeout": 30.0,
        "shell": ("/bin/bash", "-l"),
        "sftp_server": "/usr/libexec/sftp-server",
    }
    plumbing = "ContainerSSH's own plumbing, not needed by trissh"
    assert set(result.ignored) == {
        f"docker.connection: {plumbing}",
        f"docker.execution.container.cmd: {plumbing}",
        f"docker.execution.mode: {plumbing}",
        f"docker.timeouts.containerStop: {plumbing}",
    }
    assert result.metadata.metadata == {"tier": Value("gold")}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"container": {"hostname": "devbox"}}, "docker.execution.container.hostname"),
        ({"container": {"env": ["UNSET"]}}, "docker.execution.container.env"),
        ({"container": {"labels": {"trissh.user": "x"}}}, "docker.execution.container.labels"),
        ({"host": {"tmpfs": {"/run": "rw"}}}, "docker.execution.host.tmpfs"),
        ({"host": {"NanoCpus": 1_500_000_000}}, "docker.execution.host.NanoCpus"),
        ({"host": {"CapAdd": ["NET_ADMIN"]}}, "docker.execution.host.CapAdd"),
        ({"host": {"binds": ["cache:/cache"]}}, "docker.execution.host.binds"),
        ({"host": {"binds": ["/a:/b:ro,Z"]}}, "docker.execution.host.binds"),
        ({"host": {"networkmode": "bridge"}}, "docker.execution.host.networkmode"),
        ({"host": {"pidslimit": -1}}, "docker.execution.host.pidslimit"),
        (
            {"host": {"mounts": [{"Type": "volume", "Target": "/x"}]}},
            "docker.execution.host.mounts",
        ),
        ({"subsystems": {"netconf": "/usr/bin/netconf"}}, "docker.execution.subsystems.netconf"),
    ],
)
def test_what_trissh_cannot_apply_is_refused_naming_the_field(
    change: dict[str, Any], field: str
) -> None:
    execution: dict[str, Any] = {"container": {"image": "x"}}
    for key, value in change.items():
        execution[key] = {**execution.get(key, {}), **value}
    with pytest.raises(ConfigRefused, match=f"^config\\.{re.escape(field)}"):
        mapped_config({"docker": {"execution": execution}})


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"backend": "kubernetes"}, "config.backend"),
        ({"security": {"env": {"mode": "disable"}}}, "config.security.env.mode"),
        ({"security": {"defaultMode": "disable"}}, "config.security.defaultMode"),
        ({"security": {"forwarding": {"x11ForwardingMode": "enable"}}}, "x11ForwardingMode"),
        ({"docker": {"execution": {"imagePullPolicy": "Sometimes"}}}, "imagePullPolicy"),
    ],
)
def test_outside_the_container_too(config: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigRefused, match=re.escape(field)):
        mapped_config(config)


async def test_security_forwarding_modes_become_the_logins_forwarding_directions() -> None:
    """ContainerSSH's four forwarding switches, each one direction of trissh's two settings;
    an unset switch leaves that direction to trissh's own settings, ``filter`` refuses
    (ContainerSSH has no forwarding filters and refuses then too)."""
    result = mapped_config(
        {
            "security": {
                "forwarding": {
                    "forwardingMode": "enable",
                    "reverseForwardingMode": "filter",
                    "socketListenMode": "disable",
                    "x11ForwardingMode": "disable",
                }
            }
        }
    )
    assert result.forwarding == ForwardingGrant(
        ways={
            "allow_tcp_forwarding": DirectionGrant(local=True, remote=False),
            "allow_streamlocal_forwarding": DirectionGrant(local=None, remote=False),
        }
    )
    assert (result.container, result.ignored) == ({}, ())
    assert mapped_config({"Security": {"Forwarding": {"SocketForwardingMode": "enable"}}}) == (
        ConfigResult(
            container={},
            forwarding=ForwardingGrant(
                ways={"allow_streamlocal_forwarding": DirectionGrant(local=True)}
            ),
        )
    )
    with pytest.raises(ConfigRefused, match=r"config\.security\.forwarding\.forwardingMode: "):
        mapped_config({"security": {"forwarding": {"forwardingMode": "sometimes"}}})


def test_trissh_forwarding_keys_of_an_answer_set_the_logins_policy() -> None:
    """trissh's own ``config.trissh.forwarding``: the policy keys, checked as the file's are
    (when the login applies them), under ContainerSSH's switches; the limits stay the
    server's."""
    own = {
        "allow_agent_forwarding": False,
        "permit_open": ["db:5432"],
        "allow_tcp_forwarding": "no",
    }
    result = mapped_config(
        {"trissh": {"forwarding": own}, "security": {"forwarding": {"forwardingMode": "enable"}}}
    )
    settings = load_config(None, {"users": {"alice": {"forwarding": {"permit_listen": ["8000"]}}}})
    alice = settings.with_forwarding_grant("alice", result.forwarding)
    assert (alice.allow_agent_forwarding, alice.permit_open, alice.permit_listen) == (
        False, ("db:5432",), ("8000",),
    )  # fmt: skip
    assert alice.allow_tcp_forwarding == "local"  # "no", then the switch's local way
    with pytest.raises(ConfigRefused, match=r"config\.trissh\.forwarding\.max_channels: "):
        mapped_config({"trissh": {"forwarding": {"max_channels": 4096}}})
    bad = mapped_config({"trissh": {"forwarding": {"permit_open": ["db"]}}})
    with pytest.raises(ValueError, match=r"config_webhook\.trissh\.forwarding\.permit_open"):
        settings.with_forwarding_grant("alice", bad.forwarding)


@pytest.mark.parametrize(
    ("base", "grant", "result"),
    [
        ("yes", DirectionGrant(), "yes"),
        ("yes", DirectionGrant(local=False), "remote"),
        ("no", DirectionGrant(local=True), "local"),
        ("local", DirectionGrant(remote=True), "yes"),
        ("remote", DirectionGrant(local=True, remote=False), "local"),
        ("yes", DirectionGrant(local=False, remote=False), "no"),
    ],
)
def test_a_direction_grant_changes_only_the_directions_it_names(
    base: Direction, grant: DirectionGrant, result: Direction
) -> None:
    assert grant.applied(base) == result


async def test_config_server_wrong_types_are_errors(nursery: trio.Nursery) -> None:
    config = {"docker": {"execution": {"container": {"image": 42}}}}
    server = await start(nursery, answer({"config": config}))
    async with client(server.url) as hook:
        with pytest.raises(
            WebhookError, match=r"config\.docker\.execution\.container\.image: expected str"
        ):
            await hook.config(ConfigRequest(**INFO))
    server2 = await start(nursery, answer({"metadata": {}}))
    async with client(server2.url) as hook:
        with pytest.raises(WebhookError, match="config: Field required"):
            await hook.config(ConfigRequest(**INFO))


def test_config_mapping_details() -> None:
    # Go matches field names case-insensitively; YAML-style host.resources.* works too.
    result = mapped_config(
        {
            "Docker": {
                "Execution": {
                    "Container": {"Image": "a", "NetworkDisabled": True},
                    "Host": {"resources": {"memory": 100 * 1024 * 1024 + 1}},
                    "exposeAuthMetadataAsEnv": True,
                },
                "Timeouts": {"ContainerStart": "1.5m"},
            }
        }
    )
    assert result.container == {
        "image": "a",
        "network": "none",
        "memory_limit_mb": 100,
        "start_timeout": 90,
    }
    assert (result.ignored, result.expose_metadata) == ((), True)


def test_metadata_merge_newer_wins() -> None:
    old = Metadata(metadata={"a": Value("1"), "b": Value("2")}, files={"/f": FileValue(b"x")})
    new = Metadata(metadata={"b": Value("3", sensitive=True)})
    merged = old.merged(new)
    assert merged.metadata == {"a": Value("1"), "b": Value("3", sensitive=True)}
    assert merged.files == {"/f": FileValue(b"x")}
    assert merged.transmitted() == {
        "metadata": {"a": {"value": "1", "sensitive": False}},
        "files": {"/f": {"value": "eA==", "sensitive": False}},
    }
