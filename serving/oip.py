"""Open Inference Protocol v2 (KServe v2 / Triton HTTP), so standard clients such as
``tritonclient.http`` can call the server.

Contract: the model name is the task name (version "1"); inputs ``text`` (BYTES, [batch]) and, for pair
tasks, ``text_pair`` (BYTES, [batch]); outputs ``logits`` (FP32, [batch, labels]) and ``label``
(BYTES, [batch]). Both the JSON encoding and the binary tensor extension (``Inference-Header-Content-Length``,
which tritonclient uses by default) are supported, for requests and responses.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response

from . import __version__
from .errors import BadRequest, InvalidInput, TaskNotFound
from .service import InferenceService, labels_for

HEADER_LENGTH = "inference-header-content-length"
MODEL_VERSION = "1"


def _decode_bytes_tensor(raw: bytes, count: int, name: str) -> list[bytes]:
    """BYTES in the binary extension: each element is a little-endian uint32 length + the bytes."""
    items, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise BadRequest(f"binary data of input {name!r} is truncated")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise BadRequest(f"binary data of input {name!r} is truncated")
        items.append(raw[offset : offset + length])
        offset += length
    if len(items) != count:
        raise BadRequest(f"input {name!r} has {len(items)} elements but its shape says {count}")
    return items


def _encode_bytes_tensor(values: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


def _flatten(data: Any) -> list[Any]:
    if isinstance(data, list):
        out: list[Any] = []
        for d in data:
            out.extend(_flatten(d))
        return out
    return [data]


def _texts(tensor: dict[str, Any], binary: bytes | None) -> list[str]:
    name = tensor.get("name")
    if tensor.get("datatype") != "BYTES":
        raise InvalidInput(f"input {name!r} must have datatype BYTES, got {tensor.get('datatype')!r}")
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not shape or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise InvalidInput(f"input {name!r} needs a shape like [batch] or [batch, 1], got {shape!r}")
    if len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
        raise InvalidInput(f"input {name!r} must have shape [batch] or [batch, 1], got {shape}")
    count = int(np.prod(shape))
    if binary is not None:
        values: list[Any] = _decode_bytes_tensor(binary, count, name)
    else:
        if "data" not in tensor:
            raise InvalidInput(f"input {name!r} has no data")
        values = _flatten(tensor["data"])
        if len(values) != count:
            raise InvalidInput(f"input {name!r} has {len(values)} elements but its shape says {count}")
    texts = []
    for i, v in enumerate(values):
        if isinstance(v, bytes):
            try:
                v = v.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidInput(f"input {name!r}[{i}] is not valid UTF-8") from None
        if not isinstance(v, str):
            raise InvalidInput(f"input {name!r}[{i}] must be a string, got {type(v).__name__}")
        texts.append(v)
    return texts


async def _parse(request: Request) -> tuple[dict[str, Any], dict[str, bytes]]:
    if request.headers.get("content-encoding", "identity").lower() not in ("identity", ""):
        raise BadRequest("compressed requests are not supported: send the body uncompressed")
    body = await request.body()
    header_length = request.headers.get(HEADER_LENGTH)
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            raise BadRequest(f"{HEADER_LENGTH} must be an integer") from None
        if not 0 <= n <= len(body):
            raise BadRequest(f"{HEADER_LENGTH}={n} does not fit the {len(body)}-byte body")
        header, rest = body[:n], body[n:]
    else:
        header, rest = body, b""
    try:
        payload = json.loads(header)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadRequest("the inference request is not valid JSON") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), list):
        raise InvalidInput("the inference request needs an 'inputs' list")
    binaries: dict[str, bytes] = {}
    offset = 0
    for tensor in payload["inputs"]:
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise InvalidInput("every input needs a name, datatype, shape and data")
        size = (tensor.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(rest):
                raise BadRequest(f"binary_data_size of input {tensor['name']!r} does not fit the body")
            binaries[tensor["name"]] = rest[offset : offset + size]
            offset += size
    return payload, binaries


def register_oip(app: FastAPI, service_dep: Callable[..., InferenceService], auth_dep: Callable[..., None]) -> None:
    def entry(request: Request, name: str) -> Any:
        return request.app.state.registry.view.get(name)

    def metadata(request: Request, name: str) -> dict[str, Any]:
        manifest = entry(request, name).artifact.manifest
        inputs = [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
        if manifest.is_pair:
            inputs.append({"name": "text_pair", "datatype": "BYTES", "shape": [-1]})
        return {
            "name": name,
            "versions": [MODEL_VERSION],
            "platform": "aa-deploy-onnx",
            "inputs": inputs,
            "outputs": [
                {"name": "logits", "datatype": "FP32", "shape": [-1, manifest.num_labels]},
                {"name": "label", "datatype": "BYTES", "shape": [-1]},
            ],
            "parameters": {"label_names": list(manifest.label_names or []), "is_pair": manifest.is_pair},
        }

    @app.get("/v2", tags=["open inference protocol"], summary="Server metadata")
    async def server_metadata() -> dict[str, Any]:
        return {"name": "aa-deploy", "version": __version__, "extensions": ["binary_tensor_data", "model_repository"]}

    @app.get("/v2/health/live", tags=["open inference protocol"])
    async def live() -> Response:
        return Response(status_code=200)

    @app.get("/v2/health/ready", tags=["open inference protocol"])
    async def ready(request: Request) -> Response:
        ok = (
            request.app.state.ready
            and request.app.state.batcher.accepting
            and bool(request.app.state.registry.view.tasks)
        )
        return Response(status_code=200 if ok else 503)

    @app.get("/v2/models/{name}", tags=["open inference protocol"])
    @app.get("/v2/models/{name}/versions/{version}", tags=["open inference protocol"])
    async def model_metadata(name: str, request: Request, version: str | None = None) -> dict[str, Any]:
        _check_version(version)
        return metadata(request, name)

    @app.get("/v2/models/{name}/ready", tags=["open inference protocol"])
    @app.get("/v2/models/{name}/versions/{version}/ready", tags=["open inference protocol"])
    async def model_ready(name: str, request: Request, version: str | None = None) -> Response:
        _check_version(version)
        entry(request, name)
        return Response(status_code=200)

    @app.get("/v2/models/{name}/config", tags=["open inference protocol"])
    async def model_config(name: str, request: Request) -> dict[str, Any]:
        meta = metadata(request, name)
        return {
            "name": name,
            "platform": meta["platform"],
            "max_batch_size": request.app.state.config.max_texts_per_request,
            "input": [{"name": i["name"], "data_type": "TYPE_STRING", "dims": [1]} for i in meta["inputs"]],
            "output": [
                {"name": "logits", "data_type": "TYPE_FP32", "dims": [meta["outputs"][0]["shape"][1]]},
                {"name": "label", "data_type": "TYPE_STRING", "dims": [1]},
            ],
        }

    @app.post("/v2/repository/index", tags=["open inference protocol"])
    async def repository_index(request: Request) -> list[dict[str, Any]]:
        return [
            {"name": n, "version": MODEL_VERSION, "state": "READY"}
            for n in sorted(request.app.state.registry.view.tasks)
        ]

    @app.post("/v2/models/{name}/infer", tags=["open inference protocol"], dependencies=[Depends(auth_dep)])
    @app.post(
        "/v2/models/{name}/versions/{version}/infer", tags=["open inference protocol"], dependencies=[Depends(auth_dep)]
    )
    async def infer(
        name: str, request: Request, version: str | None = None, svc: InferenceService = Depends(service_dep)
    ) -> Response:
        _check_version(version)
        payload, binaries = await _parse(request)
        inputs = {t["name"]: t for t in payload["inputs"]}
        unknown = sorted(set(inputs) - {"text", "text_pair"})
        if unknown:
            raise InvalidInput(f"unknown inputs {unknown}: this model takes 'text' (and 'text_pair' for pair tasks)")
        if "text" not in inputs:
            raise InvalidInput("input 'text' (BYTES, [batch]) is required")
        texts = _texts(inputs["text"], binaries.get("text"))
        pairs = _texts(inputs["text_pair"], binaries.get("text_pair")) if "text_pair" in inputs else None
        requested = payload.get("outputs")
        default_binary = bool((payload.get("parameters") or {}).get("binary_data_output", False))
        if requested is None:
            wanted = [("logits", default_binary), ("label", default_binary)]
        else:
            if not isinstance(requested, list):
                raise InvalidInput("'outputs' must be a list")
            wanted = []
            for out in requested:
                if not isinstance(out, dict) or out.get("name") not in ("logits", "label"):
                    raise InvalidInput("requested outputs must be 'logits' and/or 'label'")
                wanted.append((out["name"], bool((out.get("parameters") or {}).get("binary_data", default_binary))))
        output = (await svc.logits([name], texts, pairs))[name]
        logits, label_names = output.logits, output.label_names
        svc.metrics.requests.labels(name, "oip", "200").inc()
        outputs, blobs = [], []
        for out_name, binary in wanted:
            if out_name == "logits":
                array = np.ascontiguousarray(logits, dtype="<f4")
                spec: dict[str, Any] = {"name": "logits", "datatype": "FP32", "shape": list(array.shape)}
                if binary:
                    raw = array.tobytes()
                    spec["parameters"] = {"binary_data_size": len(raw)}
                    blobs.append(raw)
                else:
                    spec["data"] = [float(v) for v in array.reshape(-1)]
            else:
                labels = labels_for(logits, label_names)
                spec = {"name": "label", "datatype": "BYTES", "shape": [len(labels)]}
                if binary:
                    raw = _encode_bytes_tensor([s.encode() for s in labels])
                    spec["parameters"] = {"binary_data_size": len(raw)}
                    blobs.append(raw)
                else:
                    spec["data"] = labels
            outputs.append(spec)
        body: dict[str, Any] = {"model_name": name, "model_version": MODEL_VERSION, "outputs": outputs}
        if "id" in payload:
            body["id"] = payload["id"]
        header = json.dumps(body).encode()
        if not blobs:
            return Response(header, media_type="application/json")
        return Response(
            header + b"".join(blobs),
            media_type="application/octet-stream",
            headers={"Inference-Header-Content-Length": str(len(header))},
        )

    def _check_version(version: str | None) -> None:
        if version not in (None, "", MODEL_VERSION):
            raise TaskNotFound(f"model version {version!r} does not exist; the only version is {MODEL_VERSION}")
