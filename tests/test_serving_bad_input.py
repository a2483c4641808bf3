"""No client input makes the server answer 5xx: a table of bad requests over ``/v1`` and ``/v2`` (wrong
types, missing fields, non-object parameters, deep nesting, broken binary framing, huge numbers, invalid
UTF-8, wrong datatypes and shapes), each answered with its 4xx and the protocol's JSON error body; bodies
sent with any content type (the README's curl lines, run as written); and the HTTP limits on slow or
oversized request heads and bodies, on a raw socket."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from serving_helpers import predict, served_config

from aa_deploy.serving.config import ServerConfig, TaskSpec
from aa_deploy.serving.http_limits import MAX_HEAD_BYTES
from aa_deploy.serving.server import BackgroundServer

REPO = Path(__file__).resolve().parents[1]
SST = "/v1/tasks/sst/predict"
MULTI = "/v1/predict"
INFER = "/v2/models/sst/infer"
RTE_INFER = "/v2/models/rte/infer"
# Deeper than Python's recursion limit, within the test server's 64 KiB body limit.
DEEP = "[" * 20_000 + "]" * 20_000
OCTET = {"content-type": "application/octet-stream"}


def text_input(**overrides: Any) -> dict[str, Any]:
    return {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["fine"], **overrides}


def oip(*inputs: dict[str, Any], **fields: Any) -> bytes:
    return json.dumps({"inputs": list(inputs or [text_input()]), **fields}).encode()


def framed(header: dict[str, Any], blob: bytes) -> bytes:
    return json.dumps(header).encode() + blob


# (name, method, path, body bytes, extra headers, status). Bodies are raw bytes, sent as given.
BAD_INPUTS: list[tuple[str, str, str, bytes | None, dict[str, str], int]] = [
    # ---- /v1: JSON, types, fields
    ("v1 not JSON", "POST", SST, b"{nope", {}, 400),
    ("v1 empty body", "POST", SST, b"", {}, 422),
    ("v1 invalid UTF-8", "POST", SST, b'{"texts": ["\xff\xfe"]}', {}, 400),
    ("v1 deep nesting", "POST", SST, DEEP.encode(), {}, 400),
    ("v1 deep nesting in a field", "POST", SST, ('{"texts": ' + DEEP + "}").encode(), {}, 400),
    ("v1 nesting under the limit", "POST", SST, ('{"texts": ' + "[" * 500 + "]" * 500 + "}").encode(), {}, 422),
    ("v1 huge integer", "POST", SST, b'{"texts": ["a"], "return_logits": ' + b"9" * 5000 + b"}", {}, 400),
    ("v1 huge float", "POST", SST, b'{"texts": ["a"], "return_logits": 1e999}', {}, 422),
    ("v1 body is a list", "POST", SST, b'["a"]', {}, 422),
    ("v1 body is a string", "POST", SST, b'"a"', {}, 422),
    ("v1 body is null", "POST", SST, b"null", {}, 422),
    ("v1 texts missing", "POST", SST, b"{}", {}, 422),
    ("v1 texts not a list", "POST", SST, b'{"texts": "a"}', {}, 422),
    ("v1 texts of numbers", "POST", SST, b'{"texts": [1, 2]}', {}, 422),
    ("v1 texts of objects", "POST", SST, b'{"texts": [{"a": 1}]}', {}, 422),
    ("v1 texts empty", "POST", SST, b'{"texts": []}', {}, 422),
    ("v1 lone surrogate", "POST", SST, b'{"texts": ["\\ud800"]}', {}, 422),
    ("v1 unknown field", "POST", SST, b'{"texts": ["a"], "extra": 1}', {}, 422),
    ("v1 return_logits a string", "POST", SST, b'{"texts": ["a"], "return_logits": "yes"}', {}, 422),
    ("v1 pairs for a single-text task", "POST", SST, b'{"texts": ["a"], "text_pairs": ["b"]}', {}, 422),
    ("v1 pairs not matching", "POST", "/v1/tasks/rte/predict", b'{"texts": ["a", "b"], "text_pairs": ["c"]}', {}, 422),
    ("v1 unknown task", "POST", "/v1/tasks/nope/predict", b'{"texts": ["a"]}', {}, 404),
    ("v1 multi tasks missing", "POST", MULTI, b'{"texts": ["a"]}', {}, 422),
    ("v1 multi tasks empty", "POST", MULTI, b'{"tasks": [], "texts": ["a"]}', {}, 422),
    ("v1 multi tasks not strings", "POST", MULTI, b'{"tasks": [1], "texts": ["a"]}', {}, 422),
    ("v1 too many texts", "POST", SST, json.dumps({"texts": ["a"] * 17}).encode(), {}, 413),
    ("v1 text too long", "POST", SST, json.dumps({"texts": ["a" * 5001]}).encode(), {}, 413),
    ("v1 body over the limit", "POST", SST, json.dumps({"texts": ["a" * 70_000]}).encode(), {}, 413),
    (
        "v1 multipart body",
        "POST",
        SST,
        b"--x\r\n\r\nhi\r\n--x--",
        {"content-type": "multipart/form-data; boundary=x"},
        400,
    ),
    # ---- /v2: JSON, parameters, nesting, types
    ("v2 not JSON", "POST", INFER, b"{nope", {}, 400),
    ("v2 empty body", "POST", INFER, b"", {}, 400),
    ("v2 invalid UTF-8", "POST", INFER, b'{"inputs": [{"name": "\xff"}]}', {}, 400),
    ("v2 deep nesting", "POST", INFER, DEEP.encode(), {}, 400),
    ("v2 deep nesting in data", "POST", INFER, oip(text_input(data=json.loads("[" * 500 + "]" * 500))), {}, 422),
    ("v2 huge integer", "POST", INFER, b'{"inputs": [], "x": ' + b"9" * 5000 + b"}", {}, 400),
    ("v2 body is a list", "POST", INFER, b"[]", {}, 422),
    ("v2 inputs missing", "POST", INFER, b"{}", {}, 422),
    ("v2 inputs not a list", "POST", INFER, b'{"inputs": {"name": "text"}}', {}, 422),
    ("v2 input not an object", "POST", INFER, b'{"inputs": ["text"]}', {}, 422),
    ("v2 input without a name", "POST", INFER, oip({"datatype": "BYTES", "shape": [1], "data": ["a"]}), {}, 422),
    ("v2 request parameters a list", "POST", INFER, oip(parameters=["binary_data_output"]), {}, 400),
    ("v2 request parameters a string", "POST", INFER, oip(parameters="x"), {}, 400),
    ("v2 input parameters a list", "POST", INFER, oip(text_input(parameters=[1])), {}, 400),
    ("v2 input parameters a number", "POST", INFER, oip(text_input(parameters=7)), {}, 400),
    ("v2 output parameters a string", "POST", INFER, oip(outputs=[{"name": "label", "parameters": "bin"}]), {}, 400),
    ("v2 binary flag a string", "POST", INFER, oip(parameters={"binary_data_output": "false"}), {}, 400),
    ("v2 unknown output", "POST", INFER, oip(outputs=[{"name": "probabilities"}]), {}, 422),
    ("v2 outputs not a list", "POST", INFER, oip(outputs={"name": "label"}), {}, 422),
    ("v2 unknown input", "POST", INFER, oip(text_input(), text_input(name="image")), {}, 422),
    ("v2 text missing", "POST", INFER, oip(text_input(name="text_pair")), {}, 422),
    ("v2 wrong datatype", "POST", INFER, oip(text_input(datatype="FP32", data=[1.0])), {}, 422),
    ("v2 data of numbers", "POST", INFER, oip(text_input(data=[1])), {}, 422),
    ("v2 data not a list", "POST", INFER, oip(text_input(data="fine")), {}, 422),
    ("v2 data missing", "POST", INFER, oip(text_input(data=None) | {"data": None}), {}, 422),
    ("v2 shape not matching", "POST", INFER, oip(text_input(shape=[3])), {}, 422),
    ("v2 shape of three dims", "POST", INFER, oip(text_input(shape=[1, 1, 1])), {}, 422),
    ("v2 shape negative", "POST", INFER, oip(text_input(shape=[-1])), {}, 422),
    ("v2 shape of booleans", "POST", INFER, oip(text_input(shape=[True])), {}, 422),
    ("v2 shape huge", "POST", INFER, oip(text_input(shape=[2**62, 2**62])), {}, 422),
    ("v2 shape a float", "POST", INFER, oip(text_input(shape=[1e308])), {}, 422),
    ("v2 id not a string", "POST", INFER, oip(id={"nested": [1]}), {}, 422),
    ("v2 pair missing", "POST", RTE_INFER, oip(), {}, 422),
    ("v2 unknown model", "POST", "/v2/models/nope/infer", oip(), {}, 404),
    ("v2 unknown version", "POST", "/v2/models/sst/versions/2/infer", oip(), {}, 404),
    ("v2 too many texts", "POST", INFER, oip(text_input(shape=[17], data=["a"] * 17)), {}, 413),
    ("v2 compressed", "POST", INFER, oip(), {"content-encoding": "gzip"}, 400),
    # ---- /v2 binary tensor extension: framing headers
    ("v2 header length not a number", "POST", INFER, oip(), {"inference-header-content-length": "ten"}, 400),
    ("v2 header length negative", "POST", INFER, oip(), {"inference-header-content-length": "-1"}, 400),
    ("v2 header length past the body", "POST", INFER, oip(), {"inference-header-content-length": "99999"}, 400),
    ("v2 header length cuts the JSON", "POST", INFER, oip(), {"inference-header-content-length": "5", **OCTET}, 400),
    (
        "v2 binary size past the body",
        "POST",
        INFER,
        framed({"inputs": [text_input(data=None, parameters={"binary_data_size": 100})]}, b"\x01\x00\x00\x00a"),
        {"inference-header-content-length": "-"},
        400,
    ),
    (
        "v2 binary size a boolean",
        "POST",
        INFER,
        framed({"inputs": [text_input(data=None, parameters={"binary_data_size": True})]}, b"\x01"),
        {"inference-header-content-length": "-"},
        400,
    ),
    (
        "v2 binary element truncated",
        "POST",
        INFER,
        framed({"inputs": [text_input(data=None, parameters={"binary_data_size": 6})]}, b"\x09\x00\x00\x00ab"),
        {"inference-header-content-length": "-"},
        400,
    ),
    (
        "v2 binary invalid UTF-8",
        "POST",
        INFER,
        framed({"inputs": [text_input(data=None, parameters={"binary_data_size": 6})]}, b"\x02\x00\x00\x00\xff\xfe"),
        {"inference-header-content-length": "-"},
        422,
    ),
    (
        "v2 binary count not matching the shape",
        "POST",
        INFER,
        framed(
            {"inputs": [text_input(shape=[2], data=None, parameters={"binary_data_size": 5})]}, b"\x01\x00\x00\x00a"
        ),
        {"inference-header-content-length": "-"},
        400,
    ),
    # ---- other routes
    ("unknown route", "GET", "/v1/nothing", None, {}, 404),
    ("v2 unknown route", "GET", "/v2/nothing", None, {}, 404),
    ("wrong method", "GET", SST, None, {}, 405),
    ("v2 model metadata of an unknown model", "GET", "/v2/models/nope", None, {}, 404),
    ("v2 ready of an unknown version", "GET", "/v2/models/sst/versions/9/ready", None, {}, 404),
]


def _with_framing(body: bytes | None, headers: dict[str, str]) -> dict[str, str]:
    """``inference-header-content-length: -`` in the table stands for the JSON header's real length."""
    if headers.get("inference-header-content-length") == "-" and body is not None:
        header_end = body.index(b"}]}") + 3
        return {**headers, "inference-header-content-length": str(header_end), **OCTET}
    return headers


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_gets_a_4xx_json_error(case: tuple, client: httpx.Client) -> None:
    _, method, path, body, headers, status = case
    response = client.request(method, path, content=body, headers=_with_framing(body, headers))
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    if path.startswith("/v2"):
        assert isinstance(error, str) and error
    else:
        assert error["code"] and error["message"]
    # ... and the server keeps serving.
    assert predict(client, "sst", ["still fine"]).status_code == 200


def test_bad_input_table_size() -> None:
    """docs/SERVING.md reports how many bad inputs the table tries: keep the two in step."""
    doc = (REPO / "docs" / "SERVING.md").read_text()
    assert f"{len(BAD_INPUTS)} bad inputs" in doc


# -------------------------------------------------------------------------------- any content type
def test_json_bodies_are_read_whatever_the_content_type(client: httpx.Client) -> None:
    body = b'{"texts": ["a gripping, warm film"]}'
    for content_type in (None, "application/x-www-form-urlencoded", "text/plain", "application/octet-stream"):
        headers = {} if content_type is None else {"content-type": content_type}
        response = client.post(SST, content=body, headers=headers)
        assert response.status_code == 200, (content_type, response.text)
    inputs = oip()
    response = client.post(INFER, content=inputs, headers={"content-type": "application/x-www-form-urlencoded"})
    assert response.status_code == 200, response.text


def _readme_curl_lines() -> list[str]:
    readme = (REPO / "README.md").read_text()
    lines = [line.strip() for line in readme.splitlines() if line.strip().startswith("curl ")]
    assert lines, "README.md has no curl lines"
    return lines


def _run_curl(line: str, url: str) -> tuple[int, str]:
    """Run a README curl line against ``url``: with curl itself when installed, else with httpx sending
    what curl sends for ``-d`` (a POST with ``application/x-www-form-urlencoded``)."""
    args = shlex.split(line.replace("localhost:8000", url.removeprefix("http://")))
    if shutil.which("curl"):
        done = subprocess.run([*args, "-w", "\n%{http_code}"], capture_output=True, text=True, timeout=60)
        body, _, code = done.stdout.rpartition("\n")
        return int(code), body
    data = args[args.index("-d") + 1]
    target = next(a for a in args[1:] if not a.startswith("-") and a != data)
    response = httpx.post(
        "http://" + target, content=data, headers={"content-type": "application/x-www-form-urlencoded"}
    )
    return response.status_code, response.text


@pytest.fixture(scope="module")
def readme_server(serving_exports: dict[str, Path]) -> Iterator[BackgroundServer]:
    """The tasks README.md's serve line names, from the fixture exports."""
    names = set(re.findall(r"--task ([\w.-]+)=deploy/", (REPO / "README.md").read_text()))
    sources = {"sst2": serving_exports["sst"], "rte": serving_exports["rte"], "rte-opt": serving_exports["rte"]}
    assert names <= set(sources), names
    config = ServerConfig(port=0, intra_op_threads=1, tasks=[TaskSpec(n, str(sources[n])) for n in sorted(names)])
    with BackgroundServer(config) as server:
        yield server


@pytest.mark.parametrize("line", _readme_curl_lines())
def test_readme_curl_lines_run_as_written(line: str, readme_server: BackgroundServer) -> None:
    status, body = _run_curl(line, readme_server.url)
    assert status == 200, body
    answer = json.loads(body)
    assert answer.get("predictions") or answer.get("results") or answer.get("outputs"), answer


# ------------------------------------------------------------------------------------------ HTTP limits
@pytest.fixture(scope="module")
def impatient_server(serving_exports: dict[str, Path]) -> Iterator[BackgroundServer]:
    """The HTTP tests' server with a one-second body timeout."""
    with BackgroundServer(replace(served_config(serving_exports), body_timeout_s=1.0)) as server:
        yield server


def _connect(server: BackgroundServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    return sock


def _read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (the socket timeout fails the test
    if the server never does)."""
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def _status_and_body(raw: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_a_stalled_body_is_answered_408_and_closed(impatient_server: BackgroundServer) -> None:
    with _connect(impatient_server) as sock:
        sock.sendall(
            b"POST /v1/tasks/sst/predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b'content-length: 100\r\n\r\n{"texts": ['
        )
        status, body = _status_and_body(_read_until_closed(sock))
    assert status == 408 and body["error"]["code"] == "request_timeout"
    with httpx.Client(base_url=impatient_server.url) as c:
        assert predict(c, "sst", ["still fine"]).status_code == 200


def test_a_stalled_head_is_answered_408_and_closed(impatient_server: BackgroundServer) -> None:
    with _connect(impatient_server) as sock:
        sock.sendall(b"POST /v1/tasks/sst/predict HTTP/1.1\r\nhost: x\r\ncontent-le")
        status, body = _status_and_body(_read_until_closed(sock))
    assert status == 408 and "head" in body["error"]["message"]
    with _connect(impatient_server) as sock:  # a connection that never sends anything is closed too
        assert _status_and_body(_read_until_closed(sock))[0] == 408


def test_an_oversized_head_is_answered_431(server: BackgroundServer) -> None:
    with _connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * (MAX_HEAD_BYTES + 1) + b"\r\n\r\n")
        status, body = _status_and_body(_read_until_closed(sock))
    assert status == 431 and "head" in body["error"]["message"]
    # A head just under the limit is served.
    with _connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\nx-big: " + b"a" * 60_000 + b"\r\n\r\n")
        assert _status_and_body(_read_until_closed(sock))[0] == 200


def test_a_huge_head_is_not_read(server: BackgroundServer) -> None:
    """8 MiB of header: the server answers 431 after the first 64 KiB and closes, so the client's send
    fails or its answer is the 431; never a 5xx, and the server keeps serving."""
    with _connect(server) as sock:
        answer = b""
        try:
            sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * (8 << 20))
        except (BrokenPipeError, ConnectionResetError):
            pass
        else:
            answer = _read_until_closed(sock)
    if answer:
        assert _status_and_body(answer)[0] == 431
    assert httpx.get(server.url + "/health").status_code == 200
