"""What every settings section shares: strict, frozen pydantic models, and the error that
names each bad key."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError


class ConfigError(Exception):
    """The configuration is invalid; ``str()`` lists every problem with its key path."""


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_Section = TypeVar("_Section", bound=Model)


def _off_or_a_second(value: float) -> float:
    if 0 < value < 1:
        raise ValueError("0 (off) or at least 1 second, as sshd's whole seconds")
    return value


#: A timer's period: 0 turns it off, else at least a second (a typo of 0.001 would make
#: each connection's timer fire a thousand times a second).
TimerSeconds = Annotated[float, Field(ge=0), AfterValidator(_off_or_a_second)]


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
