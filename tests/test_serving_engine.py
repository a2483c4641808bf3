"""Serving runtime without HTTP: config, manifest, tokenisation, backbone sharing, the multi-task graph
(checked against each task's own exported graph), the registry and the batcher."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from fake_hub import FakeHub, fake_hub_fixture, hub_client_fixture  # noqa: F401
from serving_helpers import PAIRS, TEXTS, Reference

from aa_deploy.contract.manifest import ExportManifest, ManifestError
from aa_deploy.serving.batcher import DynamicBatcher
from aa_deploy.serving.config import ServerConfig, TaskSpec, validate_task_name
from aa_deploy.serving.engine import MergedRunner, SoloRunner, WorkItem, execute
from aa_deploy.serving.errors import Overloaded, ShuttingDown, TaskExists, TaskLoadError, TaskNotFound
from aa_deploy.serving.registry import TaskRegistry
from aa_deploy.serving.tokenization import TaskTokenizer

REPO = Path(__file__).resolve().parents[1]


def run_task(registry: TaskRegistry, name: str, texts: list[str], pairs: list[str] | None = None) -> np.ndarray:
    entry = registry.view.get(name)
    encoded = entry.artifact.tokenizer.encode(texts, pairs)
    result = execute([WorkItem(encoded, (entry.target,))], chunk_rows=4)[0]
    assert isinstance(result, dict), result
    return result[name]


def inputs_for(folder: Path) -> tuple[list[str], list[str] | None]:
    is_pair = json.loads((folder / "aa_export.json").read_text())["task"]["is_pair"]
    return TEXTS, (PAIRS if is_pair else None)


# ---------------------------------------------------------------------------------------------- config
def test_config_round_trips_json_and_redacts(tmp_path: Path) -> None:
    config = ServerConfig(
        tasks=[TaskSpec("rte", "exports/rte")], token="secret", max_batch_size=8, allowed_roots=["/x"]
    )
    again = ServerConfig.from_json(config.to_json())
    assert again == config
    assert json.loads(config.to_json(redact=True))["token"] == "***"
    config.save(tmp_path / "c.json")
    assert ServerConfig.load(tmp_path / "c.json") == config
    with pytest.raises(ValueError, match="unknown server config keys"):
        ServerConfig.from_dict({"max_batch": 3})
    with pytest.raises(ValueError, match="max_batch_size"):
        ServerConfig(max_batch_size=0)
    with pytest.raises(ValueError, match="unique"):
        ServerConfig(tasks=[TaskSpec("a", "x"), TaskSpec("a", "y")])


@pytest.mark.parametrize("name", ["../etc", "a/b", "", ".hidden", "x" * 65, "a..b", "with space", "é"])
def test_task_names_that_could_be_paths_are_rejected(name: str) -> None:
    with pytest.raises(ValueError, match="invalid task name"):
        validate_task_name(name)


def test_task_spec_parse() -> None:
    assert TaskSpec.parse("rte=exports/rte") == TaskSpec("rte", "exports/rte")
    assert TaskSpec.parse("rte=org/repo@v1") == TaskSpec("rte", "org/repo", "v1")
    with pytest.raises(ValueError, match="NAME=DIR"):
        TaskSpec.parse("exports/rte")


# ---------------------------------------------------------------------------------------------- manifest
def test_manifest_reads_the_export_contract(serving_exports: dict[str, Path]) -> None:
    m = ExportManifest.load(serving_exports["rte"])
    assert m.shared and m.is_pair and m.label_names == ("entailment", "not_entailment")
    assert m.inputs == ("input_ids", "attention_mask", "token_type_ids")
    assert ExportManifest.load(serving_exports["stsb"]).is_regression
    assert not ExportManifest.load(serving_exports["sst_standalone"]).shared


def test_broken_export_folders_fail_with_actionable_messages(serving_exports: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="not an aa-deploy export"):
        ExportManifest.load(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(serving_exports["sst"], broken)
    (broken / "backbone.onnx_data").unlink()
    with pytest.raises(ManifestError, match="backbone tensors\\) is missing"):
        ExportManifest.load(broken)
    data = json.loads((serving_exports["sst"] / "aa_export.json").read_text())
    (broken / "aa_export.json").write_text(json.dumps({**data, "format_version": 99}))
    with pytest.raises(ManifestError, match="format_version 99"):
        ExportManifest.load(broken)
    (broken / "aa_export.json").write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        ExportManifest.load(broken)


# ---------------------------------------------------------------------------------------------- tokenizer
def test_tokenizer_matches_transformers_and_truncates(
    serving_exports: dict[str, Path], references: dict[str, Reference]
) -> None:
    pytest.importorskip("transformers", reason="compares with transformers' tokenizer")
    folder = serving_exports["rte"]
    ref = references["rte"]
    tok = TaskTokenizer(folder / "tokenizer.json", max_length=ref.manifest["max_length"], is_pair=True)
    enc = tok.encode(TEXTS, PAIRS)
    for i, (text, pair) in enumerate(zip(TEXTS, PAIRS, strict=True)):
        expected = ref.tokenizer(text, pair, truncation=True, max_length=ref.manifest["max_length"])
        assert enc.ids[i].tolist() == expected["input_ids"]
        assert enc.type_ids[i].tolist() == expected["token_type_ids"]
    assert max(len(r) for r in enc.ids) == ref.manifest["max_length"]


# ---------------------------------------------------------------------------------------------- engines
@pytest.mark.parametrize("engine", ["multitask", "sessions"])
def test_every_task_matches_its_own_export(
    engine: str, serving_exports: dict[str, Path], references: dict[str, Reference]
) -> None:
    registry = TaskRegistry(ServerConfig(engine=engine, intra_op_threads=1))
    for name, folder in serving_exports.items():
        registry.load(name, str(folder))
    for name, folder in serving_exports.items():
        texts, pairs = inputs_for(folder)
        got = run_task(registry, name, texts, pairs)
        np.testing.assert_allclose(got, references[name].logits(texts, pairs), atol=1e-4, rtol=0)
    kinds = {n: registry.view.get(n).target.runner.kind for n in serving_exports}
    if engine == "multitask":
        assert kinds["sst_standalone"] == kinds["sst_optimized"] == "session"
        assert {kinds[n] for n in ("sst", "rte", "stsb", "topic", "late")} == {"multitask"}
        assert "optimised" in registry.info("sst_optimized")["merge_note"]
    else:
        assert set(kinds.values()) == {"session"}
    # One backbone in memory for all plain shared-mode tasks, whatever the engine (the optimised export
    # has its own, fused, backbone; the standalone one carries its weights inside).
    plain = {id(registry.view.get(n).artifact.backbone) for n in ("sst", "rte", "stsb", "topic", "late")}
    assert len(plain) == 1 and len(registry.backbones) == 2
    registry.close()
    assert len(registry.backbones) == 0


def test_mixed_task_batch_equals_single_task_answers(serving_exports: dict[str, Path]) -> None:
    registry = TaskRegistry(ServerConfig(intra_op_threads=1))
    names = ["sst", "rte", "stsb", "topic", "late"]
    for name in names:
        registry.load(name, str(serving_exports[name]))
    alone = {n: run_task(registry, n, *inputs_for(serving_exports[n])) for n in names}
    items = []
    for i, name in enumerate(names * 2):  # interleaved, different lengths and tasks in one batch
        texts, pairs = inputs_for(serving_exports[name])
        sl = slice(i % 3, None)
        entry = registry.view.get(name)
        items.append(
            (
                name,
                sl,
                WorkItem(entry.artifact.tokenizer.encode(texts[sl], pairs[sl] if pairs else None), (entry.target,)),
            )
        )
    results = execute([item for _, _, item in items], chunk_rows=5)
    runners = {id(item.targets[0].runner) for _, _, item in items}
    assert len(runners) == 1, "all five tasks must share one multi-task graph"
    for (name, sl, _), result in zip(items, results, strict=True):
        np.testing.assert_allclose(result[name], alone[name][sl], atol=1e-5, rtol=0)


def test_prefix_sharing_computes_adapter_free_layers_once(serving_exports: dict[str, Path]) -> None:
    registry = TaskRegistry(ServerConfig(intra_op_threads=1))
    registry.load("late", str(serving_exports["late"]))  # adapter at layer 2 only
    registry.load("stsb", str(serving_exports["stsb"]))  # adapter at layer 2 only
    runner = registry.view.get("late").target.runner
    assert isinstance(runner, MergedRunner) and runner.shared_layers == 2 and runner.prefix is not None
    assert registry.info("late")["shared_layers"] == 2
    # One item, two tasks on the same rows: prefix runs on 3 rows, suffix on 6.
    late, stsb = registry.view.get("late"), registry.view.get("stsb")
    texts = TEXTS[:3]
    pairs = PAIRS[:3]
    calls: list[tuple[str, int]] = []
    for part in ("prefix", "suffix"):
        session = getattr(runner, part)
        original = session.run
        setattr(runner, part, _Spy(session, original, calls, part))
    both = execute([WorkItem(late.artifact.tokenizer.encode(texts, pairs), (late.target, stsb.target))], chunk_rows=16)[
        0
    ]
    rows = {part: sum(n for p, n in calls if p == part) for part in ("prefix", "suffix")}
    assert rows == {"prefix": 3, "suffix": 6}, calls
    np.testing.assert_allclose(both["late"], run_task(registry, "late", texts, pairs), atol=1e-5)
    np.testing.assert_allclose(both["stsb"], run_task(registry, "stsb", texts, pairs), atol=1e-5)
    registry.load("rte", str(serving_exports["rte"]))  # adapter at layer 0: nothing left to share
    assert registry.view.get("late").target.runner.shared_layers == 0


class _Spy:
    def __init__(self, session, original, calls, label) -> None:
        self._session, self._original, self._calls, self._label = session, original, calls, label

    def run(self, outputs, feeds):
        self._calls.append((self._label, len(next(iter(feeds.values())))))
        return self._original(outputs, feeds)

    def __getattr__(self, name):
        return getattr(self._session, name)


def test_a_task_the_graph_cannot_reproduce_is_served_alone(
    serving_exports: dict[str, Path], tmp_path: Path, references: dict[str, Reference]
) -> None:
    """The stacked adapters come from aa_adapter_model.safetensors; if that disagrees with model.onnx the
    load-time check catches it and the task keeps its exact answers through its own session."""
    from safetensors.numpy import load_file, save_file

    tampered = tmp_path / "tampered"
    shutil.copytree(serving_exports["sst"], tampered)
    weights = load_file(str(tampered / "aa_adapter_model.safetensors"))
    weights["adapter_layers.1.adapter.up.weight"] = weights["adapter_layers.1.adapter.up.weight"] * 2.0
    save_file(weights, str(tampered / "aa_adapter_model.safetensors"))
    registry = TaskRegistry(ServerConfig(intra_op_threads=1))
    registry.load("rte", str(serving_exports["rte"]))
    info = registry.load("sst", str(tampered))
    assert info["engine"] == "session" and "differs from its export" in info["merge_note"]
    assert registry.info("rte")["engine"] == "multitask"
    texts = TEXTS[:4]
    np.testing.assert_allclose(run_task(registry, "sst", texts), references["sst"].logits(texts), atol=1e-4)


def test_registry_aliases_load_unload_and_errors(serving_exports: dict[str, Path], tmp_path: Path) -> None:
    registry = TaskRegistry(ServerConfig(intra_op_threads=1))
    registry.load("a", str(serving_exports["sst"]))
    registry.load("b", str(serving_exports["sst"]))  # same folder, second name: one artifact
    assert registry.view.get("a").artifact is registry.view.get("b").artifact
    assert registry.info("a")["aliases"] == ["b"]
    with pytest.raises(TaskExists):
        registry.load("a", str(serving_exports["rte"]))
    registry.load("a", str(serving_exports["rte"]), replace=True)
    assert registry.info("a")["task"] == "rte"
    old_view = registry.view
    registry.unload("b")
    with pytest.raises(TaskNotFound):
        registry.view.get("b")
    # Work bound to the old view still runs after the unload (in-flight requests never fail).
    entry = old_view.get("b")
    result = execute([WorkItem(entry.artifact.tokenizer.encode(["still here"]), (entry.target,))], chunk_rows=4)[0]
    assert result["b"].shape == (1, 2)
    with pytest.raises(TaskNotFound):
        registry.unload("b")
    with pytest.raises(TaskLoadError, match="does not exist"):
        registry.load("c", str(tmp_path / "missing"))
    with pytest.raises(TaskLoadError, match="not an aa-deploy export"):
        registry.load("c", str(tmp_path))
    with pytest.raises(TaskLoadError, match="invalid task name"):
        registry.load("../c", str(serving_exports["sst"]))
    restricted = TaskRegistry(ServerConfig(allowed_roots=[str(tmp_path)], allow_hub=False))
    with pytest.raises(Exception, match="not allowed"):
        restricted.load("c", str(serving_exports["sst"]))
    with pytest.raises(TaskLoadError, match="Hub is disabled"):
        restricted.load("c", "org/repo")
    assert sorted(registry.view.tasks) == ["a"]


def test_sessions_share_the_backbone_buffers(serving_exports: dict[str, Path]) -> None:
    registry = TaskRegistry(ServerConfig(engine="sessions", intra_op_threads=1))
    registry.load("sst", str(serving_exports["sst"]))
    registry.load("rte", str(serving_exports["rte"]))
    a, b = registry.view.get("sst").artifact, registry.view.get("rte").artifact
    assert a.backbone is b.backbone
    assert isinstance(registry.view.get("sst").target.runner, SoloRunner)
    tensors = json.loads((serving_exports["sst"] / "aa_export.json").read_text())["backbone_data"]["tensors"]
    assert a.backbone.resident_tensors == len(tensors)  # one OrtValue per tensor, reused by both sessions


# ---------------------------------------------------------------------------------------------- batcher
def _item(registry: TaskRegistry, name: str, n: int) -> WorkItem:
    entry = registry.view.get(name)
    return WorkItem(entry.artifact.tokenizer.encode(["hello there"] * n), (entry.target,))


def test_batcher_batches_refuses_overload_and_drains(serving_exports: dict[str, Path]) -> None:
    registry = TaskRegistry(ServerConfig(intra_op_threads=1))
    registry.load("sst", str(serving_exports["sst"]))
    registry.load("topic", str(serving_exports["topic"]))
    batches: list[int] = []

    async def scenario() -> None:
        batcher = DynamicBatcher(
            ServerConfig(max_batch_size=8, max_delay_ms=200, max_queue_rows=6, eager_dispatch=False),
            observer=lambda items, stats, s: batches.append(len(items)),
        )
        await batcher.start()
        first = asyncio.create_task(batcher.submit(_item(registry, "sst", 2)))
        second = asyncio.create_task(batcher.submit(_item(registry, "topic", 3)))
        await asyncio.sleep(0.01)
        with pytest.raises(Overloaded) as info:
            await batcher.submit(_item(registry, "sst", 2))  # 5 queued + 2 > 6
        assert info.value.headers["Retry-After"] == "1"
        a, b = await asyncio.gather(first, second)
        assert a["sst"].shape == (2, 2) and b["topic"].shape == (3, 3)
        assert batches == [2], "both tasks in one batch"
        pending = asyncio.create_task(batcher.submit(_item(registry, "sst", 1)))
        await asyncio.sleep(0.01)
        await batcher.stop(timeout=5)
        assert (await pending)["sst"].shape == (1, 2), "queued work is drained on stop"
        with pytest.raises(ShuttingDown):
            await batcher.submit(_item(registry, "sst", 1))

    asyncio.run(scenario())


# ---------------------------------------------------------------------------------------------- no torch
def test_serving_runtime_never_imports_torch(serving_exports: dict[str, Path]) -> None:
    code = f"""
import sys
from aa_deploy.serving.app import create_app
from aa_deploy.serving.cli import register
from aa_deploy.serving.config import ServerConfig
from aa_deploy.serving.registry import TaskRegistry
from aa_deploy.serving.engine import WorkItem, execute
r = TaskRegistry(ServerConfig(intra_op_threads=1))
r.load("rte", {str(serving_exports["rte"])!r})
e = r.view.get("rte")
execute([WorkItem(e.artifact.tokenizer.encode(["a"], ["b"]), (e.target,))], 4)
create_app(ServerConfig())
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers"))
assert not bad, bad
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


def test_length_sorted_runs_trim_padding_without_changing_answers(serving_exports: dict[str, Path]) -> None:
    from aa_deploy.serving.engine import plan_runs

    lengths = np.array([5, 40, 6, 38, 7, 12])
    runs = plan_runs(lengths, max_rows=16, split_cost=32)
    assert sorted(np.concatenate(runs).tolist()) == list(range(6))
    assert [sorted(lengths[r].tolist()) for r in runs] == [[5, 6, 7, 12], [38, 40]]
    assert len(plan_runs(lengths, max_rows=16, split_cost=1e9)) == 1
    assert max(len(r) for r in plan_runs(lengths, max_rows=2, split_cost=1e9)) == 2
    registry = TaskRegistry(ServerConfig(intra_op_threads=1))
    registry.load("sst", str(serving_exports["sst"]))
    entry = registry.view.get("sst")
    item = WorkItem(entry.artifact.tokenizer.encode(TEXTS), (entry.target,))
    split = execute([item], chunk_rows=16, split_cost=0)[0]["sst"]
    whole = execute([item], chunk_rows=16, split_cost=1e9)[0]["sst"]
    np.testing.assert_allclose(split, whole, atol=1e-5, rtol=0)


def test_tasks_load_from_the_hub(
    hub_client: FakeHub, serving_exports: dict[str, Path], references: dict[str, Reference]
) -> None:
    """A Hub id is downloaded with the project's Hub client; the backbone arrives as a cache symlink,
    which the shared-backbone path resolves (ONNX Runtime refuses references that leave the folder)."""
    folder = serving_exports["rte"]
    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    hub_client.commit_files("org/rte-onnx", files)
    registry = TaskRegistry(ServerConfig(intra_op_threads=1))
    info = registry.load("rte", "org/rte-onnx")
    assert info["engine"] == "multitask"
    np.testing.assert_allclose(
        run_task(registry, "rte", TEXTS, PAIRS), references["rte"].logits(TEXTS, PAIRS), atol=1e-4
    )
    hub_client.commit_files("org/not-an-export", {"README.md": b"hello"})
    with pytest.raises(TaskLoadError, match="aa_export.json"):
        registry.load("x", "org/not-an-export")
    with pytest.raises(TaskLoadError, match="Hub"):
        registry.load("y", "org/missing")


# ---------------------------------------------------------------------------------------------- transactions
def _copy(serving_exports: dict[str, Path], name: str, to: Path) -> Path:
    return Path(shutil.copytree(serving_exports[name], to))


def test_replace_swaps_folders_and_a_failed_replace_keeps_the_old_task(
    serving_exports: dict[str, Path], tmp_path: Path, references: dict[str, Reference]
) -> None:
    registry = TaskRegistry(ServerConfig(intra_op_threads=1))
    registry.load("swap", str(serving_exports["sst"]))
    registry.load("rte", str(serving_exports["rte"]))
    texts = TEXTS[:3]
    for source in ("late", "sst", "sst", "topic", "sst"):  # another folder, back, the same folder (no-op)
        before = registry.view
        registry.load("swap", str(serving_exports[source]), replace=True)
        assert registry.info("swap")["task"] == references[source].manifest["task"]["name"]
        assert sorted(registry.view.tasks) == ["rte", "swap"] and not registry.failed
        np.testing.assert_allclose(run_task(registry, "swap", texts), references[source].logits(texts), atol=1e-4)
        np.testing.assert_allclose(
            run_task(registry, "rte", texts, PAIRS[:3]), references["rte"].logits(texts, PAIRS[:3]), atol=1e-4
        )
        old = before.get("swap")  # requests bound to the previous view still finish
        assert execute([WorkItem(old.artifact.tokenizer.encode(["x"]), (old.target,))], 4)[0]["swap"].shape[0] == 1
    # Failed replaces (missing folder, export that contradicts its manifest): the old task keeps serving.
    bad = _copy(serving_exports, "late", tmp_path / "bad")
    manifest = json.loads((bad / "aa_export.json").read_text())
    manifest["num_labels"], manifest["task"]["label_names"] = 5, ["a", "b", "c", "d", "e"]
    (bad / "aa_export.json").write_text(json.dumps(manifest))
    view = registry.view
    for source, code in ((tmp_path / "missing", "task_load_failed"), (bad, "invalid_export")):
        with pytest.raises(TaskLoadError) as info:
            registry.load("swap", str(source), replace=True)
        assert info.value.code == code and info.value.status == 422
        assert registry.view is view, "a failed load publishes nothing"
        assert registry.info("swap")["task"] == "sst2"
        np.testing.assert_allclose(run_task(registry, "swap", texts), references["sst"].logits(texts), atol=1e-4)
        assert str(tmp_path) not in registry.failed["swap"], "listed reasons carry no local paths"
    assert registry.backbones.stats()[0]["exports"] == 2, "the refused exports released the backbone"
    registry.unload("swap")
    assert "swap" not in registry.failed, "an unload forgets the failure"
    with pytest.raises(TaskLoadError):
        registry.load("never", str(bad))
    assert "never" in registry.failed and "never" not in registry.view.tasks
    registry.unload("never")  # forgets the failure
    assert "never" not in registry.failed
    assert sorted(registry.view.tasks) == ["rte"]


def test_exports_that_contradict_their_manifest_are_refused_at_load(
    serving_exports: dict[str, Path], tmp_path: Path
) -> None:
    """Labels declared vs produced, input names, max_length vs the backbone's positions: 422, nothing loaded."""
    cases = {
        "labels": lambda m, c: m.update(num_labels=5, task={**m["task"], "label_names": list("abcde")}),
        "inputs": lambda m, c: m.update(inputs=["input_ids", "attention_mask"]),
        "positions": lambda m, c: m.update(max_length=c["max_position_embeddings"] + 1),
    }
    for engine in ("multitask", "sessions"):
        registry = TaskRegistry(ServerConfig(intra_op_threads=1, engine=engine))
        registry.load("sst", str(serving_exports["sst"]))
        for case, edit in cases.items():
            folder = _copy(serving_exports, "late", tmp_path / f"{engine}-{case}")
            manifest = json.loads((folder / "aa_export.json").read_text())
            config = json.loads((folder / "config.json").read_text())
            edit(manifest, config)
            (folder / "aa_export.json").write_text(json.dumps(manifest))
            view = registry.view
            with pytest.raises(TaskLoadError) as info:
                registry.load(case, str(folder))
            assert info.value.code == "invalid_export", (case, info.value.message)
            assert registry.view is view and case in registry.failed
        assert sorted(registry.view.tasks) == ["sst"]
        assert registry.backbones.stats()[0]["exports"] == 1


def test_a_task_whose_graph_raises_fails_alone(serving_exports: dict[str, Path], tmp_path: Path) -> None:
    """A task that passes the load checks but raises at run time on some inputs (tests/serving_helpers
    ``break_at_length``): in the multi-task graph or in its own session, only its failing rows fail."""
    from serving_helpers import BREAKING_TEXT, break_at_length

    broken = break_at_length(_copy(serving_exports, "sst", tmp_path / "broken"))
    for engine in ("multitask", "sessions"):
        registry = TaskRegistry(ServerConfig(intra_op_threads=1, engine=engine))
        for name in ("sst", "topic", "broken"):
            registry.load(name, str(broken if name == "broken" else serving_exports[name]))
        assert registry.info("broken")["engine"] == ("multitask" if engine == "multitask" else "session")
        entries = {n: registry.view.get(n) for n in ("sst", "topic", "broken")}
        tok = entries["sst"].artifact.tokenizer
        trigger, fine = tok.encode([BREAKING_TEXT, "fine"]), tok.encode(["fine", "also fine"])
        items = [
            WorkItem(trigger, (entries["broken"].target,)),  # fails
            WorkItem(trigger, (entries["sst"].target, entries["topic"].target)),  # same rows, healthy tasks
            WorkItem(fine, (entries["broken"].target,)),  # the broken task, on inputs it answers
            WorkItem(trigger, (entries["sst"].target, entries["broken"].target)),  # asks for the broken one
        ]
        results = execute(items, chunk_rows=4)
        assert isinstance(results[0], Exception) and "Gather" in str(results[0])
        assert sorted(results[1]) == ["sst", "topic"] and results[1]["sst"].shape == (2, 2)
        np.testing.assert_allclose(results[1]["sst"], run_task(registry, "sst", [BREAKING_TEXT, "fine"]), atol=1e-5)
        assert results[2]["broken"].shape == (2, 2)
        assert isinstance(results[3], Exception)


# ---------------------------------------------------------------------------------------------- fairness
def test_requests_larger_than_the_queue_are_refused_and_large_ones_do_not_block_small_ones(
    serving_exports: dict[str, Path],
) -> None:
    from aa_deploy.serving.errors import RequestTooLarge

    registry = TaskRegistry(ServerConfig(intra_op_threads=1))
    registry.load("sst", str(serving_exports["sst"]))
    registry.load("topic", str(serving_exports["topic"]))
    big_texts = [f"text number {i} " + "word " * (i % 7) for i in range(48)]
    big_reference = run_task(registry, "sst", big_texts)

    async def scenario() -> None:
        batcher = DynamicBatcher(ServerConfig(max_batch_size=4, max_delay_ms=0, max_queue_rows=48))
        await batcher.start()
        entry = registry.view.get("sst")
        with pytest.raises(RequestTooLarge) as info:
            batcher.enqueue(WorkItem(entry.artifact.tokenizer.encode(["x"] * 25), (entry.target, entry.target)))
        assert info.value.status == 413 and "at most 48" in info.value.message
        big = batcher.enqueue(WorkItem(entry.artifact.tokenizer.encode(big_texts), (entry.target,)))
        await asyncio.sleep(0)
        small = asyncio.ensure_future(batcher.submit(_item(registry, "topic", 1)))
        done, _ = await asyncio.wait({big, small}, return_when=asyncio.FIRST_COMPLETED)
        assert small in done and not big.done(), "the small request is served between the large one's parts"
        np.testing.assert_allclose((await big)["sst"], big_reference, atol=1e-5)  # parts reassembled in order
        await batcher.stop(timeout=5)

    asyncio.run(scenario())


def test_one_task_runs_its_own_graph_and_one_row_calls_skip_padding(serving_exports: dict[str, Path]) -> None:
    """With one task loaded (and no own sessions asked for) every call runs that task's exported graph:
    no stacked graph, no task_ids input, no prefix split, and no second backbone copy. A call of one row
    takes the unpadded path; both answer like the padded general path and the task's own export."""
    from aa_deploy.serving.engine import SoloRunner, lone_row

    registry = TaskRegistry(ServerConfig(intra_op_threads=1, single_task_sessions=0))
    try:
        registry.load("rte", str(serving_exports["rte"]))
        entry = registry.view.get("rte")
        runner = entry.target.runner
        assert isinstance(runner, MergedRunner) and runner.prefix is None and runner.suffix is None
        own = runner.own_session(0)
        assert isinstance(own, SoloRunner) and "task_ids" not in own.inputs
        exported = onnx.load(str(entry.artifact.manifest.model_path), load_external_data=False)
        assert {i.name for i in exported.graph.input} == own.inputs
        assert registry.info("rte")["own_session"]
        tokenizer = entry.artifact.tokenizer
        items = [
            WorkItem(tokenizer.encode([t], [p]), (entry.target,)) for t, p in zip(TEXTS[:3], PAIRS[:3], strict=True)
        ]
        assert lone_row(items[:1], [(0, entry.target)]) is not None
        assert lone_row(items, [(0, entry.target), (1, entry.target)]) is None
        alone = [execute([item], 8)[0]["rte"] for item in items]  # type: ignore[index]
        together = execute(items, 8)
        for a, b in zip(alone, together, strict=True):
            np.testing.assert_allclose(a, b["rte"], atol=1e-5)  # type: ignore[index]
        expected = Reference(serving_exports["rte"]).logits(TEXTS[:3], PAIRS[:3])
        np.testing.assert_allclose(np.concatenate(alone), expected, atol=1e-4)
    finally:
        registry.close()


def test_batches_of_one_task_run_that_tasks_own_branch_of_the_graph(
    serving_exports: dict[str, Path], references: dict[str, Reference]
) -> None:
    """A batch whose rows are all of one task runs that task's own graph, kept as a branch of the
    multi-task graph (one session, one prepacked backbone); mixed batches run the stacked graph. Both
    reproduce each task's export, with and without a prefix split; the own branch is the task's exported
    graph, so it answers exactly like a session of that graph."""
    from onnx import TensorProto

    from aa_deploy.serving.multitask import (
        LOGITS,
        SINGLE_TASK,
        TASK_IDS,
        compile_multitask,
        own_output,
        with_own_branches,
    )

    groups = (["sst", "rte", "topic", "late"], ["late", "stsb"])  # the second shares layers 0-1 (a prefix)
    for names in groups:
        registry = TaskRegistry(ServerConfig(intra_op_threads=1))
        try:
            for name in names:
                registry.load(name, str(serving_exports[name]))
            runner = registry.view.get(names[0]).target.runner
            assert isinstance(runner, MergedRunner) and (runner.prefix is not None) == (names[0] == "late")
            assert SINGLE_TASK in runner.suffix_inputs
            seen: list[int] = []
            session = runner.suffix
            runner.suffix = _FeedSpy(session, lambda feeds, seen=seen: seen.append(int(feeds[SINGLE_TASK])))
            for name in names:
                entry = registry.view.get(name)
                texts, pairs = inputs_for(serving_exports[name])
                texts, pairs = texts[:4], pairs[:4] if pairs else None
                feeds = _padded(entry, texts, pairs)
                rows = np.arange(len(texts), dtype=np.int64)
                slot = np.full(len(texts), entry.target.slot, dtype=np.int64)
                seen.clear()
                own = runner.run(feeds, rows, slot, 16)[:, : entry.target.num_labels]
                assert seen == [entry.target.slot], "one task's rows run its own branch"
                seen.clear()
                stacked = runner.run(feeds, rows, slot, 16, stacked=True)[:, : entry.target.num_labels]
                assert seen == [-1]
                expected = references[name].logits(texts, pairs)
                np.testing.assert_allclose(own, expected, atol=1e-4, rtol=0)
                np.testing.assert_allclose(stacked, expected, atol=1e-4, rtol=0)
                if runner.prefix is None:  # the very graph of the export: the same numbers
                    alone = runner.task_runner(entry.target.slot).run(feeds)
                    np.testing.assert_array_equal(own, alone[:, : entry.target.num_labels])
                    runner._task_runners.clear()
            # A batch of two tasks runs the stacked graph.
            seen.clear()
            a, b = (registry.view.get(n) for n in names[:2])
            execute([WorkItem(a.artifact.tokenizer.encode(TEXTS[:2], PAIRS[:2]), (a.target, b.target))], 16)
            assert seen == [-1]
            # The backbone's tensors live once, at the top level; each branch is one If below it (ONNX
            # Runtime prepacks an initializer only for the subgraphs directly below its graph).
            sources = [registry.view.get(n).artifact.merge for n in names]
            routed = with_own_branches(compile_multitask(sources, prefix_sharing=False).model, sources)
            branches = [
                a.g for n in routed.graph.node if n.op_type == "If" for a in n.attribute if a.name == "then_branch"
            ]
            assert len(branches) == len(names) + 1
            for branch in branches:
                assert not any(t.data_location == TensorProto.EXTERNAL for t in branch.initializer)
                assert not any(n.op_type == "If" for n in branch.node)
            assert TASK_IDS in {i.name for i in routed.graph.input}
            # Each part is an output of its own, at its own head's width: no Pad to the group's width, no
            # Concat of the parts (two nodes on every call at batch 1).
            widths = [registry.view.get(n).target.num_labels for n in names]
            outputs = {o.name: o.type.tensor_type.shape.dim[1].dim_value for o in routed.graph.output}
            assert outputs == {LOGITS: max(widths), **{own_output(j): w for j, w in enumerate(widths)}}
            assert not {"Pad", "Concat"} & {n.op_type for n in routed.graph.node}
        finally:
            registry.close()


class _FeedSpy:
    """A session that reports each call's feeds before running it."""

    def __init__(self, session, report) -> None:
        self._session, self._report = session, report

    def run(self, outputs, feeds):
        self._report(feeds)
        return self._session.run(outputs, feeds)

    def __getattr__(self, name):
        return getattr(self._session, name)


def _padded(entry, texts: list[str], pairs: list[str] | None) -> dict[str, np.ndarray]:
    from aa_deploy.serving.engine import pad_feeds

    return pad_feeds([entry.artifact.tokenizer.encode(texts, pairs)], entry.artifact.manifest.pad_token_id)


def test_load_many_builds_each_graph_once_and_fails_tasks_alone(
    serving_exports: dict[str, Path], references: dict[str, Reference], tmp_path: Path, monkeypatch
) -> None:
    """Startup loads all configured tasks together: the multi-task graph is compiled once (one by one it
    would be rebuilt per task), a task that cannot be opened fails alone with its reason, an alias of a
    folder given earlier in the same call shares its artifact, and the answers are the exports'."""
    import aa_deploy.serving.engine as engine_module

    builds: list[int] = []
    original = engine_module.compile_multitask

    def counting(sources, **kwargs):
        builds.append(len(sources))
        return original(sources, **kwargs)

    monkeypatch.setattr(engine_module, "compile_multitask", counting)
    registry = TaskRegistry(ServerConfig(intra_op_threads=1))
    try:
        names = ["sst", "rte", "topic", "late"]
        specs = [(n, str(serving_exports[n]), None) for n in names]
        specs += [("missing", str(tmp_path / "nowhere"), None), ("sst_alias", str(serving_exports["sst"]), None)]
        results = registry.load_many(specs)
        assert builds == [4], "one compile for the four members"
        assert isinstance(results["missing"], TaskLoadError) and "missing" in registry.failed
        assert set(registry.view.tasks) == {*names, "sst_alias"}
        assert registry.view.get("sst_alias").artifact is registry.view.get("sst").artifact
        for name in names:
            assert results[name]["engine"] == "multitask"  # type: ignore[index]
            texts, pairs = inputs_for(serving_exports[name])
            np.testing.assert_allclose(
                run_task(registry, name, texts, pairs), references[name].logits(texts, pairs), atol=1e-4, rtol=0
            )
        again = registry.load_many([("sst", str(serving_exports["sst"]), None)])
        assert isinstance(again["sst"], TaskExists)
    finally:
        registry.close()


def test_load_many_falls_back_to_one_by_one_when_placing_them_together_fails(
    serving_exports: dict[str, Path], monkeypatch
) -> None:
    registry = TaskRegistry(ServerConfig(intra_op_threads=1))
    original = registry._build_plan

    def fails_together(names, fresh):
        if len(fresh) > 1:
            raise RuntimeError("simulated failure of the combined placement")
        return original(names, fresh)

    monkeypatch.setattr(registry, "_build_plan", fails_together)
    try:
        results = registry.load_many([(n, str(serving_exports[n]), None) for n in ("sst", "rte")])
        assert all(results[n]["engine"] == "multitask" for n in ("sst", "rte"))  # type: ignore[index]
        assert len(registry.backbones) == 1, "the artifacts opened for the failed attempt were released"
    finally:
        registry.close()


def test_own_branches_can_be_turned_off(serving_exports: dict[str, Path], references: dict[str, Reference]) -> None:
    """``own_branches=False`` (``--no-own-branches``): the session holds only the stacked graph, which then
    answers batches of one task too; the task info says which way a task runs."""
    from aa_deploy.cli import build_parser
    from aa_deploy.serving.cli import build_config
    from aa_deploy.serving.multitask import SINGLE_TASK

    config = build_config(build_parser().parse_args(["serve", "--no-own-branches"]), environ={})
    assert config.own_branches is False
    assert (
        build_config(build_parser().parse_args(["serve"]), environ={"AA_DEPLOY_OWN_BRANCHES": "0"}).own_branches
        is False
    )
    assert ServerConfig.from_json(config.to_json()).own_branches is False
    for own_branches in (True, False):
        registry = TaskRegistry(ServerConfig(intra_op_threads=1, own_branches=own_branches))
        try:
            registry.load_many([(n, str(serving_exports[n]), None) for n in ("sst", "topic")])
            runner = registry.view.get("sst").target.runner
            assert isinstance(runner, MergedRunner) and runner.own_branches is own_branches
            assert (SINGLE_TASK in runner.suffix_inputs) is own_branches
            assert registry.info("sst")["own_branch"] is own_branches
            texts = TEXTS[:3]
            np.testing.assert_allclose(run_task(registry, "sst", texts), references["sst"].logits(texts), atol=1e-4)
        finally:
            registry.close()
