"""Query parameters of camera URIs, checked the same way for every kind: unknown or repeated keys
and bad values are one-line CameraErrors naming the URI, the key and what is accepted."""

from __future__ import annotations

from collections.abc import Collection
from urllib.parse import parse_qsl

from ...errors import CameraError


def query_params(uri: str, query: str, accepted: Collection[str]) -> dict[str, str]:
    """``k=v&…`` as a dict; every key must be in ``accepted`` and given once."""
    seen: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in accepted:
            raise CameraError(f"camera URI {uri!r}: unknown parameter {key!r}; accepted: {', '.join(accepted)}")
        if key in seen:
            raise CameraError(f"camera URI {uri!r}: parameter {key!r} is given twice")
        seen[key] = value
    return seen


def invalid(uri: str, key: str, value: str, accepted: str) -> CameraError:
    """The error for ``key=value`` that is not valid."""
    return CameraError(f"camera URI {uri!r}: {key}={value!r} is not valid; accepted: {accepted}")
