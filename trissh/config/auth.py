"""``[auth]`` and ``[users.NAME]``: credentials, webhooks and who may log in how."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from trissh.auth.names import DEFAULT_MAX_BYTES, DEFAULT_PATTERN, UserNameRule
from trissh.config.base import Model

AUTH_METHODS = ("publickey", "password", "keyboard-interactive", "gssapi-with-mic")


def _check_chains(value: tuple[str, ...] | None) -> tuple[str, ...] | None:
    for chain in value or ():
        methods = [part.strip() for part in chain.split(",")]
        unknown = [m for m in methods if m not in AUTH_METHODS]
        if unknown or not all(methods):
            raise ValueError(
                f"chain {chain!r}: methods are comma-separated, from {', '.join(AUTH_METHODS)}"
            )
    return value


class UserSection(Model):
    """Settings of one user name: credentials, and tables that override the server-wide
    ``[container]``, ``[session]`` and ``[forwarding]`` key by key."""

    #: OpenSSH authorized_keys lines (options allowed), or RFC 4716 blocks (one per entry).
    authorized_keys: tuple[str, ...] = ()
    authorized_keys_file: Path | None = None
    #: argon2id hash from ``trissh hash-password``.
    password_hash: str | None = None
    #: File with the user's base32 TOTP secret; keyboard-interactive then asks for a code.
    totp_secret_file: Path | None = None
    #: sshd's AuthenticationMethods: chains like "publickey,keyboard-interactive".
    authentication_methods: tuple[str, ...] | None = None
    #: Let the user list, add and remove their own keys through the RFC 4819 publickey
    #: subsystem (``[auth] user_keys_directory``); such keys log in from the next login on.
    publickey_subsystem: bool = False
    #: Shortcut for ``container.image``.
    image: str | None = None
    container: dict[str, Any] = Field(default_factory=dict)
    forwarding: dict[str, Any] = Field(default_factory=dict)
    session: dict[str, Any] = Field(default_factory=dict)

    @field_validator("password_hash")
    @classmethod
    def _check_hash(cls, value: str | None) -> str | None:
        from trissh.auth.passwords import check_hash

        return None if value is None else check_hash(value)

    @field_validator("authentication_methods")
    @classmethod
    def _check_methods(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return _check_chains(value)


class WebhookSection(Model):
    """An HTTP service trissh asks (ContainerSSH's auth and configuration protocols)."""

    url: str
    #: Seconds per attempt (connect, send, answer).
    timeout: float = Field(10.0, gt=0, le=300)
    #: Seconds one request may take with its retries (ContainerSSH's ``authTimeout``):
    #: every failure (no answer, any status but 200, a malformed answer) is retried every
    #: ``retry_interval`` seconds until then.
    auth_timeout: float = Field(60.0, gt=0, le=3600)
    retry_interval: float = Field(10.0, gt=0, le=300)
    #: At most this many retries (unset: as many as ``auth_timeout`` allows).
    retries: int | None = Field(None, ge=0, le=1000)
    #: PEM file of the CA that signed the server's certificate (default: system CAs).
    ca_file: Path | None = None
    #: PEM client certificate and key, for mutual TLS.
    client_cert: Path | None = None
    client_key: Path | None = None

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("url must start with http:// or https://")
        return value.rstrip("/")


class AuthWebhookSection(WebhookSection):
    """``[auth.webhook]``: ContainerSSH's auth webhook (``/password``, ``/pubkey``)."""

    #: Ask ``/authz`` once a user has passed authentication.
    authz: bool = False
    #: Let ``/keyboard-interactive`` drive the prompts (trissh's extension; MFA services).
    keyboard_interactive: bool = False


class KerberosSection(Model):
    """``[auth.kerberos]``: ``gssapi-with-mic`` (RFC 4462) against a keytab."""

    #: The keytab with the service principal's keys (readable by trissh alone).
    keytab: Path
    #: The principal clients get tickets for: ``host/NAME@REALM``, NAME being the name
    #: clients connect to. "" accepts any principal of the keytab (sshd's
    #: ``GSSAPIStrictAcceptorCheck no``).
    service_principal: str = ""
    #: sshd's default rule: a principal ``NAME@REALM`` of one of these realms may log in
    #: as the user NAME (one component: ``NAME/admin@REALM`` may not).
    realms: tuple[str, ...] = ()
    #: And explicitly: principal -> the user names it may log in as.
    principals: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    #: Write the credentials a client delegates (``ssh -o GSSAPIDelegateCredentials=yes``)
    #: into the container as a ccache file, and point KRB5CCNAME at it.
    delegate_credentials: bool = False
    #: Where in the container that ccache goes (``krb5cc_trissh_CONNECTION-ID`` in it).
    ccache_directory: str = "/tmp"  # noqa: S108 (the container's own /tmp; the file is 0600)

    @field_validator("service_principal")
    @classmethod
    def _check_service(cls, value: str) -> str:
        name, at, realm = value.rpartition("@")
        if value and (not at or not realm or "/" not in name or name.startswith("/")):
            raise ValueError("must look like host/NAME@REALM, or be empty")
        return value

    @field_validator("realms")
    @classmethod
    def _check_realms(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for realm in value:
            if not realm or "@" in realm or "/" in realm:
                raise ValueError(f"{realm!r} is not a realm name")
        return value

    @field_validator("principals")
    @classmethod
    def _check_principals(cls, value: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        for principal in value:
            if "@" not in principal.lstrip("@"):
                raise ValueError(f"{principal!r}: principals are NAME@REALM")
        return value

    @field_validator("ccache_directory")
    @classmethod
    def _check_directory(cls, value: str) -> str:
        if not value.startswith("/") or ".." in value.split("/") or "\0" in value:
            raise ValueError("must be an absolute path without '..'")
        return value.rstrip("/") or "/"

    @model_validator(mode="after")
    def _check_someone(self) -> KerberosSection:
        if not self.realms and not self.principals:
            raise ValueError("set realms or principals: no one could log in")
        return self


class AuthSection(Model):
    """``[auth]``: server-wide authentication settings."""

    @field_validator("banner")
    @classmethod
    def _check_banner(cls, value: str) -> str:
        if "\0" in value:
            raise ValueError("the banner may not contain NUL")
        return value

    #: Asked for users and keys the local configuration does not accept.
    webhook: AuthWebhookSection | None = None
    #: ContainerSSH's configuration server: its answer overrides ``[container]`` per login.
    config_webhook: WebhookSection | None = None
    #: Shown by clients before they authenticate (sshd's ``Banner``; RFC 4252 §5.4).
    banner: str = Field("", max_length=8192)

    #: CA public keys (OpenSSH lines or RFC 4716 blocks) whose user certificates are
    #: trusted, for any user whose name is among the certificate's principals.
    trusted_user_ca_keys: tuple[str, ...] = ()
    trusted_user_ca_keys_file: Path | None = None
    #: A KRL (``ssh-keygen -k``) or a list of public keys that may never log in, nor any
    #: certificate of theirs; re-read on SIGHUP (sshd's RevokedKeys).
    revoked_keys: Path | None = None
    #: Seconds added (randomized between half and 1.5 times) before answering a failed
    #: password, code or signature: guessing gets slower and timing tells nothing.
    failure_delay: float = Field(0.3, ge=0, le=10)
    #: AuthenticationMethods for users without their own; default: any one method the
    #: user has credentials for.
    authentication_methods: tuple[str, ...] | None = None
    #: A user name must match this (Python regex, the whole name) and be printable, or
    #: the login fails like a wrong key. Default: no whitespace, no "/", not starting
    #: with "-" or ".".
    user_name_pattern: str = DEFAULT_PATTERN
    #: Bytes (UTF-8) a user name may have.
    user_name_max_bytes: int = Field(DEFAULT_MAX_BYTES, ge=1, le=256)
    #: Kerberos logins (gssapi-with-mic); off unless this table is set.
    kerberos: KerberosSection | None = None
    #: Where keys users add through the publickey subsystem are kept, a file per user;
    #: default: ``user-keys`` in trissh's state directory.
    user_keys_directory: Path | None = None
    #: How many keys one user may keep there.
    max_user_keys: int = Field(32, ge=1, le=1000)

    @field_validator("authentication_methods")
    @classmethod
    def _check_methods(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return _check_chains(value)

    @field_validator("user_name_pattern")
    @classmethod
    def _check_pattern(cls, value: str) -> str:
        try:
            UserNameRule(value)
        except re.error as exc:
            raise ValueError(f"user_name_pattern {value!r}: {exc}") from None
        return value

    def user_names(self) -> UserNameRule:
        """The rule user names must pass (:mod:`trissh.auth.names`)."""
        return UserNameRule(self.user_name_pattern, self.user_name_max_bytes)
