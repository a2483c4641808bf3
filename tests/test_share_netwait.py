"""Pushing to a Hub endpoint that accepts connections and never answers ends with a clear timeout error.

The real huggingface_hub client is pointed at tests/silent_hub.py (through fake_hub.point_client_at);
``aa-deploy push --hub-timeout`` and the push API must give up after the limit, naming the endpoint and
the setting to raise, instead of waiting forever.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_hub import point_client_at
from silent_hub import SilentHub

from aa_deploy.cli import main
from aa_deploy.hub import HubTimeoutError, push_folder_to_hub, resolve_pretrained_path
from aa_deploy.hub_push import push_to_hub

REPO = "alice/rte-adapter"


@pytest.fixture
def silent_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SilentHub]:
    from huggingface_hub.utils import _http

    with SilentHub() as hub:
        point_client_at(hub, monkeypatch, tmp_path / "hf-home")
        monkeypatch.setenv("HF_TOKEN", "hf_silent_token")
        yield hub
        _http.close_session()  # drop the connections held open by the silent server


def test_push_api_times_out_on_a_silent_hub(silent_hub: SilentHub, serving_exports: dict[str, Path]) -> None:
    with pytest.raises(HubTimeoutError) as caught:
        push_to_hub(serving_exports["rte"], REPO, timeout_s=1)
    message = str(caught.value)
    assert silent_hub.url in message and "1 s" in message and "--hub-timeout" in message
    assert silent_hub.connections >= 1  # it really reached the endpoint and waited on it


def test_push_folder_times_out_on_a_silent_hub(silent_hub: SilentHub, tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "file.txt").write_text("x")
    with pytest.raises(HubTimeoutError, match="did not answer within 1 s while pushing alice/rte-adapter@main"):
        push_folder_to_hub(folder, REPO, timeout_s=1)


def test_push_cli_reports_the_timeout(
    silent_hub: SilentHub, serving_exports: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["push", str(serving_exports["rte"]), "--repo-id", REPO, "--hub-timeout", "1"])
    assert code != 0
    err = capsys.readouterr().err
    assert "did not answer within 1 s" in err and silent_hub.url in err and "--hub-timeout" in err


def test_download_times_out_on_a_silent_hub(silent_hub: SilentHub) -> None:
    with pytest.raises(HubTimeoutError, match=r"while downloading alice/rte-adapter@main"):
        resolve_pretrained_path(REPO, timeout_s=1)


@pytest.mark.parametrize("bad", [0, -1, float("inf"), float("nan")])
def test_timeout_must_be_positive_and_finite(silent_hub: SilentHub, bad: float) -> None:
    with pytest.raises(ValueError, match="positive number of seconds"):
        resolve_pretrained_path(REPO, timeout_s=bad)
    assert silent_hub.connections == 0
