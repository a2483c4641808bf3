"""The wire format of the Open Inference Protocol v2 (KServe v2 / Triton HTTP): parsing an inference
request into texts and encoding tensors; the routes are in :mod:`serving.routes.oip`.

Contract: the model name is the task name (version "1"); inputs ``text`` (BYTES, [batch]) and, for pair
tasks, ``text_pair`` (BYTES, [batch]); outputs ``logits`` (FP32, [batch, labels]) and ``label``
(BYTES, [batch]). Both the JSON encoding and the binary tensor extension (``Inference-Header-Content-Length``,
which tritonclient uses by default) are supported, for requests and responses.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import BadRequest, InvalidInput
from .service import labels_for

# Where the protocol's routes live; its errors have their own flat shape (``{"error": message}``).
OIP_PREFIX = "/v2"
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


def _flatten(data: Any, name: Any) -> list[Any]:
    """The elements of ``data`` given flat or nested like its shape ([batch] or [batch, 1]): at most two
    levels, so a deeply nested body is refused here instead of recursing."""
    if not isinstance(data, list):
        raise InvalidInput(f"input {name!r} data must be a list of strings, got {type(data).__name__}")
    out: list[Any] = []
    for item in data:
        if not isinstance(item, list):
            out.append(item)
        elif any(isinstance(inner, list) for inner in item):
            raise InvalidInput(f"input {name!r} data is nested deeper than its shape [batch, 1] allows")
        else:
            out.extend(item)
    return out


def parameters_of(holder: Mapping[str, Any], where: str) -> Mapping[str, Any]:
    """The ``parameters`` object of the request, an input or an output ({} when absent): the protocol
    says it is a JSON object, and anything else is refused with a 400 that names where it was."""
    parameters = holder.get("parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise BadRequest(f"'parameters' of {where} must be a JSON object, got {type(parameters).__name__}")
    return parameters


def _flag(parameters: Mapping[str, Any], key: str, default: bool, where: str) -> bool:
    value = parameters.get(key, default)
    if not isinstance(value, bool):
        raise BadRequest(f"parameter {key!r} of {where} must be true or false, got {value!r}")
    return value


def _texts(tensor: dict[str, Any], binary: bytes | None) -> list[str]:
    name = tensor.get("name")
    if tensor.get("datatype") != "BYTES":
        raise InvalidInput(f"input {name!r} must have datatype BYTES, got {tensor.get('datatype')!r}")
    shape = tensor.get("shape")
    if (
        not isinstance(shape, list)
        or not shape
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise InvalidInput(f"input {name!r} needs a shape like [batch] or [batch, 1], got {shape!r}")
    if len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
        raise InvalidInput(f"input {name!r} must have shape [batch] or [batch, 1], got {shape}")
    count = math.prod(shape)  # Python ints: a huge shape cannot overflow into a plausible count
    if binary is not None:
        values: list[Any] = _decode_bytes_tensor(binary, count, name)
    else:
        if "data" not in tensor:
            raise InvalidInput(f"input {name!r} has no data")
        values = _flatten(tensor["data"], name)
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


@dataclass(frozen=True)
class InferRequest:
    """What an OIP inference request asks for: the texts, and which outputs in which encoding."""

    texts: list[str]
    pairs: list[str] | None
    outputs: list[tuple[str, bool]]  # (output name, binary)
    id: Any = None
    has_id: bool = False


def parse_infer_request(body: bytes, headers: Mapping[str, str]) -> InferRequest:
    """Decode the JSON (or JSON + binary tensors) body of ``POST /v2/models/{name}/infer``."""
    payload, binaries = _split_body(body, headers)
    inputs = {t["name"]: t for t in payload["inputs"]}
    unknown = sorted(set(inputs) - {"text", "text_pair"})
    if unknown:
        raise InvalidInput(f"unknown inputs {unknown}: this model takes 'text' (and 'text_pair' for pair tasks)")
    if "text" not in inputs:
        raise InvalidInput("input 'text' (BYTES, [batch]) is required")
    texts = _texts(inputs["text"], binaries.get("text"))
    pairs = _texts(inputs["text_pair"], binaries.get("text_pair")) if "text_pair" in inputs else None
    requested = payload.get("outputs")
    default_binary = _flag(parameters_of(payload, "the request"), "binary_data_output", False, "the request")
    if requested is None:
        wanted = [("logits", default_binary), ("label", default_binary)]
    else:
        if not isinstance(requested, list):
            raise InvalidInput("'outputs' must be a list")
        wanted = []
        for out in requested:
            if not isinstance(out, dict) or out.get("name") not in ("logits", "label"):
                raise InvalidInput("requested outputs must be 'logits' and/or 'label'")
            where = f"output {out['name']!r}"
            wanted.append((out["name"], _flag(parameters_of(out, where), "binary_data", default_binary, where)))
    request_id = payload.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput(f"'id' must be a string, got {type(request_id).__name__}")
    return InferRequest(texts, pairs, wanted, request_id, request_id is not None)


def encode_infer_response(
    request: InferRequest, model_name: str, model_version: str, logits: np.ndarray, label_names: Sequence[str] | None
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary tensors follow it (else None)."""
    outputs, blobs = [], []
    for out_name, binary in request.outputs:
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
    body: dict[str, Any] = {"model_name": model_name, "model_version": model_version, "outputs": outputs}
    if request.has_id:
        body["id"] = request.id
    header = json.dumps(body).encode()
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)


def _split_body(body: bytes, headers: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, bytes]]:
    if headers.get("content-encoding", "identity").lower() not in ("identity", ""):
        raise BadRequest("compressed requests are not supported: send the body uncompressed")
    header_length = headers.get(HEADER_LENGTH)
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
    except RecursionError:
        raise BadRequest("the inference request's JSON is nested too deeply") from None
    except ValueError:  # not JSON, not UTF-8, or a number over Python's digit limit
        raise BadRequest("the inference request is not valid JSON (UTF-8)") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), list):
        raise InvalidInput("the inference request needs an 'inputs' list")
    binaries: dict[str, bytes] = {}
    offset = 0
    for tensor in payload["inputs"]:
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise InvalidInput("every input needs a name, datatype, shape and data")
        size = parameters_of(tensor, f"input {tensor['name']!r}").get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(rest):
                raise BadRequest(f"binary_data_size of input {tensor['name']!r} does not fit the body")
            binaries[tensor["name"]] = rest[offset : offset + size]
            offset += size
    return payload, binaries
