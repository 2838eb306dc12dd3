"""What every settings section shares: strict, frozen pydantic models, and the error that
names each bad key."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError


class ConfigError(Exception):
    """The configuration is invalid; ``str()`` lists every problem with its key path."""


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_Section = TypeVar("_Section", bound=Model)


def merged(base: _Section, override: Mapping[str, Any], where: str) -> _Section:
    """``base`` with ``override``'s keys on top, validated; errors name ``where``."""
    if not override:
        return base
    try:
        return type(base).model_validate({**base.model_dump(), **override})
    except ValidationError as exc:
        problems = "; ".join(
            f"{where}.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ValueError(problems) from None
