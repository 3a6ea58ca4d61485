"""Request-model building blocks shared by the routers.

Every request body is a `RequestModel`: strict types, unknown fields refused, and text that
cannot be stored (NUL, lone surrogates, control characters) refused with a 422 before it
reaches the database.
"""

from __future__ import annotations

import re
from typing import Annotated

from email_validator import EmailNotValidError, validate_email
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

__all__ = ["Description", "Email", "Name", "Password", "RequestModel", "Token", "WholeNumber"]

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


# The documented `pattern`s state what the validators above enforce, so a client (or a fuzzer)
# can tell valid input from the schema alone; they are not what enforces it. `_BLANK` lists the
# characters outside `_CONTROL` that `str.strip()` removes.
_BLANK = r" \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_SINGLE_LINE_PATTERN = rf"^[^\x00-\x1f\x7f]*[^\x00-\x1f\x7f{_BLANK}][^\x00-\x1f\x7f]*$"
_MULTI_LINE_PATTERN = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"
_NO_NUL_PATTERN = r"^[^\x00]*$"

Email = Annotated[
    # 254 characters is the longest address `email_validator` (and RFC 5321) accepts.
    str, Field(
        min_length=3, max_length=254, examples=["ada@example.com"],
        json_schema_extra={"format": "email"},
    ),
    AfterValidator(normalize_email),
]  # fmt: skip
Password = Annotated[
    str, Field(min_length=8, max_length=256, json_schema_extra={"pattern": _NO_NUL_PATTERN}),
    AfterValidator(_password),
]  # fmt: skip
Name = Annotated[
    str, Field(
        min_length=1, max_length=100,
        json_schema_extra={"pattern": _SINGLE_LINE_PATTERN},
    ),
    AfterValidator(_single_line),
]  # fmt: skip
Description = Annotated[
    str, Field(max_length=2000, json_schema_extra={"pattern": _MULTI_LINE_PATTERN}),
    AfterValidator(_multi_line),
]  # fmt: skip
Token = Annotated[str, Field(min_length=1, max_length=512, pattern=r"^[A-Za-z0-9_\-]+$")]


def _integral(value: object) -> object:
    # JSON has one number type: 7.0 is the integer 7, for JSON Schema's `integer` too.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# Put last in an int field's Annotated (placed before `Field`, the bounds drop out of the schema).
WholeNumber = BeforeValidator(_integral)
