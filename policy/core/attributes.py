"""Reading one attribute of a CheckInput: the vocabulary rules and limit descriptors use.

Derived values (path without query, query parameters, SPIFFE parts, JWT claims) are computed on
first use and memoised on the input, so a rule set reads each at most once per request.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from urllib.parse import parse_qsl

from policy.structs import CheckInput

__all__ = [
    "PLAIN_FIELDS",
    "AttributeValue",
    "Getter",
    "getter",
    "jwt_claims",
    "path_only",
    "peer_principal",
    "principal",
    "spiffe_parts",
]

# A claim can be a list (groups, aud); every other attribute is one string or absent (None).
AttributeValue = str | tuple[str, ...] | None
Getter = Callable[[CheckInput], AttributeValue]

_MAX_JWT_PAYLOAD = 16 * 1024


def path_only(req: CheckInput) -> str:
    path = req.path
    cut = path.find("?")
    return path if cut < 0 else path[:cut]


def _query(req: CheckInput) -> dict[str, str]:
    parsed: dict[str, str] | None = req.memo.get("query")
    if parsed is None:
        cut = req.path.find("?")
        parsed = {}
        if cut >= 0:
            for key, value in parse_qsl(req.path[cut + 1 :], keep_blank_values=True):
                parsed.setdefault(key, value)
        req.memo["query"] = parsed
    return parsed


def _xfcc_uri(value: str) -> str:
    """URI= of the last element of x-forwarded-client-cert: the certificate of our direct client."""
    last = value.rsplit(",", 1)[-1]
    for part in last.split(";"):
        key, _, val = part.strip().partition("=")
        if key.lower() == "uri":
            return val.strip('"')
    return ""


def principal(req: CheckInput) -> str:
    """The peer principal from mTLS, else the client URI SAN Envoy forwarded in XFCC."""
    if req.source_principal:
        return req.source_principal
    return peer_principal("", req.headers.get("x-forwarded-client-cert"))


def peer_principal(source_principal: str, xfcc: str | None) -> str:
    """`principal` from its two sources (for readers that have them without a CheckInput)."""
    if source_principal:
        return source_principal
    return _xfcc_uri(xfcc) if xfcc else ""


def spiffe_parts(req: CheckInput) -> tuple[str, str, str]:
    """(trust domain, namespace, service account) from spiffe://td/ns/NS/sa/SA; empty when not SPIFFE."""
    parts: tuple[str, str, str] | None = req.memo.get("spiffe")
    if parts is None:
        parts = ("", "", "")
        uri = principal(req)
        if uri.startswith("spiffe://"):
            trust_domain, _, rest = uri[9:].partition("/")
            segments = rest.split("/")
            namespace = service_account = ""
            for i in range(0, len(segments) - 1, 2):
                if segments[i] == "ns":
                    namespace = segments[i + 1]
                elif segments[i] == "sa":
                    service_account = segments[i + 1]
            parts = (trust_domain, namespace, service_account)
        req.memo["spiffe"] = parts
    return parts


def jwt_claims(req: CheckInput, header: str) -> dict[str, object]:
    """Claims from a header holding an already-verified JWT payload (base64url JSON, or raw JSON)."""
    claims: dict[str, object] | None = req.memo.get("jwt")
    if claims is None:
        claims = {}
        raw = req.headers.get(header, "")
        if raw and len(raw) <= _MAX_JWT_PAYLOAD:
            claims = _decode_claims(raw)
        req.memo["jwt"] = claims
    return claims


def _decode_claims(raw: str) -> dict[str, object]:
    text = raw.strip()
    try:
        if not text.startswith("{"):
            text = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
        value = json.loads(text)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def _claim(name: str, header: str) -> Getter:
    path = name.split(".")

    def get(req: CheckInput) -> AttributeValue:
        value: object = jwt_claims(req, header)
        for step in path:
            if not isinstance(value, dict) or step not in value:
                return None
            value = value[step]
        if isinstance(value, list):
            return tuple(_scalar(v) for v in value)
        return _scalar(value)

    return get


def _scalar(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else json.dumps(value)


def _host(req: CheckInput) -> str:
    host = req.host
    if host.startswith("["):
        return host[: host.find("]") + 1]
    cut = host.rfind(":")
    return host if cut < 0 else host[:cut]


# Attributes that are one CheckInput field, empty meaning absent (_FIELDS reads them; the compiled
# evaluator reads the field itself).
PLAIN_FIELDS = {
    "source.address": "source_address",
    "source.service": "source_service",
    "destination.address": "destination_address",
    "destination.service": "destination_service",
    "request.id": "request_id",
    "request.method": "method",
    "request.url": "path",
    "request.scheme": "scheme",
}

# Inline `or None` (empty -> absent): these run per Check, several per cache key.
_FIELDS: dict[str, Getter] = {
    "source.address": lambda r: r.source_address or None,
    "source.principal": lambda r: principal(r) or None,
    "source.trust_domain": lambda r: spiffe_parts(r)[0] or None,
    "source.namespace": lambda r: spiffe_parts(r)[1] or None,
    "source.service_account": lambda r: spiffe_parts(r)[2] or None,
    "source.service": lambda r: r.source_service or None,
    "destination.address": lambda r: r.destination_address or None,
    "destination.port": lambda r: str(r.destination_port) if r.destination_port else None,
    "destination.host": lambda r: _host(r) or None,
    "destination.service": lambda r: r.destination_service or None,
    "request.id": lambda r: r.request_id or None,
    "request.method": lambda r: r.method or None,
    "request.path": lambda r: path_only(r) or None,
    "request.url": lambda r: r.path or None,
    "request.scheme": lambda r: r.scheme or None,
}


def getter(name: str, *, jwt_header: str) -> Getter:
    """The reader for a validated attribute name (see documents.check_attribute)."""
    if name in _FIELDS:
        return _FIELDS[name]
    family, _, key = name.partition(".")
    if name.startswith("request.headers."):
        header = name[len("request.headers.") :]
        return lambda r: r.headers.get(header)
    if name.startswith("request.query."):
        param = name[len("request.query.") :]
        return lambda r: _query(r).get(param)
    if name.startswith("request.jwt."):
        return _claim(name[len("request.jwt.") :], jwt_header)
    if name.startswith("source.labels."):
        label = name[len("source.labels.") :]
        return lambda r: r.source_labels.get(label)
    if name.startswith("destination.labels."):
        label = name[len("destination.labels.") :]
        return lambda r: r.destination_labels.get(label)
    if family == "context":
        return lambda r: r.context.get(key)
    raise ValueError(f"unknown attribute {name!r}")
