"""The policy document model: what YAML files and the admin API accept (rules, lists, limits).

Validation here is structural (types, one operator per matcher, known attributes); compiling
(`rules.compile_snapshot`) checks references between items and compiles regexes.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails

from policy.core.adaptive import AdaptiveDoc
from policy.structs import PolicyError

__all__ = [
    "ATTRIBUTE_FIELDS",
    "ATTRIBUTE_MAPS",
    "AllowAction",
    "DenyAction",
    "LimitDoc",
    "ListDoc",
    "MatcherDoc",
    "PolicyDocument",
    "RuleDoc",
    "check_attribute",
    "parse_document",
]

# Single-valued attributes a rule may read.
ATTRIBUTE_FIELDS = frozenset(
    {
        "source.address",
        "source.principal",
        "source.namespace",
        "source.service_account",
        "source.trust_domain",
        "source.service",
        "destination.address",
        "destination.port",
        "destination.host",
        "destination.service",
        "request.id",
        "request.method",
        "request.path",
        "request.url",
        "request.scheme",
    }
)
# Attribute families keyed by a name: request.headers.x-user, request.jwt.sub, ...
ATTRIBUTE_MAPS = (
    "source.labels.",
    "destination.labels.",
    "request.headers.",
    "request.query.",
    "request.jwt.",
    "context.",
)
# fullmatch everywhere: `$` would also accept a trailing newline, which names carry into headers,
# metric labels and files.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}")
_STRICT = ConfigDict(extra="forbid", frozen=True)


def check_attribute(name: str) -> str:
    if name in ATTRIBUTE_FIELDS:
        return name
    for family in ATTRIBUTE_MAPS:
        if name.startswith(family) and len(name) > len(family):
            return name.lower() if family == "request.headers." else name
    raise ValueError(
        f"unknown attribute {name!r}; use one of {sorted(ATTRIBUTE_FIELDS)} "
        f"or a name under {list(ATTRIBUTE_MAPS)}"
    )


class MatcherDoc(BaseModel):
    """Exactly one operator. Absent attributes match only `present: false`."""

    model_config = _STRICT

    exact: str | None = None
    prefix: str | None = None
    suffix: str | None = None
    glob: str | None = Field(None, description="* within a path segment, ** across segments, ? one character")
    regex: str | None = Field(None, description="RE2 syntax, full match")
    in_: list[str] | None = Field(None, alias="in")
    in_list: str | None = Field(
        None, description="name of a list (ip/cidr lists for addresses, strings otherwise)"
    )
    cidr: list[str] | None = None
    present: bool | None = None
    ignore_case: bool = False

    @model_validator(mode="after")
    def _one_operator(self) -> MatcherDoc:
        ops = [n for n in self.operator_names() if getattr(self, n) is not None]
        if len(ops) != 1:
            raise ValueError(
                "a matcher needs exactly one of exact, prefix, suffix, glob, regex, in, in_list, cidr, "
                "present" + (f" (got {', '.join(ops)})" if ops else "")
            )
        return self

    @staticmethod
    def operator_names() -> tuple[str, ...]:
        return ("exact", "prefix", "suffix", "glob", "regex", "in_", "in_list", "cidr", "present")

    @property
    def operator(self) -> str:
        return next(n for n in self.operator_names() if getattr(self, n) is not None)


class DenyAction(BaseModel):
    model_config = _STRICT

    status: int = Field(403, ge=200, le=599)
    body: str = Field("", max_length=8192)
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("headers")
    @classmethod
    def _header_names(cls, value: dict[str, str]) -> dict[str, str]:
        return _valid_headers(value)


class AllowAction(BaseModel):
    model_config = _STRICT

    headers: dict[str, str] = Field(default_factory=dict, description="set on the request going upstream")
    remove_headers: list[str] = Field(
        default_factory=list, description="removed from the request going upstream"
    )
    response_headers: dict[str, str] = Field(default_factory=dict, description="added to the response")

    @field_validator("headers", "response_headers")
    @classmethod
    def _header_names(cls, value: dict[str, str]) -> dict[str, str]:
        return _valid_headers(value)

    @field_validator("remove_headers")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        return list(_valid_headers(dict.fromkeys(value, "")))


def _valid_headers(value: dict[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, header_value in value.items():
        if not _HEADER_NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a valid header name")
        if "\r" in header_value or "\n" in header_value:
            raise ValueError(f"header {name!r} value contains a line break")
        out[name.lower()] = header_value
    return out


class RuleDoc(BaseModel):
    model_config = _STRICT

    id: str = Field(description="unique rule id; shows in metrics, decision logs and dynamic metadata")
    action: Literal["allow", "deny", "rate_limit"]
    description: str = ""
    priority: int = Field(0, description="lower runs first within its stage; ties keep file order")
    dry_run: bool = Field(False, description="evaluate, log and count, never enforce")
    # Required: a rule whose `match` was forgotten must not silently apply to every request.
    match: dict[str, Any] = Field(
        description="attribute: matcher pairs (all must match), plus all/any/not; `{}` matches every request"
    )
    deny: DenyAction | None = None
    allow: AllowAction | None = None
    limit: str | None = Field(None, description="rate_limit: the name of the limit to consume from")

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError("ids are 1-128 characters of letters, digits, '_', '.', ':' and '-'")
        return value

    @model_validator(mode="after")
    def _action_fields(self) -> RuleDoc:
        if self.action == "rate_limit" and not self.limit:
            raise ValueError("a rate_limit rule needs 'limit' (the name of a limit)")
        if self.action != "rate_limit" and self.limit:
            raise ValueError("'limit' belongs to rate_limit rules only")
        if self.action != "deny" and self.deny is not None:
            raise ValueError("'deny' belongs to deny rules only")
        if self.action != "allow" and self.allow is not None:
            raise ValueError("'allow' belongs to allow rules only")
        return self


class ListDoc(BaseModel):
    model_config = _STRICT

    name: str
    kind: Literal["ip", "cidr", "string"] = "string"
    entries: list[str] = Field(default_factory=list)
    description: str = ""

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError("names are 1-128 characters of letters, digits, '_', '.', ':' and '-'")
        return value


class LimitDoc(BaseModel):
    model_config = _STRICT

    name: str
    requests: int = Field(ge=1, le=10_000_000, description="requests admitted per unit")
    unit: Literal["second", "minute", "hour", "day"]
    algorithm: Literal["token_bucket", "sliding_window"] = "sliding_window"
    descriptor: list[str] = Field(
        default_factory=list,
        description="attributes whose values form the counter key (envoyproxy/ratelimit descriptors); "
        "empty: one counter for every request the rule matches",
    )
    shadow: bool = Field(False, description="count and report, never reject")
    description: str = ""

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError("names are 1-128 characters of letters, digits, '_', '.', ':' and '-'")
        return value

    @field_validator("descriptor")
    @classmethod
    def _attrs(cls, value: list[str]) -> list[str]:
        return [check_attribute(a) for a in value]


class PolicyDocument(BaseModel):
    model_config = _STRICT

    rules: list[RuleDoc] = Field(default_factory=list)
    lists: list[ListDoc] = Field(default_factory=list)
    limits: list[LimitDoc] = Field(default_factory=list)
    adaptive: list[AdaptiveDoc] = Field(default_factory=list)


_ITEM_WORDS = {"rules": "rule", "lists": "list", "limits": "limit", "adaptive": "adaptive limit"}


def describe(exc: ValidationError, data: Any) -> str:
    """Every error pydantic found, on one line: "rule 'deny-admin': field match.path: ...; rule ..."."""
    return "; ".join(_describe_one(error, data) for error in exc.errors())


def _describe_one(error: ErrorDetails, data: Any) -> str:
    loc = list(error["loc"])
    where = ""
    if len(loc) >= 2 and loc[0] in _ITEM_WORDS and isinstance(loc[1], int):
        section, index = str(loc[0]), loc[1]
        items = data.get(section, []) if isinstance(data, dict) else []
        item = items[index] if isinstance(items, list) and index < len(items) else None
        key = "id" if section == "rules" else "name"
        label = item.get(key) if isinstance(item, dict) else None
        word = _ITEM_WORDS[section]
        where = f"{word} {label!r}" if isinstance(label, str) and label else f"{word} #{index + 1}"
        loc = loc[2:]
    field_path = ".".join(str(p) for p in loc if not str(p).startswith("function-")) or "(item)"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "missing" and field_path == "match":
        message += " (write `match: {}` for a rule that applies to every request)"
    elif error["type"] == "extra_forbidden":
        message = "unknown field"
    return f"{where + ': ' if where else ''}field {field_path}: {message}"


def parse_document(data: Any, *, source: str = "policy") -> PolicyDocument:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PolicyError(f"{source}: a policy document is a mapping with rules, lists, limits and adaptive")
    try:
        return PolicyDocument.model_validate(data)
    except ValidationError as exc:
        raise PolicyError(f"{source}: {describe(exc, data)}") from None
