"""aa_deploy.hub against the real huggingface_hub client, talking to a local FakeHub.

No test reaches the real Hub: ``hub_client`` points the client at the FakeHub and makes the shared
HTTP client refuse any other host.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import huggingface_hub
import pytest
from fake_hub import DEFAULT_USER, FakeHub, fake_hub_fixture, git_blob_sha, hub_client_fixture  # noqa: F401
from huggingface_hub import HfApi
from huggingface_hub import file_download as hf_file_download

from aa_deploy.hub import (
    EmptyFolderError,
    HubAuthError,
    HubDownloadError,
    HubError,
    HubOfflineError,
    HubRepoNotFoundError,
    HubRevisionNotFoundError,
    HubUploadError,
    InvalidRepoIdError,
    LocalFolderNotFoundError,
    NotAnArtifactError,
    is_hub_id,
    push_folder_to_hub,
    resolve_pretrained_path,
)

REPO = "alice/sentiment-adapter"
MARKER = "aa_adapter_config.json"
NO_TOKEN = "no Hugging Face token found: run `hf auth login` or set HF_TOKEN"
# Every endpoint the client may legitimately call for these operations; anything else (LFS batch,
# Xet token routes, ...) would mean the upload/download path is not the plain one we expect.
EXPECTED_ENDPOINTS = re.compile(
    r"^/(api/whoami-v2|api/repos/create|api/validate-yaml"
    r"|api/models/[^/]+/[^/]+(/revision/[^/]+|/tree/.+|/branch/[^/]+|/preupload/[^/]+|/commit/[^/]+)?"
    r"|[^/]+/[^/]+/resolve/[^/]+/.+)$"
)


def artifact_files(version: str = "v1", big: int = 200_000) -> dict[str, bytes]:
    rng = random.Random(version)
    return {
        MARKER: f'{{"rank": 8, "version": "{version}"}}'.encode(),
        "aa_adapter_model.safetensors": rng.randbytes(big),
        "onnx/model.onnx": rng.randbytes(5_000),
        "README.md": b"---\nlicense: apache-2.0\n---\n# Sentiment adapter\n",
    }


def write_folder(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def read_folder(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def resolve_gets(hub: FakeHub) -> int:
    return sum(1 for r in hub.requests if r.method == "GET" and "/resolve/" in r.path)


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    return write_folder(tmp_path / "artifact-v1", artifact_files("v1"))


@pytest.fixture
def logged_in(hub_client: FakeHub, monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    monkeypatch.setenv("HF_TOKEN", hub_client.token)
    return hub_client


@pytest.fixture
def no_retry_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    """huggingface_hub sleeps 1 s before each of its 5 download resumes; skip that in tests only."""

    class _TimeWithoutSleep:
        def __getattr__(self, name: str) -> object:
            return getattr(time, name)

        @staticmethod
        def sleep(seconds: float) -> None:
            pass

    monkeypatch.setattr(hf_file_download, "time", _TimeWithoutSleep())


# ------------------------------------------------------------------------------------ push


def test_push_creates_repo_in_one_commit_and_returns_its_url(logged_in: FakeHub, artifact: Path) -> None:
    url = push_folder_to_hub(artifact, REPO)
    print(f"pushed: {url}")

    assert logged_in.repo_exists(REPO) and not logged_in.is_private(REPO)
    history = logged_in.history(REPO)
    assert len(history) == 2  # the Hub's initial commit + exactly one for the whole folder
    assert url == f"{logged_in.url}/{REPO}/commit/{history[0]}"
    assert [r.path for r in logged_in.requests if r.path.endswith("/commit/main")] == [
        f"/api/models/{REPO}/commit/main"
    ]
    hosted = logged_in.files(REPO)
    assert {k: v for k, v in hosted.items() if k != ".gitattributes"} == read_folder(artifact)
    assert all(EXPECTED_ENDPOINTS.match(r.path) for r in logged_in.requests), logged_in.requests


def test_push_applies_patterns_and_never_uploads_git_metadata(logged_in: FakeHub, artifact: Path) -> None:
    write_folder(artifact, {".git/config": b"[core]", "logs/train.txt": b"loss=0.1", "notes.tmp": b"x"})

    push_folder_to_hub(artifact, REPO, ignore_patterns=["logs/*", "*.tmp"], commit_message="adapter v1")

    assert sorted(logged_in.files(REPO)) == sorted([".gitattributes", *artifact_files("v1")])


def test_push_uses_the_stored_login(hub_client: FakeHub, artifact: Path) -> None:
    huggingface_hub.login(token=hub_client.token)  # what `hf auth login` does; validated via whoami

    push_folder_to_hub(artifact, REPO)

    assert hub_client.repo_exists(REPO)


def test_push_without_token_fails_before_any_request(hub_client: FakeHub, artifact: Path) -> None:
    with pytest.raises(HubAuthError) as err:
        push_folder_to_hub(artifact, REPO)

    assert str(err.value) == NO_TOKEN
    assert hub_client.requests == []


def test_push_with_rejected_token_says_so(hub_client: FakeHub, artifact: Path) -> None:
    with pytest.raises(HubAuthError, match="rejected the token"):
        push_folder_to_hub(artifact, REPO, token="hf_not_a_real_token")
    assert not hub_client.repo_exists(REPO)


@pytest.mark.parametrize("make", ["missing", "empty", "only-ignored"])
def test_push_refuses_missing_or_empty_folders(logged_in: FakeHub, tmp_path: Path, make: str) -> None:
    folder = tmp_path / "out"
    if make != "missing":
        folder.mkdir()
    if make == "only-ignored":
        write_folder(folder, {".git/HEAD": b"ref: refs/heads/main"})
    expected = LocalFolderNotFoundError if make == "missing" else EmptyFolderError

    with pytest.raises(expected):
        push_folder_to_hub(folder, REPO)
    assert logged_in.requests == []


def test_push_refuses_invalid_targets(logged_in: FakeHub, artifact: Path) -> None:
    with pytest.raises(InvalidRepoIdError):
        push_folder_to_hub(artifact, "./not/a/repo")
    with pytest.raises(ValueError, match="commit id"):
        push_folder_to_hub(artifact, REPO, revision="0" * 40)
    assert logged_in.requests == []


def test_failed_commit_changes_nothing_and_a_retry_succeeds(logged_in: FakeHub, tmp_path: Path) -> None:
    push_folder_to_hub(write_folder(tmp_path / "v1", artifact_files("v1")), REPO)
    before = logged_in.history(REPO)
    v2 = write_folder(tmp_path / "v2", artifact_files("v2"))

    logged_in.fail_next_commit(status=500)
    with pytest.raises(HubUploadError, match="Nothing was committed"):
        push_folder_to_hub(v2, REPO)

    assert logged_in.history(REPO) == before
    assert logged_in.files(REPO)[MARKER] == artifact_files("v1")[MARKER]
    push_folder_to_hub(v2, REPO)
    assert logged_in.files(REPO)[MARKER] == artifact_files("v2")[MARKER]


# ------------------------------------------------------------------------------------ load


def test_load_by_id_gives_identical_bytes_and_reuses_the_cache(logged_in: FakeHub, artifact: Path) -> None:
    push_folder_to_hub(artifact, REPO)

    path = resolve_pretrained_path(REPO, required_file=MARKER)
    downloads = resolve_gets(logged_in)
    again = resolve_pretrained_path(REPO, required_file=MARKER)

    assert {k: v for k, v in read_folder(path).items() if k != ".gitattributes"} == read_folder(artifact)
    assert again == path
    assert resolve_gets(logged_in) == downloads  # second load: metadata only, no file downloaded again


def test_allow_patterns_still_fetch_the_marker(logged_in: FakeHub, artifact: Path) -> None:
    push_folder_to_hub(artifact, REPO)

    path = resolve_pretrained_path(REPO, allow_patterns=["onnx/*"], required_file=MARKER)

    assert sorted(read_folder(path)) == [MARKER, "onnx/model.onnx"]


def test_private_repo_is_refused_without_token_and_loads_with_one(
    hub_client: FakeHub, artifact: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    push_folder_to_hub(artifact, REPO, private=True, token=hub_client.token)
    assert hub_client.is_private(REPO)

    with pytest.raises(HubRepoNotFoundError) as err:
        resolve_pretrained_path(REPO)
    assert "private" in str(err.value) and "token" in str(err.value)
    with pytest.raises(HubRepoNotFoundError, match="rejected the token"):
        resolve_pretrained_path(REPO, token="hf_not_a_real_token")

    path = resolve_pretrained_path(REPO, token=hub_client.token, required_file=MARKER)
    assert (path / MARKER).read_bytes() == (artifact / MARKER).read_bytes()
    monkeypatch.setenv("HF_TOKEN", hub_client.token)
    assert resolve_pretrained_path(REPO) == path


def test_branch_push_leaves_main_alone_and_revisions_pin(logged_in: FakeHub, tmp_path: Path) -> None:
    v1, v2, v3 = (write_folder(tmp_path / v, artifact_files(v)) for v in ("v1", "v2", "v3"))
    url_v1 = push_folder_to_hub(v1, REPO)
    push_folder_to_hub(v2, REPO, revision="experiment")
    url_v3 = push_folder_to_hub(v3, REPO, revision="experiment")  # branch exists now: reused
    v1_commit = url_v1.rsplit("/", 1)[1]

    assert set(logged_in.branches(REPO)) == {"main", "experiment"}
    assert logged_in.files(REPO, "main")[MARKER] == artifact_files("v1")[MARKER]
    assert read_folder(resolve_pretrained_path(REPO))[MARKER] == artifact_files("v1")[MARKER]
    assert read_folder(resolve_pretrained_path(REPO, revision="experiment"))[MARKER] == artifact_files("v3")[MARKER]
    pinned = resolve_pretrained_path(REPO, revision=v1_commit)
    assert pinned.name == v1_commit and read_folder(pinned)[MARKER] == artifact_files("v1")[MARKER]
    assert logged_in.history(REPO, "experiment")[0] == url_v3.rsplit("/", 1)[1]


@pytest.mark.parametrize("how", ["env-var-set-late", "set-before-import"])
def test_offline_load_is_served_from_the_cache(
    logged_in: FakeHub, artifact: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    push_folder_to_hub(artifact, REPO)
    online = resolve_pretrained_path(REPO, required_file=MARKER)
    logged_in.stop()  # the network is really gone now

    if how == "env-var-set-late":  # huggingface_hub itself only reads HF_HUB_OFFLINE at import
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    assert resolve_pretrained_path(REPO, required_file=MARKER) == online
    assert read_folder(online)[MARKER] == (artifact / MARKER).read_bytes()


def test_offline_load_of_an_uncached_repo_fails_clearly(hub_client: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    hub_client.commit_files(REPO, artifact_files("v1"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    with pytest.raises(HubOfflineError, match="not in the local Hugging Face cache.*HF_HUB_OFFLINE"):
        resolve_pretrained_path(REPO)
    assert hub_client.requests == []


def test_unreachable_hub_and_empty_cache_fails_clearly(hub_client: FakeHub) -> None:
    hub_client.stop()
    with pytest.raises(HubOfflineError, match="could not reach the Hub"):
        resolve_pretrained_path(REPO)


def test_download_glitch_is_resumed_transparently(
    logged_in: FakeHub, monkeypatch: pytest.MonkeyPatch, no_retry_pause: None
) -> None:
    # The client only keeps whole chunks (10 MB by default) of a cut transfer; shrink them so a
    # small file is resumed with a Range request instead of being fetched again from the start.
    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 4096)
    logged_in.commit_files(REPO, artifact_files("v1", big=400_000))
    logged_in.fail_next_download(times=1, after_bytes=10_000)

    path = resolve_pretrained_path(REPO, required_file=MARKER)

    assert read_folder(path) == logged_in.files(REPO)
    assert [r.range for r in logged_in.requests if r.range] == ["bytes=8192-"]


def test_interrupted_download_keeps_nothing_half_written_and_retry_succeeds(
    logged_in: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_retry_pause: None
) -> None:
    logged_in.commit_files(REPO, artifact_files("v1", big=400_000))
    logged_in.fail_next_download(times=1_000, after_bytes=100_000)  # only the big file is long enough to be cut

    with pytest.raises(HubDownloadError, match="re-run"):
        resolve_pretrained_path(REPO, required_file=MARKER)

    cache = tmp_path / "hf-home" / "hub"
    assert not [p for p in cache.rglob("*") if "incomplete" in p.name]
    for blob in (cache / f"models--{REPO.replace('/', '--')}" / "blobs").iterdir():
        assert git_blob_sha(blob.read_bytes()) == blob.name  # every kept blob is complete
    assert not list(cache.rglob("aa_adapter_model.safetensors"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubOfflineError, match="incomplete"):
        resolve_pretrained_path(REPO)

    monkeypatch.delenv("HF_HUB_OFFLINE")
    logged_in.clear_faults()
    path = resolve_pretrained_path(REPO, required_file=MARKER)
    assert read_folder(path) == logged_in.files(REPO)


def test_unknown_repo_is_reported_as_such(logged_in: FakeHub) -> None:
    with pytest.raises(HubRepoNotFoundError) as err:
        resolve_pretrained_path("alice/does-not-exist")
    message = str(err.value)
    assert "not a local folder" in message and "private" in message and "--revision" in message


def test_unknown_revision_is_reported_as_such(logged_in: FakeHub) -> None:
    logged_in.commit_files(REPO, artifact_files("v1"))
    with pytest.raises(HubRevisionNotFoundError, match="no revision 'v9'"):
        resolve_pretrained_path(REPO, revision="v9")


def test_repo_without_adapter_is_not_an_artifact(logged_in: FakeHub) -> None:
    logged_in.commit_files("alice/just-a-model", {"config.json": b"{}"})
    with pytest.raises(NotAnArtifactError) as err:
        resolve_pretrained_path("alice/just-a-model", required_file=MARKER)
    assert str(err.value) == f"repo alice/just-a-model holds no aa-deploy adapter: {MARKER} is missing"


def test_local_folder_passes_through(hub_client: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = write_folder(tmp_path / "alice" / "local-adapter", artifact_files("v1"))
    monkeypatch.chdir(tmp_path)

    assert resolve_pretrained_path(folder, required_file=MARKER) == folder
    assert resolve_pretrained_path("alice/local-adapter") == Path("alice/local-adapter")  # a folder wins over an id
    (folder / MARKER).unlink()
    with pytest.raises(NotAnArtifactError, match=f"{MARKER} is missing"):
        resolve_pretrained_path(folder, required_file=MARKER)
    assert hub_client.requests == []


@pytest.mark.parametrize("name", ["./missing", "/definitely/missing", "~/missing-adapter-xyz", "a/b/c", "has space"])
def test_missing_local_looking_paths_never_reach_the_hub(hub_client: FakeHub, name: str) -> None:
    with pytest.raises(LocalFolderNotFoundError) as err:
        resolve_pretrained_path(name)
    assert isinstance(err.value, FileNotFoundError) and isinstance(err.value, HubError)
    assert hub_client.requests == []


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("alice/adapter", True),
        ("gpt2", True),
        ("org-1/model_v2.0", True),
        ("./adapter", False),
        ("/abs/path", False),
        ("~/x", False),
        ("a/b/c", False),
        ("a\\b", False),
        ("", False),
        ("bad--name/x", False),
        ("x/y.git", False),
        ("-x/y", False),
        ("has space", False),
    ],
)
def test_is_hub_id(value: str, expected: bool) -> None:
    assert is_hub_id(value) is expected


# ------------------------------------------------------------------ FakeHub and environment


def test_fake_hub_answers_the_client_metadata_calls(logged_in: FakeHub, artifact: Path) -> None:
    push_folder_to_hub(artifact, REPO)
    api = HfApi(endpoint=logged_in.url, token=logged_in.token)

    assert api.whoami()["name"] == DEFAULT_USER
    assert sorted(api.list_repo_files(REPO)) == sorted([".gitattributes", *artifact_files("v1")])
    info = api.model_info(REPO)
    assert info.sha == logged_in.history(REPO)[0] and info.private is False
    assert [f.path for f in api.list_repo_tree(REPO, path_in_repo="onnx")] == ["onnx/model.onnx"]


def test_a_fresh_process_configured_only_by_env_vars(fake_hub: FakeHub, artifact: Path, tmp_path: Path) -> None:
    """The real-life setup: HF_* variables set before Python starts, nothing patched."""
    script = textwrap.dedent(
        f"""
        from aa_deploy.hub import push_folder_to_hub, resolve_pretrained_path
        print(push_folder_to_hub({str(artifact)!r}, {REPO!r}, private=True))
        print(resolve_pretrained_path({REPO!r}, required_file={MARKER!r}))
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING", "TRANSFORMERS_"))}
    env.update(
        HF_ENDPOINT=fake_hub.url,
        HF_HOME=str(tmp_path / "fresh-home"),
        HF_TOKEN=fake_hub.token,
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        OMP_NUM_THREADS="1",
    )
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=180)

    assert done.returncode == 0, done.stderr
    url, path = done.stdout.split()[-2:]
    assert url.startswith(f"{fake_hub.url}/{REPO}/commit/")
    assert Path(path).is_relative_to(tmp_path / "fresh-home" / "hub")
    assert (Path(path) / MARKER).read_bytes() == (artifact / MARKER).read_bytes()
