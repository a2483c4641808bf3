"""The Open Inference Protocol v2 on the real server (127.0.0.1): the real tritonclient, raw JSON and
binary bodies, errors, and OIP requests recorded in the same metrics as native ``/v1`` requests."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from serving_helpers import PAIRS, SERVED, TEXTS, Reference, predict

from aa_deploy.serving.server import BackgroundServer


def sample(client: httpx.Client, name: str, **labels: str) -> float:
    """The value of one series of ``/metrics`` (0 when it does not exist yet), parsed by prometheus_client."""
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return 0.0


# ---------------------------------------------------------------------------------------------- OIP v2
def test_open_inference_protocol_with_tritonclient(server: BackgroundServer, references: dict[str, Reference]) -> None:
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("rte")
    meta = client.get_model_metadata("rte")
    assert [i["name"] for i in meta["inputs"]] == ["text", "text_pair"]
    assert meta["outputs"][0] == {"name": "logits", "datatype": "FP32", "shape": [-1, 2]}
    texts, pairs = TEXTS[:5], PAIRS[:5]
    for binary in (True, False):
        a = triton.InferInput("text", [len(texts)], "BYTES")
        a.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object), binary_data=binary)
        b = triton.InferInput("text_pair", [len(pairs)], "BYTES")
        b.set_data_from_numpy(np.array([p.encode() for p in pairs], dtype=object), binary_data=binary)
        outputs = [
            triton.InferRequestedOutput("logits", binary_data=binary),
            triton.InferRequestedOutput("label", binary_data=binary),
        ]
        result = client.infer("rte", [a, b], outputs=outputs, request_id="r1")
        np.testing.assert_allclose(result.as_numpy("logits"), references["rte"].logits(texts, pairs), atol=1e-4)
        labels = [x.decode() if isinstance(x, bytes) else x for x in result.as_numpy("label")]
        assert labels == references["rte"].labels(texts, pairs)
        assert result.get_response()["id"] == "r1"
    single = triton.InferInput("text", [2], "BYTES")
    single.set_data_from_numpy(np.array([b"good", b"bad"], dtype=object))
    result = client.infer("sst", [single])  # default outputs
    np.testing.assert_allclose(result.as_numpy("logits"), references["sst"].logits(["good", "bad"]), atol=1e-4)
    with pytest.raises(InferenceServerException, match="not loaded"):
        client.infer("nope", [single])
    with pytest.raises(InferenceServerException, match="text_pair"):
        client.infer("rte", [single])
    wrong = triton.InferInput("text", [1], "FP32")
    wrong.set_data_from_numpy(np.array([1.0], dtype=np.float32))
    with pytest.raises(InferenceServerException, match="BYTES"):
        client.infer("sst", [wrong])
    client.close()


def test_oip_raw_json_and_errors(client: httpx.Client) -> None:
    body = {"inputs": [{"name": "text", "shape": [2, 1], "datatype": "BYTES", "data": [["fine"], ["ok"]]}]}
    r = client.post("/v2/models/sst/infer", json=body)
    assert r.status_code == 200 and r.json()["outputs"][0]["shape"] == [2, 2]
    assert client.post("/v2/models/sst/infer", content=b"{nope").json()["error"]
    r = client.post(
        "/v2/models/sst/infer", json={"inputs": [{"name": "text", "shape": [3], "datatype": "BYTES", "data": ["a"]}]}
    )
    assert r.status_code == 422 and "elements" in r.json()["error"]
    r = client.post("/v2/models/sst/versions/7/infer", json=body)
    assert r.status_code == 404
    assert client.get("/v2").json()["name"] == "aa-deploy"


def oip_infer(client: httpx.Client, name: str, texts: list[str], pairs: list[str] | None = None) -> httpx.Response:
    inputs = [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}]
    if pairs is not None:
        inputs.append({"name": "text_pair", "shape": [len(pairs)], "datatype": "BYTES", "data": pairs})
    return client.post(f"/v2/models/{name}/infer", json={"inputs": inputs})


def test_oip_requests_are_recorded_like_v1_requests(client: httpx.Client) -> None:
    """One service call serves both protocols: an OIP request lands in the same request, latency, texts
    and error series as a /v1 request, under its own endpoint label."""
    series = {
        "v1_ok": ("aa_requests_total", {"task": "topic", "endpoint": "predict", "status": "200"}),
        "oip_ok": ("aa_requests_total", {"task": "topic", "endpoint": "oip", "status": "200"}),
        "v1_failed": ("aa_requests_total", {"task": "topic", "endpoint": "predict", "status": "422"}),
        "oip_failed": ("aa_requests_total", {"task": "topic", "endpoint": "oip", "status": "422"}),
        "oip_too_many": ("aa_requests_total", {"task": "topic", "endpoint": "oip", "status": "413"}),
        "latency": ("aa_request_latency_seconds_count", {"task": "topic"}),
        "texts": ("aa_texts_total", {"task": "topic"}),
        "invalid": ("aa_errors_total", {"code": "invalid_input"}),
        "too_many": ("aa_errors_total", {"code": "too_many_texts"}),
    }
    before = {key: sample(client, name, **labels) for key, (name, labels) in series.items()}
    assert predict(client, "topic", ["one", "two"]).status_code == 200
    assert oip_infer(client, "topic", ["three", "four", "five"]).status_code == 200
    # The same mistake (a pair for a single-text task) by both protocols, and an OIP request over a limit.
    assert predict(client, "topic", ["x"], ["y"]).status_code == 422
    assert oip_infer(client, "topic", ["x"], ["y"]).status_code == 422
    assert oip_infer(client, "topic", ["x"] * 17).status_code == 413
    after = {key: sample(client, name, **labels) for key, (name, labels) in series.items()}
    delta = {key: after[key] - before[key] for key in series}
    assert delta == {
        "v1_ok": 1,
        "oip_ok": 1,
        "v1_failed": 1,
        "oip_failed": 1,
        "oip_too_many": 1,
        "latency": 2,
        "texts": 5,
        "invalid": 2,
        "too_many": 1,
    }


def test_oip_readiness_is_the_native_readiness(client: httpx.Client) -> None:
    assert client.get("/ready").status_code == client.get("/v2/health/ready").status_code == 200
    assert client.post("/v2/repository/index").json() == [
        {"name": n, "version": "1", "state": "READY"} for n in sorted(SERVED)
    ]
