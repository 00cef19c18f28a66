"""Object names the API server and the file system both accept.

Kubernetes names custom objects with DNS-1123 subdomains (k8s.io/apimachinery
pkg/util/validation IsDNS1123Subdomain: at most 253 characters, lowercase alphanumeric labels with
inner '-', joined by single dots). The dir sink also writes `<name>.yaml.tmp`, and most file systems
refuse names over 255 bytes (NAME_MAX), so generated names stop at MAX_NAME characters.
"""

from __future__ import annotations

import hashlib
import re

DNS_SUBDOMAIN_MAX = 253
# <name>.yaml.tmp must stay within NAME_MAX (255 bytes): 240 + 9 leaves room.
MAX_NAME = 240
_DIGEST = 10
_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_NOT_NAME = re.compile(r"[^-a-z0-9.]+")


def is_dns_subdomain(value: str) -> bool:
    return len(value) <= DNS_SUBDOMAIN_MAX and bool(_SUBDOMAIN.fullmatch(value))


def object_name(text: str) -> str:
    """`text` when it is already a valid name that fits; otherwise a cleaned form that ends in a hash
    of `text`, so two different inputs never share a name and the result is always valid."""
    if len(text) <= MAX_NAME and is_dns_subdomain(text):
        return text
    labels = [label.strip("-") for label in _NOT_NAME.sub("-", text.lower()).split(".")]
    cleaned = ".".join(label for label in labels if label)
    digest = hashlib.sha256(text.encode()).hexdigest()[:_DIGEST]
    head = cleaned[: MAX_NAME - _DIGEST - 1].rstrip("-.")
    return f"{head}-{digest}" if head else f"x-{digest}"
