"""Request-model building blocks shared by the routers.

Every request body is a `RequestModel`: strict types, unknown fields refused, and text that
cannot be stored (NUL, lone surrogates, control characters) refused with a 422 before it
reaches the database.
"""

from __future__ import annotations

import re
from typing import Annotated

from email_validator import EmailNotValidError, validate_email
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

__all__ = ["Description", "Email", "Name", "Password", "RequestModel", "Token"]

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CONTROL_EXCEPT_WHITESPACE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


class RequestModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def _storable(value: str, pattern: re.Pattern[str], what: str) -> str:
    if _SURROGATE.search(value):
        raise ValueError(f"{what} contains an unpaired surrogate")
    if pattern.search(value):
        raise ValueError(f"{what} contains control characters")
    return value


def _single_line(value: str) -> str:
    value = _storable(value, _CONTROL, "text").strip()
    if not value:
        raise ValueError("must not be blank")
    return value


def _multi_line(value: str) -> str:
    return _storable(value, _CONTROL_EXCEPT_WHITESPACE, "text")


def _password(value: str) -> str:
    return _storable(value, re.compile("\x00"), "password")


def normalize_email(value: str) -> str:
    """Validate an address and fold it to one canonical, lower-case form."""
    _storable(value, _CONTROL, "e-mail")
    try:
        result = validate_email(
            value.strip(), check_deliverability=False, globally_deliverable=False,
            test_environment=True,
        )  # fmt: skip
    except EmailNotValidError as exc:
        raise ValueError(str(exc)) from exc
    return result.normalized.lower()


Email = Annotated[
    str, Field(min_length=3, max_length=320, examples=["ada@example.com"]),
    AfterValidator(normalize_email),
]  # fmt: skip
Password = Annotated[str, Field(min_length=8, max_length=256), AfterValidator(_password)]
Name = Annotated[str, Field(min_length=1, max_length=100), AfterValidator(_single_line)]
Description = Annotated[str, Field(max_length=2000), AfterValidator(_multi_line)]
Token = Annotated[str, Field(min_length=1, max_length=512, pattern=r"^[A-Za-z0-9_\-]+$")]
