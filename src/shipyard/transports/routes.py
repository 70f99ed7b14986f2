"""The one REST route table, compiled for matching: the gate's rules and the inference
fast path both come from `security.policy.REST_RULES`.

Written here rather than taken from the web framework's router: the gate must decide
on the same table whatever order FastAPI keeps its routes in, and the inference fast
path must match without a regex or a router (string splits, a dict lookup).
"""

from __future__ import annotations

from dataclasses import dataclass

from shipyard.security.policy import REST_RULES, Permission


@dataclass(frozen=True, slots=True)
class RouteMatch:
    template: str
    """The path template, as security/policy.py's rules name it."""
    permission: Permission
    params: dict[str, str]


@dataclass(frozen=True, slots=True)
class _Compiled:
    template: str
    permission: Permission
    segments: tuple[str, ...]
    """The template split on "/": literal segments, or "{param}" for any non-empty one."""


class RouteTable:
    def __init__(self, rules: dict[tuple[str, str], Permission]) -> None:
        self._by_shape: dict[tuple[str, int], list[_Compiled]] = {}
        for (method, template), permission in rules.items():
            segments = tuple(template.split("/"))
            compiled = _Compiled(template, permission, segments)
            self._by_shape.setdefault((method, len(segments)), []).append(compiled)
        for candidates in self._by_shape.values():  # literal segments before parameters
            candidates.sort(key=lambda c: [part.startswith("{") for part in c.segments])

    def match(self, method: str, path: str) -> RouteMatch | None:
        """The rule a request falls under, with its path parameters; None if none does."""
        parts = path.split("/")
        method = "GET" if method == "HEAD" else method
        for candidate in self._by_shape.get((method, len(parts)), ()):
            params = _bind(candidate.segments, parts)
            if params is not None:
                return RouteMatch(candidate.template, candidate.permission, params)
        return None


def _bind(segments: tuple[str, ...], parts: list[str]) -> dict[str, str] | None:
    params: dict[str, str] = {}
    for segment, part in zip(segments, parts, strict=True):
        if segment.startswith("{"):
            if not part:
                return None
            params[segment[1:-1]] = part
        elif segment != part:
            return None
    return params


ROUTES = RouteTable(REST_RULES)
