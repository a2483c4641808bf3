"""Check KServe manifests against the KServe Python SDK's typed models; run with the KServe environment's
interpreter (``$AA_KSERVE_PYTHON``, built by ``make kserve-env``): the SDK's pins clash with this project's.

    python tests/kserve_validate.py servingruntime.yaml inferenceservice.yaml

Each document is built into the SDK class for its kind (``V1alpha1ServingRuntime``,
``V1beta1InferenceService``), recursively through the nested SDK and Kubernetes models (``V1Container``,
``V1Probe``, ...), by their ``openapi_types``/``attribute_map``: a key no model declares is an error (the
SDK's own deserialiser would drop it silently), constructors enforce required fields, and the typed object
must serialise back to exactly the input. Prints one JSON object per document with the facts the test
cross-checks (format, protocol, probe paths, ...), or the errors.
"""

from __future__ import annotations

import datetime
import json
import sys
from typing import Any

import kserve
import kubernetes.client
import yaml

KINDS = {
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): "V1alpha1ServingRuntime",
    ("serving.kserve.io/v1beta1", "InferenceService"): "V1beta1InferenceService",
}
PRIMITIVES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "object": (object,),
    "bytes": (str, bytes),
    # Kubernetes quantities ("500m", "2Gi", 1): strings or numbers.
    "ResourceQuantity": (str, int, float),
    "datetime": (str, datetime.datetime),
    "date": (str, datetime.date),
}


def model_class(name: str) -> Any:
    for module in (kserve.models, kubernetes.client.models, kubernetes.client):
        klass = getattr(module, name, None)
        if klass is not None:
            return klass
    raise TypeError(f"no SDK model named {name}")


def build(data: Any, type_name: str, path: str, errors: list[str]) -> Any:
    """``data`` as an instance of SDK type ``type_name``; unknown keys and wrong types go to ``errors``."""
    if data is None:
        return None
    # The generators write containers as list[X] / dict(str, X) (KServe) or List[X] / Dict[str, X] (Kubernetes).
    if type_name.lower().startswith("list["):
        if not isinstance(data, list):
            errors.append(f"{path}: expected a list, got {type(data).__name__}")
            return None
        return [build(item, type_name[5:-1], f"{path}[{i}]", errors) for i, item in enumerate(data)]
    if type_name.lower().startswith(("dict(", "dict[")):
        if not isinstance(data, dict):
            errors.append(f"{path}: expected a mapping, got {type(data).__name__}")
            return None
        value_type = type_name[type_name.index(",") + 1 : -1].strip()
        return {k: build(v, value_type, f"{path}.{k}", errors) for k, v in data.items()}
    if type_name in PRIMITIVES:
        allowed = PRIMITIVES[type_name]
        if not isinstance(data, allowed) or (type_name == "int" and isinstance(data, bool)):
            errors.append(f"{path}: expected {type_name}, got {type(data).__name__} {data!r}")
        return data
    klass = model_class(type_name)
    if not isinstance(data, dict):
        errors.append(f"{path}: expected a {type_name} mapping, got {type(data).__name__}")
        return None
    by_json = {json_key: attr for attr, json_key in klass.attribute_map.items()}
    for key in sorted(set(data) - set(by_json)):
        errors.append(f"{path}.{key}: not a field of {type_name} (fields: {sorted(by_json)})")
    kwargs = {
        by_json[k]: build(v, klass.openapi_types[by_json[k]], f"{path}.{k}", errors)
        for k, v in data.items()
        if k in by_json
    }
    try:
        return klass(**kwargs)
    except (ValueError, TypeError) as exc:  # required fields, enums (client-side validation)
        errors.append(f"{path}: {type_name}: {exc}")
        return None


def without_filled_defaults(back: Any, doc: Any) -> Any:
    """``back`` less the empty values the SDK fills in for keys the input left out (``V1beta1ModelSpec``
    sets ``name=""``), so that the round trip compares what was written."""
    if isinstance(back, dict) and isinstance(doc, dict):
        return {
            k: without_filled_defaults(v, doc.get(k))
            for k, v in back.items()
            if k in doc or v not in ("", None, [], {})
        }
    if isinstance(back, list) and isinstance(doc, list) and len(back) == len(doc):
        return [without_filled_defaults(b, d) for b, d in zip(back, doc, strict=True)]
    return back


def check(doc: dict[str, Any]) -> dict[str, Any]:
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key not in KINDS:
        return {"kind": doc.get("kind"), "errors": [f"unknown apiVersion/kind {key}"]}
    errors: list[str] = []
    obj = build(doc, KINDS[key], doc["kind"], errors)
    result: dict[str, Any] = {"kind": doc["kind"], "sdk_class": KINDS[key], "errors": errors}
    if obj is None or errors:
        return result
    back = without_filled_defaults(kserve.ApiClient().sanitize_for_serialization(obj), doc)
    result["round_trip_equal"] = back == doc
    if back != doc:
        result["round_trip"] = back
    result["name"] = obj.metadata.name
    if doc["kind"] == "ServingRuntime":
        container = obj.spec.containers[0]
        result.update(
            formats=[f.name for f in obj.spec.supported_model_formats],
            protocols=list(obj.spec.protocol_versions),
            container=container.name,
            image=container.image,
            command=list(container.command or []) + list(container.args or []),
            ports=[p.container_port for p in container.ports],
            startup=[container.startup_probe.http_get.path, container.startup_probe.http_get.port],
            liveness=[container.liveness_probe.http_get.path, container.liveness_probe.http_get.port],
            readiness=[container.readiness_probe.http_get.path, container.readiness_probe.http_get.port],
            limits=dict(container.resources.limits),
        )
    else:
        model = obj.spec.predictor.model
        result.update(
            format=model.model_format.name,
            runtime=model.runtime,
            protocol=model.protocol_version,
            storage_uri=model.storage_uri,
            env={e.name: e.value for e in model.env or []},
            limits=dict(model.resources.limits),
        )
    return result


def main(paths: list[str]) -> int:
    results = []
    for path in paths:
        with open(path) as f:
            results += [check(doc) for doc in yaml.safe_load_all(f) if doc]
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
