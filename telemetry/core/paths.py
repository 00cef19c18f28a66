"""Request paths as bounded label values: configured templates first, then id-looking segments replaced."""

from __future__ import annotations

import re
from collections.abc import Sequence

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_HEX_ID = re.compile(r"(?=.*\d)[0-9a-fA-F]{16,}")
_NUMBER = re.compile(r"[0-9]+")
_PLACEHOLDER = re.compile(r"\{[^/{}]*\}")
MAX_SEGMENTS = 12
MAX_SEGMENT_CHARS = 64


class PathTemplates:
    """Compiled templates like `/api/users/{id}/orders`; `{name}` matches one non-empty segment."""

    def __init__(self, templates: Sequence[str]) -> None:
        self._compiled = [(t, re.compile(self._to_regex(t))) for t in templates]

    @staticmethod
    def _to_regex(template: str) -> str:
        pieces = _PLACEHOLDER.split(template)
        return "[^/]+".join(re.escape(p) for p in pieces)

    def template(self, path: str) -> str:
        """The label value for a raw request path (query and fragment ignored)."""
        path = path.split("?", 1)[0].split("#", 1)[0] or "/"
        for template, regex in self._compiled:
            if regex.fullmatch(path):
                return template
        segments = path.split("/")
        if len(segments) > MAX_SEGMENTS + 1:
            segments = [*segments[: MAX_SEGMENTS + 1], "{rest}"]
        return "/".join(_segment(s) for s in segments)


def _segment(segment: str) -> str:
    if not segment:
        return segment
    if _NUMBER.fullmatch(segment):
        return "{num}"
    if _UUID.fullmatch(segment):
        return "{uuid}"
    if _HEX_ID.fullmatch(segment) or len(segment) > MAX_SEGMENT_CHARS:
        return "{id}"
    return segment
