"""The webhook messages, one frozen pydantic model each; the wire format is in docs/webhooks.md.

Requests are serialized by their models (``body``), with ContainerSSH's field names as
aliases; answers are validated by theirs (``parse``), strictly: unknown fields, wrong types,
bad base64 and oversized maps or strings are errors, as in ContainerSSH's decoder (which,
being Go's, would also accept field names in another case; this one does not). Python code
builds requests by field name (``PasswordRequest(username=..., password=...)``).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Annotated, Any, Final, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidationInfo,
    field_serializer,
    model_serializer,
    model_validator,
)
from pydantic.dataclasses import dataclass
from pydantic_core import PydanticCustomError

from trissh.addresses import join_host_port
from trissh.protocol.wire import Reader

#: Entries in each of an answer's ``metadata``, ``environment`` and ``files`` maps.
MAX_ENTRIES: Final = 256
MAX_PROMPTS: Final = 16
MAX_STATE_CHARS: Final = 4096
#: ContainerSSH's ``DynamicMetadata``: inline beside the other fields on the wire.
_MAPS: Final = ("metadata", "environment", "files")
#: Request fields left out when empty (``omitempty`` in ContainerSSH).
_OMITTED_WHEN_EMPTY: Final = frozenset({"authenticatedUsername"})


class _Message(BaseModel):
    """Frozen; strict types; unknown fields are errors."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# --- metadata -------------------------------------------------------------------------------


# Values are pydantic dataclasses rather than models only so that they can be built
# positionally, ``Value("x", sensitive=True)``; they validate and serialize the same way.
_STRICT: Final = ConfigDict(extra="forbid", strict=True)


@dataclass(frozen=True, config=_STRICT)
class Value:
    """A metadata or environment value; a sensitive one is never sent to a later webhook."""

    value: str
    sensitive: bool = False

    def __repr__(self) -> str:
        shown = "<hidden>" if self.sensitive else repr(self.value)
        return f"Value({shown}, sensitive={self.sensitive})"


@dataclass(frozen=True, config=_STRICT)
class FileValue:
    """A file to place in the container (path -> content); base64 on the wire."""

    value: bytes
    sensitive: bool = False

    def __repr__(self) -> str:
        return f"FileValue(<{len(self.value)} bytes>, sensitive={self.sensitive})"

    @model_validator(mode="before")
    @classmethod
    def _decode(cls, data: Any, info: ValidationInfo) -> Any:
        """Strict base64 (no line breaks); the error names the file, not ``value``."""
        if info.mode != "json" or not isinstance(data, dict):
            return data
        if not isinstance(encoded := data.get("value"), str):
            return data
        try:
            return {**data, "value": base64.b64decode(encoded, validate=True)}
        except ValueError:
            raise PydanticCustomError("base64", "value is not base64") from None

    @field_serializer("value", when_used="json")
    def _encode(self, value: bytes) -> str:
        return base64.b64encode(value).decode("ascii")


class Metadata(_Message):
    """ContainerSSH's dynamic metadata, carried from one webhook to the next."""

    metadata: dict[str, Value] = Field(default_factory=dict, max_length=MAX_ENTRIES)
    environment: dict[str, Value] = Field(default_factory=dict, max_length=MAX_ENTRIES)
    files: dict[str, FileValue] = Field(default_factory=dict, max_length=MAX_ENTRIES)

    def merged(self, newer: Metadata) -> Metadata:
        """This metadata updated entry by entry with ``newer`` (newer entries win).

        Not validated again: ``MAX_ENTRIES`` bounds one answer, not a login's sum of them.
        """
        return Metadata.model_construct(
            metadata={**self.metadata, **newer.metadata},
            environment={**self.environment, **newer.environment},
            files={**self.files, **newer.files},
        )

    def transmitted(self) -> dict[str, Any]:
        """The JSON fields a webhook receives: sensitive entries and empty maps left out."""
        return self.model_dump(mode="json")

    @model_serializer(mode="wrap")
    def _sent(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, entries in handler(self).items():
            kept: Mapping[str, Value | FileValue] = getattr(self, name)
            sent = {key: entry for key, entry in entries.items() if not kept[key].sensitive}
            if sent:
                out[name] = sent
        return out


# --- requests -------------------------------------------------------------------------------


def remote_address(host: str, port: int) -> str:
    """``remoteAddress`` as ContainerSSH writes it (Go's JoinHostPort: IPv6 in brackets)."""
    return join_host_port(host, port)


def authorized_key(blob: bytes) -> str:
    """A key (or certificate) blob in authorized_keys format without comment, for ``publicKey``."""
    key_type = Reader(blob).ascii(64)
    return f"{key_type} {base64.b64encode(blob).decode('ascii')}"


class ConnectionInfo(_Message):
    """The fields every webhook receives (ContainerSSH's ``ConnectionAuthPendingMetadata``)."""

    model_config = ConfigDict(validate_by_name=True, serialize_by_alias=True)

    username: str
    remote_address: str = Field(alias="remoteAddress")
    connection_id: str = Field(alias="connectionId")
    client_version: str = Field("", alias="clientVersion")
    metadata: Metadata = Field(default_factory=Metadata)

    def body(self) -> bytes:
        """The request's JSON body, as the webhook receives it."""
        return json.dumps(self.model_dump(mode="json"), separators=(",", ":")).encode("utf-8")

    @model_serializer(mode="wrap")
    def _inline(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """The metadata maps sit beside the other fields (Go's ``json:",inline"``)."""
        out: dict[str, Any] = {}
        for key, value in handler(self).items():
            if key == "metadata":
                out.update(value)
            elif value or key not in _OMITTED_WHEN_EMPTY:
                out[key] = value
        return out


class PasswordRequest(ConnectionInfo):
    """``/password``."""

    password: str = Field(repr=False, serialization_alias="passwordBase64")

    @field_serializer("password")
    def _encode(self, password: str) -> str:
        return base64.b64encode(password.encode("utf-8")).decode("ascii")


class PublicKeyRequest(ConnectionInfo):
    """``/pubkey``: whether the key may log in (possession is checked by the SSH layer)."""

    #: authorized_keys format, see ``authorized_key``.
    public_key: str = Field(alias="publicKey")


class AuthorizationRequest(ConnectionInfo):
    """``/authz`` and the configuration server (``ConnectionAuthenticatedMetadata``)."""

    authenticated_username: str = Field("", alias="authenticatedUsername")


ConfigRequest = AuthorizationRequest


class KeyboardInteractiveRequest(ConnectionInfo):
    """One round of ``/keyboard-interactive`` (trissh's extension)."""

    submethods: str = ""
    round: int = 0
    state: str | None = None
    answers: tuple[str, ...] = Field((), repr=False)

    def next_round(
        self, response: KeyboardInteractiveResponse, answers: tuple[str, ...]
    ) -> KeyboardInteractiveRequest:
        """The request that answers ``response``'s prompts."""
        return self.model_copy(
            update={"round": self.round + 1, "state": response.state, "answers": answers}
        )


# --- answers --------------------------------------------------------------------------------


class Answer(_Message):
    """What every answer may carry: the metadata maps, gathered here into ``metadata``, and
    the connection's own fields, which ContainerSSH's answer types embed (its OpenAPI
    document marks ``username``, ``remoteAddress`` and ``connectionId`` required in them):
    a server built from that document echoes them. They are checked for type and not used.
    """

    model_config = ConfigDict(validate_by_name=True)

    metadata: Metadata = Field(default_factory=Metadata)
    echoed_username: str | None = Field(None, alias="username", repr=False)
    echoed_remote_address: str | None = Field(None, alias="remoteAddress", repr=False)
    echoed_connection_id: str | None = Field(None, alias="connectionId", repr=False)
    echoed_client_version: str | None = Field(None, alias="clientVersion", repr=False)

    @model_validator(mode="before")
    @classmethod
    def _gather(cls, data: Any, info: ValidationInfo) -> Any:
        """The wire's inline maps into ``metadata`` (a null map counts as absent).

        What this returns is validated as Python objects (still strictly): a JSON array
        arrives as a ``list``. ``parse`` names the maps' errors as the wire does.
        """
        if info.mode != "json" or not isinstance(data, dict):
            return data
        rest = {key: value for key, value in data.items() if key not in _MAPS}
        maps = {name: data[name] for name in _MAPS if data.get(name) is not None}
        return {**rest, "metadata": maps}


def _none_when_empty(name: str | None) -> str | None:
    return name or None


#: The name the server verified, if it differs from the login name (ContainerSSH's
#: ``authenticatedUsername``); None when absent or empty.
_VerifiedName = Annotated[str | None, AfterValidator(_none_when_empty)]


class AuthResponse(Answer):
    """The answer of ``/password``, ``/pubkey`` and ``/authz``."""

    success: bool
    authenticated_username: _VerifiedName = Field(None, alias="authenticatedUsername")


@dataclass(frozen=True, config=_STRICT)
class Prompt:
    """One keyboard-interactive prompt (RFC 4256 §3.2)."""

    prompt: str = Field(max_length=1024)
    echo: bool = False


class KeyboardInteractiveResponse(Answer):
    """One answer of ``/keyboard-interactive``."""

    #: Required: None asks another round with ``prompts``; True/False is the verdict.
    success: bool | None
    name: str = Field("", max_length=256)
    instruction: str = Field("", max_length=4096)
    #: Lax only to take the JSON array as a tuple (Answer._gather hands on Python lists);
    #: each prompt is validated strictly.
    prompts: tuple[Prompt, ...] = Field((), max_length=MAX_PROMPTS, strict=False)
    state: str | None = Field(None, max_length=MAX_STATE_CHARS)
    authenticated_username: _VerifiedName = Field(None, alias="authenticatedUsername")


class ConfigResponse(Answer):
    """The configuration server's answer; ``containerssh.py`` maps ``config``."""

    config: dict[str, Any]


_AnswerT = TypeVar("_AnswerT", bound=Answer)


def parse(model: type[_AnswerT], body: bytes) -> _AnswerT:
    """Validate an answer.

    Raises:
        ValueError: one line naming the first bad field (as on the wire), never its value.
    """
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        loc = first["loc"]
        if loc[:1] == ("metadata",) and loc[1:2] and loc[1] in _MAPS:
            loc = loc[1:]  # gathered by Answer._gather; name the field as the wire does
        where = ".".join(str(part) for part in loc) or "body"
        raise ValueError(f"{where}: {first['msg']}") from None
