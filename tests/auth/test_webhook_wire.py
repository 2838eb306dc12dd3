"""The webhook messages on their own (the client against a real server: test_webhook.py)."""

from __future__ import annotations

import json

import pytest

from trissh.auth.webhook.wire import (
    MAX_ENTRIES,
    AuthorizationRequest,
    AuthResponse,
    KeyboardInteractiveResponse,
    Metadata,
    Value,
    parse,
)


def authz(name: str = "") -> AuthorizationRequest:
    return AuthorizationRequest(
        username="alice",
        remote_address="192.0.2.7:50022",
        connection_id="c0ffee",
        authenticated_username=name,
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"success": true, "environment": {"K": 1}}', "environment.K: Input should be an object"),
        (b'{"success": true, "metadata": []}', "metadata: Input should be an object"),
        (b'{"success": true, "files": {"/f": {"value": "!!"}}}', "files./f: value is not base64"),
        (b'{"success": null, "prompts": [{"prompt": "p", "x": 1}]}', "prompts.0.x: "),
    ],
)
def test_errors_name_the_field_as_the_wire_does(body: bytes, message: str) -> None:
    model = KeyboardInteractiveResponse if b"prompts" in body else AuthResponse
    with pytest.raises(ValueError) as caught:  # noqa: PT011
        parse(model, body)
    assert str(caught.value).startswith(message)


def test_null_maps_count_as_absent() -> None:
    answer = parse(AuthResponse, b'{"success": true, "metadata": null, "files": null}')
    assert answer.metadata == Metadata()


def test_authenticated_username_is_left_out_when_empty() -> None:
    assert "authenticatedUsername" not in json.loads(authz().body())
    assert json.loads(authz("alice.smith").body())["authenticatedUsername"] == "alice.smith"


def test_a_login_may_gather_more_entries_than_one_answer_may_send() -> None:
    def half(start: int) -> Metadata:
        return Metadata(metadata={f"k{i}": Value("v") for i in range(start, start + MAX_ENTRIES)})

    merged = half(0).merged(half(MAX_ENTRIES))
    assert len(merged.metadata) == 2 * MAX_ENTRIES
    too_many = {f"k{i}": {"value": "v"} for i in range(MAX_ENTRIES + 1)}
    with pytest.raises(ValueError, match="metadata: Dictionary should have at most 256 items"):
        parse(AuthResponse, json.dumps({"success": True, "metadata": too_many}).encode())
