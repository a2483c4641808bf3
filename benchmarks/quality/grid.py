"""Quality grid: (task × training size × seed × recipe) with the paper's protocol on real GLUE data.

    python benchmarks/quality/grid.py run --glue-dir ../shared/data/glue            # resumes
    python benchmarks/quality/grid.py run --glue-dir ../shared/data/glue --jobs 4   # GPU machine
    python benchmarks/quality/grid.py report                                          # RESULTS.md + plot

``--protocol`` picks the training schedule of every cell (``default``: the toolkit's default schedule;
``paper``: the paper's protocol). Cell ids of the paper protocol carry no suffix (they predate
schedules); other protocols add ``-<protocol>``.

    # the rational start study (search recipe, one cell per start)
    python benchmarks/quality/grid.py run --tasks sst2,stsb --sizes 100,300 --starts one,identity,gelu
    # the layer-budget curve: per K a budgeted search, a focused run on its layers, the standard
    # adapter trained on the K top-most layers, and one AdapterDrop run per seed scored with only the K
    # top-most layers' adapters (benchmarks/quality/drop_eval.py: an evaluation, not a training)
    python benchmarks/quality/grid.py run --tasks sst2,stsb,mrpc --sizes 1000 --budgets 1,2,3,4,5

``--learning-rate`` runs an off-protocol variant (adapters + head at another learning rate; the
switch and rational rates stay the paper's). Its cells carry the rate in their id and JSON and are
reported in a separate section, never mixed into the protocol table or its claims.

Each finished cell is one JSON file in results/; a cell whose file exists is never rerun, so the
command resumes wherever it stopped (also across sessions). Run folders go to runs/ (not committed);
a focused cell whose search is recorded but has no run folder here gets that search trained again
for its selection (its record is kept when the rerun reproduces it).
Several grid commands may share both folders (say one thread each on a small machine): each claims a
cell (a file lock in runs/) before it trains it, waits for cells another command is training, and skips
the cells another command finished meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path

from filelock import FileLock, Timeout

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))
from aa_deploy.cli_options import glue_dir_from_env  # noqa: E402
from aa_deploy.contract.layout import SELECTION_NAME  # noqa: E402
from aa_deploy.contract.rules import uses_rational  # noqa: E402
from aa_deploy.training.protocols import schedule_named  # noqa: E402

RESULTS = HERE / "results"
RUNS = HERE / "runs"
TASKS = ("rte", "mrpc", "stsb", "cola", "sst2")
SEEDS = (42, 92, 111)
RECIPES = ("standard", "search", "focused")
# The rational start every schedule had when cell ids were fixed: an id names its cell's start only when
# it is another one, so that the ids of cells run before a schedule changed its start stay valid, and a
# start-study cell and a schedule cell that train alike share one id (and one run).
FIRST_START = "one"
# How often a grid command looks again at cells another grid command is running.
CLAIM_POLL_S = 5.0
# How far a rebuilt cell's score may move (another CPU's float summation order) and still reproduce its record.
REPRODUCE_ATOL = 1e-4
# Recipes whose budget K means "adapters at the K top-most layers" (cell ids end in -top<K>).
TOP_K_RECIPES = ("standard", "adapterdrop")


@dataclass(frozen=True)
class Cell:
    task: str
    train_size: int | str  # an integer, or "full"
    seed: int
    recipe: str
    # focused only: the search run whose selection is reused (defaults to the same task/size/seed).
    source_task: str | None = None
    source_size: int | str | None = None
    # None = the protocol's rate; otherwise an off-protocol variant, reported separately.
    learning_rate: float | None = None
    protocol: str = "paper"
    # search: --max-layers K; standard: adapters only at the K top-most layers; adapterdrop: the seed's
    # AdapterDrop run (no budget) scored with the lowest layers' adapters dropped, K kept; focused:
    # follows its (budgeted) search source.
    layer_budget: int | None = None
    rational_init: str | None = None  # None = the protocol's start

    def _suffix(self) -> str:
        out = "" if self.protocol == "paper" else f"-{self.protocol}"
        if self.learning_rate is not None:
            out += f"-lr{self.learning_rate:g}"
        if self.start not in (None, FIRST_START):
            out += f"-start-{self.start}"
        if self.layer_budget is not None:
            out += f"-top{self.layer_budget}" if self.recipe in TOP_K_RECIPES else f"-k{self.layer_budget}"
        return out

    @property
    def cell_id(self) -> str:
        base = f"{self.task}-n{self.train_size}-s{self.seed}-{self.recipe}"
        if self.recipe == "focused" and (self.source_task, self.source_size) != (self.task, self.train_size):
            base += f"-from-{self.source_task}-n{self.source_size}"
        return base + self._suffix()

    @property
    def start(self) -> str | None:
        """The rational start this cell trains with: its own, else its schedule's (None without rationals)."""
        if not uses_rational(self.recipe):
            return None
        return self.rational_init or schedule_named(self.protocol).rational_init

    @property
    def evaluation_only(self) -> bool:
        """An AdapterDrop cell with a budget scores its seed's AdapterDrop run; nothing is trained."""
        return self.recipe == "adapterdrop" and self.layer_budget is not None

    def source(self) -> Cell | None:
        """The cell whose run folder this one needs: a focused cell's search, a dropped evaluation's run."""
        if self.evaluation_only:
            return Cell(
                self.task,
                self.train_size,
                self.seed,
                "adapterdrop",
                learning_rate=self.learning_rate,
                protocol=self.protocol,
                rational_init=self.rational_init,
            )
        if self.recipe != "focused":
            return None
        return Cell(
            self.source_task or self.task, self.source_size or self.train_size, self.seed, "search",
            learning_rate=self.learning_rate, protocol=self.protocol, layer_budget=self.layer_budget,
            rational_init=self.rational_init,
        )  # fmt: skip


def standard_grid(
    tasks, sizes, seeds, recipes, learning_rate: float | None = None, protocol: str = "paper"
) -> list[Cell]:
    cells = []
    for size in sizes:
        for task in tasks:
            for seed in seeds:
                for recipe in recipes:
                    source = (task, size) if recipe == "focused" else (None, None)
                    cells.append(
                        Cell(task, size, seed, recipe, *source, learning_rate=learning_rate, protocol=protocol)
                    )
    return cells


def transfer_grid(seeds, learning_rate: float | None = None, protocol: str = "paper") -> list[Cell]:
    """docs/METHOD.md §6 claim (c): selections reused across tasks and data sizes."""
    cells = []
    for seed in seeds:
        for task, source_task, source_size in (("rte", "mrpc", 300), ("rte", "rte", 100), ("mrpc", "mrpc", 100)):
            cells.append(
                Cell(
                    task, 300, seed, "focused", source_task, source_size, learning_rate=learning_rate, protocol=protocol
                )
            )
    return cells


def start_grid(tasks, sizes, seeds, starts, protocol: str) -> list[Cell]:
    """The rational start study: the search recipe with each starting shape (docs/METHOD.md §2)."""
    return [
        Cell(task, size, seed, "search", protocol=protocol, rational_init=start)
        for size in sizes for task in tasks for seed in seeds for start in starts
    ]  # fmt: skip


def budget_grid(tasks, sizes, seeds, budgets, protocol: str) -> list[Cell]:
    """The layer-budget curve (docs/METHOD.md §3): per K, a budgeted search, a focused run on the K
    layers it kept, and the two naive choices of K layers: the standard adapter trained on the K
    top-most layers, and AdapterDrop (one run per seed, trained with random drops of the lowest
    layers, scored with only its K top-most adapters: AdapterDrop's own use, one model for every K)."""
    cells = []
    for size in sizes:
        for task in tasks:
            for seed in seeds:
                cells.append(Cell(task, size, seed, "adapterdrop", protocol=protocol))
                for k in budgets:
                    cells.append(Cell(task, size, seed, "search", protocol=protocol, layer_budget=k))
                    cells.append(Cell(task, size, seed, "focused", task, size, protocol=protocol, layer_budget=k))
                    cells.append(Cell(task, size, seed, "standard", protocol=protocol, layer_budget=k))
                    cells.append(Cell(task, size, seed, "adapterdrop", protocol=protocol, layer_budget=k))
    return cells


def schedule(cells: list[Cell]) -> list[Cell]:
    """Run each transfer cell as soon as the cells it is compared with (and its source) are queued
    before it, so that a partly finished grid already says something about every claim."""
    plain = [
        c
        for c in cells
        if c.recipe != "focused"
        or c.source() is None
        or c.source_task in (None, c.task)
        and c.source_size in (None, c.train_size)
    ]
    transfers = [c for c in cells if c not in plain]
    last = {(c.task, c.train_size): i for i, c in enumerate(plain)}
    slots: dict[int, list[Cell]] = {}
    for cell in transfers:
        after = max(last.get((cell.task, cell.train_size), -1), last.get((cell.source_task, cell.source_size), -1))
        slots.setdefault(after, []).append(cell)
    ordered = slots.get(-1, [])
    for i, cell in enumerate(plain):
        ordered.append(cell)
        ordered.extend(slots.get(i, []))
    return ordered


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cell_command(cell: Cell, args: argparse.Namespace, out_dir: Path) -> list[str]:
    """``aa-deploy train`` for a training cell; the scoring script for an evaluation-only cell."""
    source = cell.source()
    if cell.evaluation_only:
        assert source is not None and cell.layer_budget is not None
        drop = backbone_num_layers(args.backbone) - cell.layer_budget
        return [sys.executable, str(HERE / "drop_eval.py"), "--run", str(args.runs_dir / source.cell_id),
                "--drop", str(drop), "--output", str(out_dir), "--glue-dir", str(args.glue_dir)]  # fmt: skip
    cmd = [
        sys.executable,
        "-m",
        "aa_deploy.cli",
        "train",
        "--task",
        cell.task,
        "--data-dir",
        args.glue_dir,
        "--recipe",
        cell.recipe,
        "--seed",
        str(cell.seed),
        "--protocol",
        cell.protocol,
        "--output",
        str(out_dir),
        "--overwrite",
        "--no-progress",
        "--device",
        args.device,
    ]
    if args.epochs is not None:
        cmd += ["--epochs", str(args.epochs)]
    if cell.rational_init is not None:
        cmd += ["--rational-init", cell.rational_init]
    if cell.layer_budget is not None and cell.recipe == "search":
        cmd += ["--max-layers", str(cell.layer_budget)]
    if cell.layer_budget is not None and cell.recipe == "standard":
        num_layers = backbone_num_layers(args.backbone)
        cmd += ["--layers", ",".join(str(i) for i in range(num_layers - cell.layer_budget, num_layers))]
    if cell.train_size != "full":
        cmd += ["--train-size", str(cell.train_size)]
    if args.backbone:
        cmd += ["--backbone", args.backbone]
    if cell.learning_rate is not None:
        cmd += ["--learning-rate", repr(cell.learning_rate)]
    if cell.recipe == "adapterdrop":
        # Trained for every K of the curve: each step drops up to all but the top-most layer.
        cmd += ["--adapterdrop-max-layers", str(backbone_num_layers(args.backbone) - 1)]
    if source is not None:
        cmd += ["--selection-from", str(args.runs_dir / source.cell_id)]
    return cmd


def run_cell(cell: Cell, args: argparse.Namespace) -> dict:
    """Train ``cell`` into its run folder and record its result (atomically) in the results folder.

    A cell that is recorded already is trained again only to rebuild the run folder a later cell needs
    (a focused cell's search on a machine that lacks it). Its record is kept when the rerun reproduces
    it (:func:`reproduces`); otherwise the record is replaced by the run the later cell builds on, and
    the grid says so.
    """
    out_dir = args.runs_dir / cell.cell_id
    cmd = cell_command(cell, args, out_dir)
    env = dict(
        os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="false"
    )
    started = time.time()
    log = args.runs_dir / f"{cell.cell_id}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as fh:
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"cell {cell.cell_id} failed (exit {proc.returncode}); see {log}")
    metrics = json.loads((out_dir / "metrics.json").read_text())
    ran = json.loads((out_dir / "training_config.json").read_text())
    result = {
        **asdict(cell),
        "cell_id": cell.cell_id,
        "metric": metrics["metric"],
        "value": metrics["test_value"],
        "dev_split_value": metrics["value"],
        "best_epoch": metrics["best_epoch"],
        "layers_kept": metrics["layers_kept"],
        "selected_layers": metrics["selected_layers"],
        "num_layers": metrics["num_layers"],
        "trained_params": metrics["trained_params"],
        "adapter_params": metrics["adapter_params"],
        "adapter_bytes": metrics["adapter_bytes"],
        "train_examples": metrics["train_examples"],
        "epochs": ran.get("epochs"),
        "epochs_run": metrics.get("epochs_run"),
        "optimizer_steps": metrics.get("optimizer_steps"),
        "protocol": cell.protocol,
        "layer_budget": cell.layer_budget,
        "rational_init_ran": ran.get("rational_init"),
        "learning_rate_ran": ran.get("learning_rate"),
        "savings": metrics.get("savings"),
        "wall_time_s": round(time.time() - started, 1),
        "device": metrics["device"],
        "threads": args.threads,
        "torch": metrics.get("torch"),
        "commit": _commit(),
    }
    recorded_file = args.results_dir / f"{cell.cell_id}.json"
    if recorded_file.is_file():
        recorded = json.loads(recorded_file.read_text())
        if reproduces(recorded, result):  # keep the record (its wall time and commit are the first run's)
            return result
        print(
            f"WARNING {cell.cell_id}: the rebuilt run did not reproduce its record (value {recorded.get('value')} "
            f"-> {result['value']}, layers {recorded.get('selected_layers')} -> {result['selected_layers']}); "
            "the record now describes the rebuilt run",
            flush=True,
        )
    args.results_dir.mkdir(parents=True, exist_ok=True)
    tmp = args.results_dir / f".{cell.cell_id}.json.tmp"
    tmp.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, recorded_file)
    return result


def reproduces(recorded: dict, rerun: dict) -> bool:
    """Whether a rerun of a recorded cell is the same result: the same layers kept and a score within
    ``REPRODUCE_ATOL``. Not bit-equality: the same seed on another CPU sums in another order (a rebuilt
    STS-B search moved its Spearman by 7e-6), far below the 0.1 points the report shows."""
    value = recorded.get("value")
    return (
        recorded.get("selected_layers") == rerun["selected_layers"]
        and isinstance(value, (int, float))
        and abs(value - rerun["value"]) <= REPRODUCE_ATOL
    )


def backbone_num_layers(backbone: str | None) -> int:
    """Depth of the grid's backbone, for the standard adapter on the K top-most layers."""
    from aa_deploy.backbones import resolve_backbone_path

    config = json.loads((Path(resolve_backbone_path(backbone)) / "config.json").read_text())
    return int(config.get("num_hidden_layers") or config["n_layers"])


def _done(cell: Cell, results_dir: Path) -> bool:
    return (results_dir / f"{cell.cell_id}.json").is_file()


def _run_folder_ready(cell: Cell, runs_dir: Path) -> bool:
    """Whether ``cell``'s run folder holds what later cells read from it (its selection)."""
    return (runs_dir / cell.cell_id / SELECTION_NAME).is_file()


def _source_ready(cell: Cell, runs_dir: Path) -> bool:
    source = cell.source()
    return source is None or _run_folder_ready(source, runs_dir)


def _finished(cell: Cell, args: argparse.Namespace, rebuilding: set[str]) -> bool:
    """A planned cell is finished once recorded; a cell rerun for its run folder once that folder is ready."""
    if cell.cell_id in rebuilding:
        return _run_folder_ready(cell, args.runs_dir)
    return _done(cell, args.results_dir)


def claim_cell(cell: Cell, runs_dir: Path) -> FileLock | None:
    """Hold ``<runs>/<cell>.lock`` while the cell runs, or None when another grid command holds it.

    Two grid commands may share one results and runs folder (one thread each, as the grid runs on a
    small machine); without a claim both would train the same cell into the same run folder. An OS file
    lock, not a marker file: a command that is killed leaves no stale claim behind.
    """
    runs_dir.mkdir(parents=True, exist_ok=True)
    # thread_local=False: the lock is taken here and released by the worker thread that runs the cell.
    lock = FileLock(runs_dir / f"{cell.cell_id}.lock", thread_local=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return None
    return lock


def run_claimed_cell(cell: Cell, args: argparse.Namespace, claim: FileLock) -> dict:
    try:
        return run_cell(cell, args)
    finally:
        claim.release()


def command_run(args: argparse.Namespace) -> int:
    sizes = [s if s == "full" else int(s) for s in args.sizes.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    tasks = args.tasks.split(",")
    # The two studies can share one (resumable, --jobs parallel) command; without either, the recipes' grid.
    cells = []
    if args.starts:
        cells += start_grid(tasks, sizes, seeds, args.starts.split(","), args.protocol)
    if args.budgets:
        cells += budget_grid(tasks, sizes, seeds, [int(k) for k in args.budgets.split(",")], args.protocol)
    if not cells:
        cells = standard_grid(tasks, sizes, seeds, args.recipes.split(","), args.learning_rate, args.protocol)
    if args.transfer:
        cells = schedule(cells + transfer_grid(seeds, args.learning_rate, args.protocol))
    todo = [c for c in cells if not _done(c, args.results_dir)]
    print(f"{len(cells) - len(todo)} of {len(cells)} cells already finished; {len(todo)} to run", flush=True)
    failures = 0
    running: dict[Future, Cell] = {}
    announced: set[str] = set()  # cells reported as held by another grid command
    # Recorded cells trained again because a planned cell needs their run folder, which this machine
    # lacks (run folders are not committed): they are finished once the folder is, not once recorded.
    rebuilding: set[str] = set()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        while todo or running:
            # Another grid command sharing the results folder may have finished a cell since the plan.
            for cell in [c for c in todo if _finished(c, args, rebuilding)]:
                todo.remove(cell)
                print(f"skip {cell.cell_id}: finished by another grid command meanwhile", flush=True)
            # A focused cell whose search source is neither finished nor queued anymore is run after it.
            blocked = [c for c in todo if not _source_ready(c, args.runs_dir)]
            queued_sources = {c.cell_id for c in todo} | {c.cell_id for c in running.values()}
            for cell in blocked:
                source = cell.source()
                if source is not None and source.cell_id not in queued_sources:
                    if _done(source, args.results_dir):
                        rebuilding.add(source.cell_id)
                        print(
                            f"rebuild {source.cell_id}: recorded, but {cell.cell_id} needs its run folder", flush=True
                        )
                    todo.append(source)
                    queued_sources.add(source.cell_id)
            ready = [c for c in todo if _source_ready(c, args.runs_dir)]
            held_elsewhere = []
            for cell in ready:
                if len(running) >= args.jobs:
                    break
                claim = claim_cell(cell, args.runs_dir)
                if claim is None:
                    held_elsewhere.append(cell)
                    if cell.cell_id not in announced:
                        announced.add(cell.cell_id)
                        print(f"waiting for {cell.cell_id}: another grid command is running it", flush=True)
                    continue
                if _finished(cell, args, rebuilding):  # finished between the check above and the claim
                    claim.release()
                    continue
                todo.remove(cell)
                running[pool.submit(run_claimed_cell, cell, args, claim)] = cell
            if not running:
                if held_elsewhere:
                    # Cells (or the sources of focused cells) another grid command is training: wait for it.
                    time.sleep(CLAIM_POLL_S)
                    continue
                if todo:
                    print(f"cannot run {[c.cell_id for c in todo]}: their search sources failed", flush=True)
                    failures += len(todo)
                break
            finished, _ = wait(running, timeout=CLAIM_POLL_S if held_elsewhere else None, return_when=FIRST_COMPLETED)
            for future in finished:
                cell = running.pop(future)
                try:
                    r = future.result()
                    print(
                        f"done {cell.cell_id}: {r['metric']}={r['value']:.4f} layers={r['layers_kept']} ({r['wall_time_s']} s)",
                        flush=True,
                    )
                except Exception as exc:  # noqa: BLE001 - one failed cell must not stop the grid
                    failures += 1
                    print(f"FAILED {cell.cell_id}: {exc}", flush=True)
                    todo = [c for c in todo if not (c.source() and c.source().cell_id == cell.cell_id)]
    return 1 if failures else 0


def existing_glue_dir(value: str) -> str:
    """argparse type of ``--glue-dir``: a missing folder is refused while parsing, before any work starts
    (otherwise every grid cell fails on its own and says so only in its log)."""
    if not Path(value).is_dir():
        raise argparse.ArgumentTypeError(f"the GLUE folder {value} does not exist: pass --glue-dir or set $AA_GLUE_DIR")
    return value


def add_glue_dir_option(parser: argparse.ArgumentParser) -> None:
    """``--glue-dir`` of the quality scripts: ``$AA_GLUE_DIR`` by default, required without it (no folder
    is guessed; the Makefile sets the variable to ../shared/data/glue when that exists)."""
    parser.add_argument(
        "--glue-dir", type=existing_glue_dir, default=glue_dir_from_env(), required=glue_dir_from_env() is None,
        help="the GLUE folder (default $AA_GLUE_DIR)",
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run (or resume) the grid")
    add_glue_dir_option(run)
    run.add_argument("--tasks", default=",".join(TASKS))
    run.add_argument("--sizes", default="100,300", help="comma-separated N, or 'full'")
    run.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    run.add_argument("--recipes", default=",".join(RECIPES))
    run.add_argument("--transfer", action="store_true", help="also run the transfer cells (claim c)")
    run.add_argument("--epochs", type=int, default=None, help="default: the protocol's")
    run.add_argument(
        "--protocol", default="default", choices=["default", "paper"], help="training schedule of every cell"
    )
    run.add_argument(
        "--starts", help="rational start study: comma-separated starts (search recipe only; combines with --budgets)"
    )
    run.add_argument("--budgets", help="layer-budget curve: comma-separated K (combines with --starts)")
    run.add_argument(
        "--learning-rate",
        type=float,
        default=None,
        help="off-protocol variant: adapters + head learning rate (protocol: 1e-4); reported separately",
    )
    run.add_argument("--jobs", type=int, default=1, help="cells in parallel processes")
    run.add_argument("--threads", type=int, default=2, help="torch threads per cell")
    run.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    run.add_argument("--backbone", help="backbone folder or id (default: all-MiniLM-L6-v2)")
    run.add_argument(
        "--results-dir", type=Path, default=RESULTS, help="where cell JSON files go (default: results/ here)"
    )
    run.add_argument(
        "--runs-dir", type=Path, default=RUNS, help="where run folders go (default: runs/ here, not committed)"
    )
    run.set_defaults(func=command_run)
    report = sub.add_parser(
        "report", help="render RESULTS.md and the plot from the finished cells (options: report.py's)"
    )
    report.set_defaults(func=None)
    # `report` hands its options (--results-dir, --output, --glue-dir) to report.py, which owns them.
    args, rest = parser.parse_known_args(argv)
    if args.func is None:
        return __import__("report").main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return args.func(args)


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    raise SystemExit(main())
