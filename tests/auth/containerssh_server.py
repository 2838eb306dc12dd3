"""An authentication and configuration server written from ContainerSSH's published OpenAPI
document ("ContainerSSH Authentication and Configuration Server", 0.5.0, swagger 2.0), not
from trissh's client: what a ContainerSSH deployment runs, as its document describes it.

Requests are checked against the document's definitions (``PasswordAuthRequest``,
``PublicKeyAuthRequest``, ``AuthorizationRequest``, ``ConfigRequest``: the required
``username``, ``remoteAddress`` and ``connectionId``, the types of every field); a request
that does not conform is answered 400 and recorded in ``violations``. Answers are the
document's ``AuthResponseBody`` and ``ConfigResponseBody``: the connection's fields echoed
(required there), ``success`` / ``config``, and the ``metadata``, ``environment`` and
``files`` maps (``MetadataValue``: ``{"value": string, "sensitive": bool}``;
``BinaryMetadataValue``: its value as Go writes a ``[]byte``, base64).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

import trio

from .http_server import Answer, Received, Server, start

#: Fields every request carries (ConnectionAuthPendingMetadata), with their JSON types.
_CONNECTION: dict[str, type] = {
    "username": str,
    "remoteAddress": str,
    "connectionId": str,
    "clientVersion": str,
}
_REQUIRED = ("username", "remoteAddress", "connectionId")
_EXTRA: dict[str, dict[str, type]] = {
    "/password": {"passwordBase64": str},
    "/pubkey": {"publicKey": str},
    "/authz": {"authenticatedUsername": str},
    "/config": {"authenticatedUsername": str},
}
_MAPS = ("metadata", "environment", "files")


def _violation(path: str, body: Any) -> str | None:
    """Why ``body`` does not conform to the request definition of ``path``, or None."""
    if not isinstance(body, dict):
        return "the body is not an object"
    allowed = {**_CONNECTION, **_EXTRA.get(path, {})}
    for name in (*_REQUIRED, *_EXTRA.get(path, {})):
        if name not in body and name != "authenticatedUsername":  # omitempty
            return f"{name} is required"
    for name, value in body.items():
        if name in _MAPS:
            if not isinstance(value, dict):
                return f"{name} is not an object"
            for key, entry in value.items():
                if not isinstance(entry, dict) or not isinstance(entry.get("value"), str):
                    return f"{name}.{key} is not a metadata value"
                if not isinstance(entry.get("sensitive", False), bool):
                    return f"{name}.{key}.sensitive is not a boolean"
        elif name not in allowed:
            return f"{name} is not in the document"
        elif not isinstance(value, allowed[name]):
            return f"{name} is not a {allowed[name].__name__}"
    return None


def value(text: str, *, sensitive: bool = False) -> dict[str, Any]:
    return {"value": text, "sensitive": sensitive}


def file_value(content: bytes, *, sensitive: bool = False) -> dict[str, Any]:
    return {"value": base64.b64encode(content).decode(), "sensitive": sensitive}


@dataclass
class ContainerSSHServer:
    """Scriptable answers per endpoint; every conforming request kept, by endpoint."""

    password: str = "secret"
    keys: set[str] = field(default_factory=set)
    authz: bool = True
    #: Extra answer fields (metadata, environment, files, authenticatedUsername) per path.
    extras: dict[str, dict[str, Any]] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    received: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    server: Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    async def __call__(self, request: Received) -> Answer:
        path = request.path.removeprefix("/hooks").split("?")[0]
        body = request.body
        if request.method != "POST" or path not in _EXTRA:
            return 404, b"{}"
        problem = _violation(path, body)
        if problem is not None:
            self.violations.append(f"{path}: {problem}")
            return 400, b"{}"
        self.received.setdefault(path, []).append(body)
        echo = {name: body[name] for name in _CONNECTION if name in body}
        if path == "/config":
            return {**echo, "config": self.config, **self.extras.get(path, {})}
        if path == "/password":
            ok = base64.b64decode(body["passwordBase64"]).decode() == self.password
        elif path == "/pubkey":
            ok = body["publicKey"] in self.keys
        else:
            ok = self.authz
        return {**echo, "success": ok, **(self.extras.get(path, {}) if ok else {})}


async def start_containerssh_server(nursery: trio.Nursery) -> ContainerSSHServer:
    hooks = ContainerSSHServer()
    hooks.server = await start(nursery, hooks)
    return hooks
