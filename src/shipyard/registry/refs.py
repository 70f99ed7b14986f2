"""Names and references: `fraud`, `fraud:3`, `fraud@production`."""

from __future__ import annotations

import re
from dataclasses import dataclass

from shipyard.errors import InvalidInput

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
# Aliases may not look like numbers, so `{version}` in a URL is unambiguous.
_ALIAS = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,99}$")
_TAG_KEY = re.compile(r"^[A-Za-z0-9_.:/-]{1,200}$")

LATEST = "latest"
"""Pseudo-alias for the newest version that is not archived; cannot be assigned."""


def check_model_name(name: str) -> str:
    if not _MODEL_NAME.match(name):
        raise InvalidInput(
            f"invalid model name {name!r}: use letters, digits, '.', '_' or '-' "
            "(at most 200, starting with a letter or digit)"
        )
    return name


def check_alias(alias: str, *, assigning: bool = False) -> str:
    if not _ALIAS.match(alias):
        raise InvalidInput(
            f"invalid alias {alias!r}: start with a letter or '_', then letters, digits, "
            "'.', '_' or '-' (at most 100)"
        )
    if assigning and alias == LATEST:
        raise InvalidInput("'latest' is reserved: it always means the newest version")
    return alias


def check_tag_key(key: str) -> str:
    if not _TAG_KEY.match(key):
        raise InvalidInput(
            f"invalid tag key {key!r}: use letters, digits and '_.:/-' (at most 200)"
        )
    return key


@dataclass(frozen=True)
class ModelRef:
    """A model, optionally narrowed to a version number or an alias."""

    name: str
    version: int | None = None
    alias: str | None = None

    @property
    def is_model(self) -> bool:
        return self.version is None and self.alias is None

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}:{self.version}"
        if self.alias is not None:
            return f"{self.name}@{self.alias}"
        return self.name


_MAX_VERSION = 2**31 - 1
"""The highest version number: what every registry database stores in an INTEGER."""


def _version_number(text: str) -> int | None:
    """A version number from ASCII digits, or None: isdigit() alone passes '²', which
    int() refuses, and a number too big for the database column is no version."""
    if not (text.isascii() and text.isdigit()) or len(text) > len(str(_MAX_VERSION)):
        return None
    number = int(text)
    return number if 1 <= number <= _MAX_VERSION else None


def parse_version_or_alias(text: str) -> int | str:
    """A URL segment that is either a version number or an alias."""
    if text.isascii() and text.isdigit():
        version = _version_number(text)
        if version is None:
            raise InvalidInput(f"invalid version {text[:20]!r}: versions are 1 to {_MAX_VERSION}")
        return version
    return check_alias(text)


def parse_ref(text: str) -> ModelRef:
    """Parse `NAME`, `NAME:VERSION` or `NAME@ALIAS`."""
    if "@" in text:
        name, _, alias = text.partition("@")
        return ModelRef(check_model_name(name), alias=check_alias(alias))
    if ":" in text:
        name, _, version = text.partition(":")
        number = _version_number(version)
        if number is None:
            raise InvalidInput(f"invalid version in {text[:220]!r}: expected NAME:NUMBER")
        return ModelRef(check_model_name(name), version=number)
    return ModelRef(check_model_name(text))
