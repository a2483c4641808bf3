"""The quality-grid harness (benchmarks/quality): runs cells, resumes, renders the report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from glue_fakes import fake_glue, fake_stsb

REPO = Path(__file__).resolve().parents[1]
GRID = REPO / "benchmarks" / "quality" / "grid.py"
REPORT = REPO / "benchmarks" / "quality" / "report.py"


def run_grid(tmp_path: Path, backbone: Path, glue: Path, *extra: str) -> subprocess.CompletedProcess:
    """Two cells at a time, as the grid is run for real (a focused cell still waits for its search cell)."""
    cmd = [
        sys.executable,
        str(GRID),
        "run",
        "--glue-dir",
        str(glue),
        "--tasks",
        "rte",
        "--sizes",
        "24",
        "--seeds",
        "42",
        "--recipes",
        "standard,search,focused",
        "--epochs",
        "1",
        "--threads",
        "1",
        "--jobs",
        "2",
        "--backbone",
        str(backbone),
        "--protocol",
        "paper",
        "--results-dir",
        str(tmp_path / "results"),
        "--runs-dir",
        str(tmp_path / "runs"),
        *extra,
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=REPO)


def test_grid_runs_resumes_reports_and_keeps_a_learning_rate_variant_apart(tmp_path, tiny_backbone_dir) -> None:
    """One results folder for the protocol cells, their resume and an off-protocol variant (each cell is a
    training process: one test keeps the suite short)."""
    glue = fake_glue(tmp_path / "glue")
    first = run_grid(tmp_path, tiny_backbone_dir, glue)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    files = sorted(p.name for p in (tmp_path / "results").glob("*.json"))
    assert files == ["rte-n24-s42-focused.json", "rte-n24-s42-search.json", "rte-n24-s42-standard.json"]
    cell = json.loads((tmp_path / "results" / "rte-n24-s42-search.json").read_text())
    required = {
        "task",
        "train_size",
        "seed",
        "recipe",
        "metric",
        "value",
        "layers_kept",
        "trained_params",
        "adapter_bytes",
        "wall_time_s",
        "device",
        "commit",
    }
    assert required <= set(cell) and cell["train_size"] == 24 and cell["metric"] == "accuracy"
    focused = json.loads((tmp_path / "results" / "rte-n24-s42-focused.json").read_text())
    # The focused cell trains exactly at the layers its search cell selected.
    assert focused["selected_layers"] == cell["selected_layers"]

    second = run_grid(tmp_path, tiny_backbone_dir, glue)  # resumes: nothing left to run
    assert second.returncode == 0 and "3 of 3 cells already finished; 0 to run" in second.stdout

    # On a machine without the run folders (they are not committed), a focused cell still to run gets its
    # recorded search trained again for its selection; the search's record is kept, as the rerun reproduces it.
    import shutil

    recorded_search = (tmp_path / "results" / "rte-n24-s42-search.json").read_text()
    shutil.rmtree(tmp_path / "runs" / "rte-n24-s42-search")
    (tmp_path / "results" / "rte-n24-s42-focused.json").unlink()
    fresh = run_grid(tmp_path, tiny_backbone_dir, glue)
    assert fresh.returncode == 0, fresh.stdout[-2000:] + fresh.stderr[-2000:]
    assert "rebuild rte-n24-s42-search: recorded, but rte-n24-s42-focused needs its run folder" in fresh.stdout
    assert (tmp_path / "runs" / "rte-n24-s42-search" / "selection.json").is_file()
    assert (tmp_path / "results" / "rte-n24-s42-search.json").read_text() == recorded_search
    refocused = json.loads((tmp_path / "results" / "rte-n24-s42-focused.json").read_text())
    assert refocused["selected_layers"] == cell["selected_layers"]

    # An off-protocol learning rate is a cell of its own; the protocol's standard cell is not rerun.
    variant = run_grid(tmp_path, tiny_backbone_dir, glue, "--recipes", "standard", "--learning-rate", "1e-3")
    assert variant.returncode == 0, variant.stdout[-2000:] + variant.stderr[-2000:]
    assert "0 of 1 cells already finished; 1 to run" in variant.stdout
    lr_cell = json.loads((tmp_path / "results" / "rte-n24-s42-standard-lr0.001.json").read_text())
    assert lr_cell["learning_rate"] == 0.001
    # The variant really trained at that rate (the run folder records its training arguments).
    training = json.loads((tmp_path / "runs" / "rte-n24-s42-standard-lr0.001" / "training_config.json").read_text())
    assert training["learning_rate"] == 0.001
    protocol = json.loads((tmp_path / "results" / "rte-n24-s42-standard.json").read_text())
    assert protocol["learning_rate"] is None

    out = tmp_path / "RESULTS.md"
    report = subprocess.run(
        [sys.executable, str(REPORT), "--results-dir", str(tmp_path / "results"), "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert report.returncode == 0, report.stderr[-2000:]
    text = out.read_text()
    assert (tmp_path / "results.png").is_file()
    main, _, sensitivity = text.partition("## Off-protocol sensitivity: adapters + head at learning rate 0.001")
    assert sensitivity, "the variant must get its own section"
    # One protocol row in the main table, one variant row in its section, with the protocol value beside it.
    assert main.count("| rte | 24 | accuracy |") == 1 and sensitivity.count("| rte | 24 | accuracy |") == 1
    expected = f"{100 * protocol['value']:.1f} ± 0.0 (n=1) |"
    assert sensitivity.split("| rte | 24 | accuracy |")[1].splitlines()[0].rstrip().endswith(expected)


def test_transfer_cells_of_a_variant_reuse_that_variants_selections() -> None:
    sys.path.insert(0, str(GRID.parent))
    try:
        import grid
    finally:
        sys.path.remove(str(GRID.parent))
    cells = grid.transfer_grid([42], learning_rate=1e-3)
    assert [c.cell_id for c in cells] == [
        "rte-n300-s42-focused-from-mrpc-n300-lr0.001",
        "rte-n300-s42-focused-from-rte-n100-lr0.001",
        "mrpc-n300-s42-focused-from-mrpc-n100-lr0.001",
    ]
    # A variant's focused cell trains on the selection its own variant's search found, never the protocol's.
    assert [c.source().cell_id for c in cells] == [
        "mrpc-n300-s42-search-lr0.001",
        "rte-n100-s42-search-lr0.001",
        "mrpc-n100-s42-search-lr0.001",
    ]
    assert grid.transfer_grid([42])[0].source().cell_id == "mrpc-n300-s42-search"


def test_budget_and_start_cells_record_their_study_and_get_their_own_sections(tmp_path, tiny_backbone_dir) -> None:
    from aa_deploy.training.protocols import DEFAULT

    glue = fake_glue(tmp_path / "glue")
    # Both studies in one command, as a user would queue them (gelu: a start that is not the schedule's).
    both = run_grid(tmp_path, tiny_backbone_dir, glue, "--protocol", "default", "--budgets", "1", "--starts", "gelu")
    start = "" if DEFAULT.rational_init == "one" else f"-start-{DEFAULT.rational_init}"  # budget cells: the schedule's
    assert both.returncode == 0, both.stdout[-2000:] + both.stderr[-2000:]
    assert "0 of 6 cells already finished; 6 to run" in both.stdout
    results = tmp_path / "results"
    names = sorted(p.name for p in results.glob("*.json"))
    assert names == ["rte-n24-s42-adapterdrop-default-top1.json", "rte-n24-s42-adapterdrop-default.json",
                     f"rte-n24-s42-focused-default{start}-k1.json", "rte-n24-s42-search-default-start-gelu.json",
                     f"rte-n24-s42-search-default{start}-k1.json",
                     "rte-n24-s42-standard-default-top1.json"]  # fmt: skip
    search = json.loads((results / f"rte-n24-s42-search-default{start}-k1.json").read_text())
    assert search["protocol"] == "default" and search["layer_budget"] == 1 and search["layers_kept"] <= 1
    assert search["savings"]["num_layers"] == 3
    standard = json.loads((results / "rte-n24-s42-standard-default-top1.json").read_text())
    assert standard["selected_layers"] == [2]  # the top-most layer: the naive choice
    # AdapterDrop: one run trained for every depth (up to all but one layer dropped per step), scored with
    # only its top-most adapter; the evaluation trains nothing.
    dropped_run = json.loads(
        (tmp_path / "runs" / "rte-n24-s42-adapterdrop-default" / "training_config.json").read_text()
    )
    assert dropped_run["recipe"] == "adapterdrop" and dropped_run["adapterdrop_max_layers"] == 2
    dropped = json.loads((results / "rte-n24-s42-adapterdrop-default-top1.json").read_text())
    assert dropped["selected_layers"] == [2] and dropped["layers_kept"] == 1 and dropped["layer_budget"] == 1
    assert 0.0 <= dropped["value"] <= 1.0 and dropped["metric"] == "accuracy"
    full = json.loads((results / "rte-n24-s42-adapterdrop-default.json").read_text())
    assert full["layers_kept"] == 3 and dropped["adapter_params"] * 3 == full["adapter_params"]
    focused = json.loads((results / f"rte-n24-s42-focused-default{start}-k1.json").read_text())
    assert focused["selected_layers"] == search["selected_layers"]

    assert search["rational_init_ran"] == DEFAULT.rational_init
    cell = json.loads((results / "rte-n24-s42-search-default-start-gelu.json").read_text())
    assert cell["rational_init_ran"] == "gelu" and cell["rational_init"] == "gelu"

    out = tmp_path / "RESULTS.md"
    report = subprocess.run(
        [sys.executable, str(REPORT), "--results-dir", str(results), "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert report.returncode == 0, report.stderr[-2000:]
    text = out.read_text()
    # The grid's own `report` command renders the same page.
    via_grid = tmp_path / "via-grid" / "RESULTS.md"
    via_grid.parent.mkdir()
    rendered = subprocess.run([sys.executable, str(GRID), "report", "--results-dir", str(results), "--output", str(via_grid)],
                              capture_output=True, text=True, timeout=300)  # fmt: skip
    assert rendered.returncode == 0, rendered.stderr[-2000:]
    assert via_grid.read_text() == text
    budget_part = text.split("## Layer budget")[1].split("## The paper's protocol")[0]
    assert "**rte, N = 24**" in budget_part and "| search with budget K |" in budget_part
    adapterdrop_row = next(line for line in budget_part.splitlines() if line.startswith("| AdapterDrop"))
    assert f"{100 * dropped['value']:.1f} ± 0.0 (n=1)" in adapterdrop_row  # K = 1
    assert f"{100 * full['value']:.1f} ± 0.0 (n=1)" in adapterdrop_row  # K = 3: the run itself
    assert (tmp_path / "layer_budget.png").is_file()
    start_part = text.split("## Rational start study")[1].split("## Layer budget")[0]
    assert "| rte | 24 |" in start_part
    # Neither study leaks into the paper-protocol table.
    paper_part = text.split("## The paper's protocol")[1]
    assert "| rte | 24 |" not in paper_part


@pytest.mark.slow
def test_drop_eval_reproduces_the_runs_own_scores_and_drops_the_lowest_layers(tmp_path) -> None:
    """The evaluation scores a run the way training did (same dev split, same test set, same metric).
    On the real MiniLM: a tiny random backbone answers every input alike, so any two scorings agree."""
    from aa_deploy.backbones import resolve_backbone_path

    glue = fake_stsb(tmp_path / "glue")
    run = tmp_path / "run"
    train = [sys.executable, "-m", "aa_deploy.cli", "train", "--task", "stsb", "--data-dir", str(glue), "--recipe",
             "adapterdrop", "--train-size", "40", "--epochs", "6", "--batch-size", "8", "--learning-rate", "0.01", "--backbone",
             resolve_backbone_path(None), "--output", str(run), "--no-progress", "--device", "cpu"]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    trained = subprocess.run(train, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert trained.returncode == 0, trained.stderr[-2000:]
    drop_eval = _import("drop_eval")
    own = json.loads((run / "metrics.json").read_text())
    again = drop_eval.evaluate_dropped(run, 0, str(glue))
    assert abs(again["value"] - own["value"]) < 1e-4 and abs(again["test_value"] - own["test_value"]) < 1e-4
    assert again["selected_layers"] == list(range(6)) and again["adapter_params"] == own["adapter_params"]
    dropped = drop_eval.evaluate_dropped(run, 5, str(glue))
    assert dropped["selected_layers"] == [5] and dropped["adapterdrop_eval_layers"] == 5
    assert dropped["adapter_params"] * 6 == own["adapter_params"]
    assert (dropped["value"], dropped["test_value"]) != (own["value"], own["test_value"])  # five adapters fewer
    with pytest.raises(ValueError, match="between 0 and 5"):
        drop_eval.evaluate_dropped(run, 6, str(glue))


def test_the_default_table_holds_only_cells_that_ran_the_schedules_current_start(monkeypatch) -> None:
    """When the default start changes, cells trained with the old one leave the default table (they stay
    in the start study), and start-study cells that ran the new one fill it, once per seed."""
    from dataclasses import replace

    report = _import("report")

    def cell(recipe: str, **extra) -> dict:
        return {"task": "sst2", "train_size": 300, "seed": 42, "recipe": recipe, "protocol": "default", **extra}

    standard = cell("standard")
    search_one = cell("search", rational_init_ran="one")
    search_identity = cell("search", rational_init="identity", rational_init_ran="identity")
    paper = cell("search", protocol="paper", rational_init_ran="one")
    budget = cell("search", layer_budget=1, rational_init_ran="one")
    rows = [standard, search_one, search_identity, paper, budget, cell("adapterdrop")]
    monkeypatch.setattr(report, "DEFAULT", replace(report.DEFAULT, rational_init="one"))
    assert report.default_schedule_rows(rows) == [standard, search_one]
    monkeypatch.setattr(report, "DEFAULT", replace(report.DEFAULT, rational_init="identity"))
    assert report.default_schedule_rows(rows) == [standard, search_identity]
    # A default-grid cell of the new start and a start-study cell of the same seed: one of them, the grid's.
    search_new = cell("search", rational_init_ran="identity")
    assert report.default_schedule_rows([search_identity, search_new]) == [search_new]


def test_the_transfer_table_pairs_seeds_and_names_the_layers_each_run_trained() -> None:
    """A transferred selection is compared with the same seeds' own selection, and each side shows how many
    layers it trained, so a source that kept every layer is visible as such."""
    report = _import("report")

    def focused(seed: int, value: float, layers: list[int], **source) -> dict:
        return {
            "task": "rte",
            "train_size": 300,
            "seed": seed,
            "recipe": "focused",
            "value": value,
            "selected_layers": layers,
            "layers_kept": len(layers),
            **source,
        }

    own = [focused(42, 0.50, [0, 2]), focused(92, 0.60, [1, 3, 5]), focused(111, 0.70, [4])]
    moved = [  # out of seed order, as result files sort ("s111" before "s42")
        focused(92, 0.44, [0, 1, 2, 3, 4, 5], source_task="rte", source_size=100),
        focused(42, 0.40, [0, 1, 2, 3, 4], source_task="rte", source_size=100),
        focused(42, 0.55, [2], source_task="mrpc", source_size=300),
    ]
    lines = report.transfer_table(own + moved).splitlines()
    assert lines[0].count("layers kept, by seed") == 2
    by_source = {line.split("|")[2].strip(): [c.strip() for c in line.split("|")[1:-1]] for line in lines[2:]}
    assert set(by_source) == {"rte N=100", "mrpc N=300"}
    assert by_source["rte N=100"][2:] == ["42.0 ± 2.8 (n=2)", "5, 6", "55.0 ± 7.1 (n=2)", "2, 3", "2"]
    assert by_source["mrpc N=300"][2:] == ["55.0 ± 0.0 (n=1)", "1", "50.0 ± 0.0 (n=1)", "2", "1"]
    # Own-selection focused runs alone are no transfer.
    assert report.transfer_table(own) == "_No transfer cells finished yet._"


def _import(name: str):
    sys.path.insert(0, str(GRID.parent))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(GRID.parent))


def test_a_rebuilt_cell_reproduces_its_record_with_the_same_layers_and_a_score_within_float_noise() -> None:
    grid = _import("grid")
    record = {"value": 0.5923637427895687, "selected_layers": [0, 1, 2, 3, 4, 5]}
    assert grid.reproduces(record, {**record, "value": 0.5923571609344985})  # another CPU's summation order
    assert not grid.reproduces(record, {**record, "value": 0.5913})
    assert not grid.reproduces(record, {**record, "selected_layers": [0, 1, 2, 3, 5]})
    assert not grid.reproduces({"selected_layers": [0, 1, 2, 3, 4, 5]}, record)  # a record without a score


def test_cell_ids_name_the_start_only_when_it_is_not_the_first_one(monkeypatch) -> None:
    """Ids of cells run before a schedule changed its start stay valid, and once the default start is
    `identity` a default search cell is the start-study cell of that start (one id, one run)."""
    from dataclasses import replace

    grid = _import("grid")
    original = grid.schedule_named

    def schedule_start(start: str) -> None:
        changed = replace(original("default"), rational_init=start)
        monkeypatch.setattr(grid, "schedule_named", lambda name: changed if name == "default" else original(name))

    schedule_start("one")
    search = grid.Cell("sst2", 1000, 42, "search", protocol="default")
    focused = grid.Cell("sst2", 1000, 42, "focused", "sst2", 1000, protocol="default")
    standard = grid.Cell("sst2", 1000, 42, "standard", protocol="default")
    study = grid.start_grid(["sst2"], [1000], [42], ["identity"], "default")[0]
    assert (search.cell_id, standard.cell_id) == ("sst2-n1000-s42-search-default", "sst2-n1000-s42-standard-default")
    assert study.cell_id == "sst2-n1000-s42-search-default-start-identity"
    schedule_start("identity")
    assert search.cell_id == study.cell_id and search.start == "identity"
    assert focused.cell_id == "sst2-n1000-s42-focused-default-start-identity"
    assert focused.source().cell_id == study.cell_id  # the focused run retrains on the study cell's layers
    assert standard.cell_id == "sst2-n1000-s42-standard-default" and standard.start is None
    assert grid.Cell("sst2", 1000, 42, "search", protocol="paper").cell_id == "sst2-n1000-s42-search"


def test_the_budget_curve_keeps_one_curve_per_rational_start(monkeypatch) -> None:
    from dataclasses import replace

    report = _import("report")

    def cell(recipe: str, value: float, k: int | None, start: str | None = None, **extra) -> dict:
        return {"task": "sst2", "train_size": 300, "seed": 42, "recipe": recipe, "protocol": "default",
                "layer_budget": k, "num_layers": 6, "value": value, "rational_init_ran": start, **extra}  # fmt: skip

    rows = [cell("search", 0.6, 1, "one"), cell("search", 0.7, 1, "identity"), cell("standard", 0.5, 1),
            cell("search", 0.8, None, "one"), cell("standard", 0.9, None), cell("adapterdrop", 0.4, 1),
            cell("search", 0.75, None, "identity", rational_init="identity")]  # fmt: skip
    curve = report.budget_rows(rows)
    assert set(curve) == {("sst2", 300, "one"), ("sst2", 300, "identity")}
    one, identity = curve[("sst2", 300, "one")], curve[("sst2", 300, "identity")]
    assert one["search"] == {1: [0.6], 6: [0.8]} and identity["search"] == {1: [0.7], 6: [0.75]}
    # The arms without rationals are in both curves.
    assert one["standard"] == identity["standard"] == {1: [0.5], 6: [0.9]}
    assert one["adapterdrop"] == {1: [0.4]}
    monkeypatch.setattr(report, "DEFAULT", replace(report.DEFAULT, rational_init="one"))
    assert report._budget_title(("sst2", 300, "identity"), curve) == "sst2, N = 300, start `identity`"
    only_one = report.budget_rows(rows[:1] + rows[2:4])
    assert report._budget_title(("sst2", 300, "one"), only_one) == "sst2, N = 300"


def test_a_cell_another_grid_command_holds_is_waited_for_and_not_trained_twice(tmp_path, tiny_backbone_dir) -> None:
    """Two grid commands sharing the results and runs folders: the second one waits while the first
    holds a cell's claim, and once that cell's result appears it skips the cell instead of training it
    again into the same run folder."""
    from filelock import FileLock

    glue = fake_glue(tmp_path / "glue")
    runs = tmp_path / "runs"
    runs.mkdir()
    claim = FileLock(runs / "rte-n24-s42-standard.lock")
    claim.acquire()  # this test plays the other grid command
    cmd = [
        sys.executable, str(GRID), "run", "--glue-dir", str(glue), "--tasks", "rte", "--sizes", "24",
        "--seeds", "42", "--recipes", "standard", "--epochs", "1", "--threads", "1", "--protocol", "paper",
        "--backbone", str(tiny_backbone_dir), "--results-dir", str(tmp_path / "results"), "--runs-dir", str(runs),
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
    try:
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("waiting for rte-n24-s42-standard"):
                break
        assert seen and seen[-1].startswith("waiting for"), "".join(seen)
        assert not (runs / "rte-n24-s42-standard").exists()  # nothing trained while the claim is held
        results = tmp_path / "results"
        results.mkdir()
        (results / "rte-n24-s42-standard.json").write_text('{"value": 0.5}\n')  # the other command's result
        claim.release()
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, "".join(seen) + rest
    assert "skip rte-n24-s42-standard: finished by another grid command meanwhile" in rest
    assert not (runs / "rte-n24-s42-standard").exists()


@pytest.mark.parametrize("variable", [None, ""])
def test_the_grid_asks_for_the_glue_folder_when_no_variable_names_it(variable: str | None) -> None:
    """No folder beside the checkout is guessed: the GLUE folder comes from --glue-dir or $AA_GLUE_DIR."""
    from aa_deploy.cli_options import GLUE_DIR_ENV

    env = {k: v for k, v in os.environ.items() if k != GLUE_DIR_ENV}
    if variable is not None:
        env[GLUE_DIR_ENV] = variable
    done = subprocess.run(
        [sys.executable, str(GRID), "run", "--tasks", "rte"], capture_output=True, text=True, env=env, cwd=REPO
    )
    assert done.returncode == 2
    assert "required: --glue-dir" in done.stderr


def test_the_grid_takes_the_glue_folder_from_the_variable(tmp_path: Path) -> None:
    """$AA_GLUE_DIR stands in for --glue-dir; a missing folder is refused before any cell starts."""
    from aa_deploy.cli_options import GLUE_DIR_ENV

    missing = tmp_path / "no-glue-here"
    env = {**os.environ, GLUE_DIR_ENV: str(missing), "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, str(GRID), "run", "--tasks", "rte", "--sizes", "24", "--seeds", "42",
           "--recipes", "standard", "--results-dir", str(tmp_path / "results"), "--runs-dir", str(tmp_path / "runs")]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert done.returncode == 2
    assert f"the GLUE folder {missing} does not exist" in done.stderr
    assert not (tmp_path / "runs").exists()


def test_the_budget_picture_draws_each_tasks_majority_level_where_it_is_known(tmp_path: Path, monkeypatch) -> None:
    """A flat curve reads as nothing without the constant predictor's level beside it (MRPC's is)."""
    import matplotlib.axes

    report = _import("report")
    drawn: list[float] = []
    real_axhline = matplotlib.axes.Axes.axhline

    def recording_axhline(self, y=0, *args, **kwargs):  # noqa: ANN001, ANN202 - matplotlib's signature
        drawn.append(y)
        return real_axhline(self, y, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "axhline", recording_axhline)
    curve = {
        ("mrpc", 1000, "identity"): {"search": {1: [0.81, 0.80], 6: [0.80, 0.79]}},
        ("stsb", 1000, "identity"): {"search": {1: [0.55, 0.60], 6: [0.79, 0.78]}},
    }
    picture = tmp_path / "layer_budget.png"
    # A task whose baseline is unknown (its files are not in the GLUE folder) gets no line.
    report.plot_budget(curve, picture, {"mrpc": 0.812})
    assert picture.is_file()
    assert drawn == [pytest.approx(81.2)]
