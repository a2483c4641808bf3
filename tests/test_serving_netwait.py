"""A silent Hub (accepts connections, never answers) must not hang the server.

The real server on 127.0.0.1 with the real huggingface_hub client pointed at tests/silent_hub.py:
a start-up task naming an uncached Hub id fails after ``hub_timeout_s`` while the other tasks serve;
a runtime ``PUT`` of such an id ends with 504 ``hub_timeout`` and, while it waits, other loads, unloads
and predictions go through (the download happens outside the registry lock).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fake_hub import point_client_at
from silent_hub import SilentHub

from aa_deploy.serving.config import ServerConfig, TaskSpec
from aa_deploy.serving.server import BackgroundServer

TOKEN = "netwait-token"
HUB_ID = "alice/never-answers"


@pytest.fixture
def silent_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SilentHub]:
    from huggingface_hub.utils import _http

    with SilentHub() as hub:
        point_client_at(hub, monkeypatch, tmp_path / "hf-home")
        yield hub
        _http.close_session()


def _config(exports: dict[str, Path], hub_timeout_s: float, *tasks: TaskSpec) -> ServerConfig:
    return ServerConfig(
        tasks=[TaskSpec("sst", str(exports["sst"])), *tasks],
        port=0,
        intra_op_threads=1,
        token=TOKEN,
        hub_timeout_s=hub_timeout_s,
    )


def test_start_up_with_an_uncached_hub_id_finishes_and_reports_the_timeout(
    silent_hub: SilentHub, serving_exports: dict[str, Path]
) -> None:
    config = _config(serving_exports, 1.0, TaskSpec("remote", HUB_ID))
    with BackgroundServer(config) as server, httpx.Client(base_url=server.url, timeout=30) as c:
        listing = c.get("/v1/tasks").json()
        assert [t["name"] for t in listing["tasks"]] == ["sst"]
        reason = listing["failed"]["remote"]
        assert "did not answer within 1 s" in reason and "hub-timeout" in reason.lower()
        assert c.post("/v1/tasks/sst/predict", json={"texts": ["fine"]}).status_code == 200
    assert silent_hub.connections >= 1


def test_start_up_with_only_a_silent_hub_id_stops_instead_of_hanging(
    silent_hub: SilentHub, serving_exports: dict[str, Path]
) -> None:
    config = ServerConfig(tasks=[TaskSpec("remote", HUB_ID)], port=0, intra_op_threads=1, hub_timeout_s=1.0)
    with pytest.raises(RuntimeError, match="failed to start"):
        BackgroundServer(config).start()


def test_runtime_put_of_a_silent_hub_id_blocks_nothing_else(
    silent_hub: SilentHub, serving_exports: dict[str, Path]
) -> None:
    """The slow PUT is still waiting on the Hub when a local load, a prediction and an unload complete."""
    order: list[str] = []
    slow: dict[str, httpx.Response] = {}
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with BackgroundServer(_config(serving_exports, 5.0)) as server:

        def put_hub_id() -> None:
            with httpx.Client(base_url=server.url, headers=headers, timeout=60) as c:
                slow["response"] = c.put("/v1/tasks/remote", json={"source": HUB_ID})
            order.append("hub put answered")

        waiter = threading.Thread(target=put_hub_id)
        waiter.start()
        with httpx.Client(base_url=server.url, headers=headers, timeout=60) as c:
            while silent_hub.connections == 0 and waiter.is_alive():  # the PUT is now waiting on the Hub
                threading.Event().wait(0.02)
            assert c.put("/v1/tasks/rte", json={"source": str(serving_exports["rte"])}).status_code == 201
            order.append("local load")
            assert c.post("/v1/tasks/sst/predict", json={"texts": ["fine"]}).status_code == 200
            order.append("predict")
            assert c.delete("/v1/tasks/rte").status_code == 200
            order.append("unload")
            waiter.join(60)
            remote = c.get("/v1/tasks").json()["failed"]["remote"]
    assert order == ["local load", "predict", "unload", "hub put answered"]
    response = slow["response"]
    assert response.status_code == 504
    error = response.json()["error"]
    assert error["code"] == "hub_timeout"
    assert silent_hub.url in error["message"] and "did not answer within 5 s" in error["message"]
    assert "did not answer within 5 s" in remote


def test_hub_timeout_flag_and_environment_set_the_field(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from aa_deploy.cli import main

    assert main(["serve", "--task", "rte=x", "--hub-timeout", "2.5", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["hub_timeout_s"] == 2.5
    monkeypatch.setenv("AA_DEPLOY_HUB_TIMEOUT_S", "7")
    assert main(["serve", "--task", "rte=x", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["hub_timeout_s"] == 7.0
    assert main(["serve", "--task", "rte=x", "--hub-timeout", "0", "--print-config"]) == 1
    assert "hub_timeout_s must be a positive number" in capsys.readouterr().err
