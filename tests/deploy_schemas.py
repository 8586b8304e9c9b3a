"""Structural JSON schemas for the Prometheus Operator objects deploy/ renders (PrometheusRule,
ServiceMonitor), which the Kubernetes schemas of ``kubernetes-validate`` do not include.

Written here for the fields deploy/ uses, after the operator's monitoring.coreos.com/v1 API
reference (field names, types, its Duration pattern); strict like the Kubernetes ones: a field
not listed is an error. They cover a subset of the real CRDs, so a field deploy/ starts using
must be added here first, with the type the operator's reference gives it."""

from __future__ import annotations

from typing import Any

__all__ = ["CRD_SCHEMAS"]

# The operator's Duration (monitoring.coreos.com/v1): Prometheus durations such as 30s or 1h30m.
_DURATION = {"type": "string",
             "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}
_DNS_LABEL = {"type": "string", "maxLength": 63, "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"}
_METADATA = {
    "type": "object", "additionalProperties": False, "required": ["name"],
    "properties": {"name": _DNS_LABEL, "namespace": _DNS_LABEL, "labels": _STRINGS, "annotations": _STRINGS},
}
_RULE = {
    "type": "object", "additionalProperties": False, "required": ["expr"],
    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
    "properties": {
        "alert": {"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_]*$"},
        "record": {"type": "string", "pattern": r"^[a-zA-Z_:][a-zA-Z0-9_:]*$"},
        "expr": {"type": "string", "minLength": 1},
        "for": _DURATION,
        "keep_firing_for": _DURATION,
        "labels": _STRINGS,
        "annotations": _STRINGS,
    },
}
_LABEL_SELECTOR = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "matchLabels": _STRINGS,
        "matchExpressions": {"type": "array", "items": {
            "type": "object", "additionalProperties": False, "required": ["key", "operator"],
            "properties": {"key": {"type": "string"},
                           "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                           "values": {"type": "array", "items": {"type": "string"}}}}},
    },
}


def _object(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object", "additionalProperties": False, "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {"apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": kind},
                       "metadata": _METADATA, "spec": spec},
    }


CRD_SCHEMAS: dict[str, dict[str, Any]] = {
    "PrometheusRule": _object("PrometheusRule", {
        "type": "object", "additionalProperties": False, "required": ["groups"],
        "properties": {"groups": {"type": "array", "minItems": 1, "items": {
            "type": "object", "additionalProperties": False, "required": ["name", "rules"],
            "properties": {"name": {"type": "string", "minLength": 1}, "interval": _DURATION,
                           "rules": {"type": "array", "minItems": 1, "items": _RULE}}}}},
    }),
    "ServiceMonitor": _object("ServiceMonitor", {
        "type": "object", "additionalProperties": False, "required": ["selector", "endpoints"],
        "properties": {
            "selector": _LABEL_SELECTOR,
            "jobLabel": {"type": "string"},
            "namespaceSelector": {"type": "object", "additionalProperties": False,
                                  "properties": {"any": {"type": "boolean"},
                                                 "matchNames": {"type": "array", "items": {"type": "string"}}}},
            "endpoints": {"type": "array", "minItems": 1, "items": {
                "type": "object", "additionalProperties": False, "required": ["port"],
                "properties": {"port": {"type": "string", "minLength": 1},
                               "path": {"type": "string", "pattern": "^/"},
                               "scheme": {"enum": ["http", "https"]},
                               "interval": _DURATION, "scrapeTimeout": _DURATION}}},
        },
    }),
}
