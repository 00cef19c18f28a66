"""Validators built from the real Istio CRD schemas in tests/istio-crds (shared by the deploy tests)."""

from __future__ import annotations

import copy
from typing import Any

import jsonschema

from .paths import ISTIO_CRDS, load_yaml_docs


def strict(schema: Any) -> Any:
    """Closed objects, as the API server's strict field validation sees them: a typo is an error."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if (
            out.get("type") == "object"
            and "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


def crd_validators() -> dict[tuple[str, str], jsonschema.protocols.Validator]:
    validators: dict[tuple[str, str], jsonschema.protocols.Validator] = {}
    for path in sorted(ISTIO_CRDS.glob("*-crd.yaml")):
        (crd,) = load_yaml_docs(path)
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
            schema = strict(schema)
            # apiVersion/kind/metadata are checked by the API server itself, not by the CRD schema.
            for key in ("apiVersion", "kind", "metadata"):
                schema.setdefault("properties", {})[key] = {}
            cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
            validators[(f"{group}/{version['name']}", kind)] = cls(schema)
    assert len(validators) >= 7, "the three Istio CRDs with all their versions"
    return validators
