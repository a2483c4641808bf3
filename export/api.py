"""``export_run``: run folder → validated per-task ONNX folder (the compiler's one entry point).

Order of work, and why:

1. Read and check the run folder, load the trained model (eval mode) and its backbone's tokenizer.
2. Build the validation inputs and compute the trained model's logits on them: the reference.
3. Prune (``model.pruned()``) and check the pruned model against the reference (≤ 1e-5): pruning is
   exact by construction (docs/METHOD.md §3), so any difference means a damaged run folder.
4. Save the compact artefact (kept adapters + head), then fold the rationals into constants.
5. Export the task graph, post-process it (fusions, INT8), check the deployment contract (no custom
   domain, no switch, the I/O signature) and validate it in ONNX Runtime against the reference.
6. Shared mode: get the bare backbone from the store (exporting it through the same pipeline once),
   point the task's backbone tensors at it and give the folder the store file's bytes (a reflink or a
   copy; a hard link with ``hardlink_backbone``); then load the final folder
   with plain ``onnxruntime.InferenceSession`` and check it gives the validated outputs.
7. Config, tokenizer, manifest and size report; publish the folder by one rename.

Everything is written into a temporary sibling of the output folder, which replaces it only at the
end: a failed validation (or any error) leaves nothing behind.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aa_deploy.contract.families import family_for
from aa_deploy.contract.layout import (
    BACKBONE_DATA_NAME,
    GRAPH_NAME,
    GRAPH_OUTPUT,
    MANIFEST_NAME,
    METRICS_NAME,
    MODEL_CONFIG_NAME,
    RUN_FILES_FOR_CARD,
    SCRATCH_SUFFIX,
    SELECTION_NAME,
    TOKENIZER_NAME,
    WEIGHTS_NAME,
)
from aa_deploy.contract.manifest import HARDLINK, backbone_data_entry, build_manifest, manifest_json, write_manifest
from aa_deploy.fileio import (
    SIBLING_LEFTOVERS,
    atomic_write_bytes,
    atomic_write_text,
    publish_new_folder,
    remove_stale_leftovers,
    replace_folder,
    staging_dir_for,
)

from .backbone_store import (
    BackboneStore,
    place_backbone_file,
    settings_key,
    share_backbone_tensors,
    verify_external_data,
)
from .compiled_latency import CompiledSaving, measure_compiled_saving
from .errors import ExportError, GraphCheckError, OutputExistsError, RunFolderError, ValidationError
from .folding import fold_rationals
from .onnx_protos import check_domains, check_no_switch, io_signature
from .optimize import OptimizeSettings, postprocess
from .options import ExportOptions
from .permissions import apply_umask
from .run_folder import RunFolder, check_selection, read_run_folder
from .safetensors_canonical import canonicalize_safetensors
from .size_report import SizeReport, folder_report
from .validation import (
    ValidationReport,
    build_cases,
    builtin_examples,
    compare,
    evaluate_metric,
    example_for_export,
    ort_logits,
    ort_session,
    torch_logits,
)

logger = logging.getLogger("aa_deploy.export")

# Pruning and folding are exact transformations: they must reproduce the trained model to float noise.
PRUNE_ATOL = 1e-5
# The shared-layout folder reads the very tensors that were validated: its outputs must not move.
SHARED_ATOL = 1e-6
# Bumped whenever the export pipeline changes what bytes it produces (part of the store key).
PIPELINE_VERSION = 1
# A single protobuf cannot exceed 2 GiB; larger standalone graphs get their weights beside them.
_PROTOBUF_LIMIT = 2**31 - 2**24


@dataclass
class ExportResult:
    """What ``export_run`` produced: the folder, its manifest and the reports inside it."""

    output: Path
    manifest: dict[str, Any]
    validation: ValidationReport
    sizes: SizeReport
    metrics: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0


def export_run(
    run_dir: str | os.PathLike,
    output: str | os.PathLike,
    options: ExportOptions | None = None,
    **overrides: Any,
) -> ExportResult:
    """Compile a trained run folder (or a Hub id of one) into a validated ONNX task folder.

    ``options`` holds every setting (:class:`ExportOptions`, the same object the CLI builds from its
    flags). Keyword arguments named like its fields (``backbone_store=...``, ``quantize="int8"``) are
    applied on top of it, so short calls stay short. See the module docstring for the steps;
    docs/DESIGN.md for the folder layout and the manifest. ``data_dir`` (default ``$AA_GLUE_DIR``)
    supplies the task's own dev examples for validation and, with ``quantize="int8"``, the dev-set
    metric before and after quantisation.
    """
    started = time.time()
    options = (options or ExportOptions()).replace(**overrides)
    output = Path(output).expanduser().absolute()
    _check_output(output, options.overwrite)
    notes: list[str] = []
    result = _export(run_dir, output, options, notes)
    result.warnings = notes
    result.seconds = round(time.time() - started, 2)
    return result


def _check_output(output: Path, overwrite: bool) -> None:
    if output.exists() and not output.is_dir():
        raise FileExistsError(f"{output} exists and is a file: choose another --output")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise OutputExistsError(
            f"{output} already exists and is not empty: choose another --output or pass --overwrite"
        )


@dataclass
class _Reference:
    """The trained model's outputs on the validation cases, and everything needed to reproduce them.

    Every later stage (folding, the ONNX graph, the shared layout) is checked against ``logits``.
    """

    run: RunFolder
    spec: Any
    pruned: Any
    kept: list[int]
    num_layers: int
    tokenizer: Any
    max_length: int
    input_names: list[str]
    cases: list[Any]
    example: Any  # the inputs the exporter traces (task graph and bare backbone alike)
    source: str
    labelled: list[Any] | None
    logits: Any
    pruned_diff: float
    threads: int
    # An adapterdrop run exported at another depth than it recorded (--adapterdrop-eval-layers): the
    # depth it recorded. The run's metrics then describe another model than the export.
    trained_depth: int | None = None


@dataclass
class _CompiledGraph:
    """The validated task graph (after fusions / INT8) and what its validation measured."""

    graph: Any
    settings: OptimizeSettings
    post_report: dict[str, Any]
    folded: Any
    report: ValidationReport
    outputs: Any
    metrics: dict[str, Any] | None
    depth_metric: dict[str, Any] | None = None  # the exported graph's metric when trained_depth is set
    latency: CompiledSaving | None = None  # against adapters at every layer, when layers were removed


@dataclass
class _SharedLayout:
    """Where the task graph's backbone tensors went: the store entry, and how the folder's backbone
    file shares it (contract.manifest.HARDLINK / REFLINK / COPY; None for a standalone export)."""

    entry: Any = None
    shared_names: list[str] = field(default_factory=list)
    sharing: str | None = None


def _export(run_dir: str | os.PathLike, output: Path, options: ExportOptions, notes: list[str]) -> ExportResult:
    reference = _load_reference(run_dir, options)
    output.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_leftovers(output.parent, SIBLING_LEFTOVERS)
    staging = staging_dir_for(output)
    try:
        compiled = _compile_task_graph(reference, staging, options, notes)
        if options.standalone:
            layout = _SharedLayout()
            _write_graph(compiled.graph, staging / GRAPH_NAME, allow_external=True)
        else:
            layout = _write_shared_layout(reference, compiled, staging, options, notes)
        manifest = _write_folder_files(reference, compiled, layout, staging, options)
        _publish(staging, output, options.overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(_scratch_dir(staging), ignore_errors=True)
        raise
    sizes = folder_report(output, sharing=layout.sharing)
    return ExportResult(
        output=output, manifest=manifest, validation=compiled.report, sizes=sizes, metrics=compiled.metrics
    )


def _load_reference(run_dir: str | os.PathLike, options: ExportOptions) -> _Reference:
    """Steps 1–3: load the run, compute the reference logits, prune and check pruning is exact."""
    import torch

    from aa_deploy.data import TaskDefinition
    from aa_deploy.modeling import AdaptableAdapterModel

    from .onnx_export import graph_input_names

    run = read_run_folder(run_dir)
    try:
        spec = TaskDefinition.from_dict(run.config.task or {})
    except ValueError as exc:
        raise RunFolderError(f"{run.directory}: the task recorded in its adapter config is invalid ({exc})") from exc
    logger.info("loading %s onto %s", run.directory, run.config.base_model_name_or_path)
    try:
        model = AdaptableAdapterModel.from_pretrained(run.directory)
    except (ValueError, OSError) as exc:
        raise RunFolderError(f"cannot load the run folder {run.directory}: {exc}") from exc
    model.eval()
    check_selection(run, model.kept_layers())
    trained_depth = int(model.config.adapterdrop_eval_layers or 0)
    if options.adapterdrop_eval_layers is not None:
        _set_adapterdrop_depth(model, run, options.adapterdrop_eval_layers)
    redepthed = model.config.uses_adapterdrop and model.config.adapterdrop_eval_layers != trained_depth
    kept = model.kept_layers()
    tokenizer = _load_tokenizer(run.config.base_model_name_or_path)
    max_length = _max_length(run, model.backbone.config, tokenizer)
    input_names = graph_input_names(model.backbone)
    examples, source, labelled = _validation_examples(run, spec, options)
    cases = build_cases(tokenizer, input_names, examples, max_length)

    logits = torch_logits(model, cases)
    pruned = model.pruned().eval()
    pruned_diff, _ = compare(logits, torch_logits(pruned, cases), cases)
    if not pruned_diff <= PRUNE_ATOL:
        raise ValidationError(
            f"the pruned model differs from the trained model by {pruned_diff:.3g} (> {PRUNE_ATOL}): pruning "
            "must be exact; the run folder is inconsistent or the model is not in eval mode",
            {"pruned_max_abs_diff": pruned_diff},
        )
    return _Reference(
        run=run, spec=spec, pruned=pruned, kept=kept, num_layers=int(model.config.num_hidden_layers or 0),
        tokenizer=tokenizer, max_length=max_length, input_names=input_names, cases=cases,
        example=example_for_export(cases), source=source,
        labelled=labelled, logits=logits, pruned_diff=pruned_diff, threads=torch.get_num_threads(),
        trained_depth=trained_depth if redepthed else None,
    )  # fmt: skip


def _set_adapterdrop_depth(model: Any, run: RunFolder, drop: int) -> None:
    """Drop the adapters of the ``drop`` lowest layers (``--adapterdrop-eval-layers``).

    AdapterDrop trains one model for every depth: it is the deployment that picks how many of the
    lowest layers run without adapters (fewer adapter layers, and below the first adapter layer the
    server computes the backbone once for every task of a multi-task graph). So the depth is an export
    choice, not only the one the run recorded at training time. Only adapterdrop runs were trained to
    run with layers dropped; any other run would silently lose quality."""
    if not model.config.uses_adapterdrop:
        raise RunFolderError(
            f"--adapterdrop-eval-layers applies to runs of the adapterdrop recipe; {run.directory} is a "
            f"{model.config.recipe!r} run, whose adapters were not trained to run with layers dropped "
            "(retrain with --recipe adapterdrop, or leave the option out)"
        )
    num_layers = int(model.config.num_hidden_layers or 0)
    if not drop < num_layers:
        raise RunFolderError(
            f"--adapterdrop-eval-layers {drop} would drop every adapter: the backbone has {num_layers} layers, "
            f"choose 0 to {num_layers - 1}"
        )
    model.config.adapterdrop_eval_layers = drop


def _compile_task_graph(ref: _Reference, staging: Path, options: ExportOptions, notes: list[str]) -> _CompiledGraph:
    """Steps 4–5: save the compact artefact, fold, export, post-process, check the contract, validate in ORT."""
    from .onnx_export import export_task_graph

    pruned, cases = ref.pruned, ref.cases
    # The compact artefact: kept adapters (with their rational coefficients) and the head.
    pruned.save_pretrained(staging)
    canonicalize_safetensors(staging / WEIGHTS_NAME)
    # Before folding: the counterpart copies the rationals' parameters.
    removed = len(ref.kept) < ref.num_layers
    full = pruned.every_layer_counterpart() if options.measure_latency and removed else None
    folded = fold_rationals(pruned)
    folded_diff, _ = compare(ref.logits, torch_logits(pruned, cases), cases)
    if not folded_diff <= PRUNE_ATOL:
        raise ValidationError(
            f"folding the rationals changed the outputs by {folded_diff:.3g} (> {PRUNE_ATOL}); please report this bug",
            {"folded_max_abs_diff": folded_diff},
        )

    settings = OptimizeSettings(options.optimize, options.quantize)
    backbone_config = pruned.backbone.config
    logger.info("exporting the task graph (kept layers %s)", ref.kept)
    fp32_graph = export_task_graph(pruned, ref.example, ref.input_names)
    graph, post_report = postprocess(fp32_graph, backbone_config, settings)
    _check_contract(graph, ref.input_names, settings)
    graph_bytes = graph.SerializeToString() if graph.ByteSize() < _PROTOBUF_LIMIT else None
    session = ort_session(graph_bytes if graph_bytes is not None else _spill(graph, staging), ref.threads)
    outputs = ort_logits(session, cases)
    diff, per_case = compare(ref.logits, outputs, cases)
    enforced = options.quantize is None
    report = ValidationReport(
        max_abs_diff=diff, atol=options.atol, num_inputs=sum(c.batch for c in cases),
        passed=bool(diff <= options.atol), enforced=enforced, inputs_source=ref.source,
        pruned_max_abs_diff=ref.pruned_diff, folded_max_abs_diff=folded_diff, cases=per_case,
    )  # fmt: skip
    if enforced and not report.passed:
        raise ValidationError(
            f"ONNX Runtime output differs from PyTorch by {diff:.3g} (> atol {options.atol}); worst case: "
            f"{max(per_case, key=lambda c: c['max_abs_diff'])}. Nothing was written.",
            report.to_dict(),
        )
    if not report.passed:
        notes.append(f"INT8 logits differ from fp32 PyTorch by up to {diff:.3g} (not enforced for INT8)")
    metrics = _quantization_metrics(
        ref.labelled, options, ref.spec, ref.tokenizer, ref.input_names, ref.max_length, fp32_graph,
        backbone_config, session, ref.threads,
    )  # fmt: skip
    latency = None
    if full is not None and graph_bytes is not None:
        logger.info("timing the graph against the same model with adapters at every layer")
        latency = measure_compiled_saving(full, graph_bytes, ref.example, ref.input_names, settings)
    depth_metric = None
    if ref.trained_depth is not None and ref.labelled:
        if metrics is not None:  # INT8: the quantisation metric already scored this session on these examples
            value = metrics[settings.quantize]
        else:
            value = evaluate_metric(session, ref.spec, ref.labelled, ref.tokenizer, ref.input_names, ref.max_length)
        depth_metric = {
            "metric": ref.spec.metric,
            "value": value,
            "num_examples": len(ref.labelled),
            "source": ref.source,
        }
        logger.info(
            "%s of the exported depth on %d examples (%s): %.4f", ref.spec.metric, len(ref.labelled), ref.source, value
        )
    return _CompiledGraph(
        graph=graph, settings=settings, post_report=post_report, folded=folded,
        report=report, outputs=outputs, metrics=metrics, depth_metric=depth_metric, latency=latency,
    )  # fmt: skip


def _write_shared_layout(
    ref: _Reference, compiled: _CompiledGraph, staging: Path, options: ExportOptions, notes: list[str]
) -> _SharedLayout:
    """Step 6: point the task graph's backbone tensors at the store copy and give the folder its file."""
    import onnx

    from .onnx_export import OPSET, export_bare_backbone

    store = BackboneStore(options.backbone_store)
    store.remove_stale_leftovers()
    backbone_settings = compiled.settings.for_backbone()
    key_settings = _store_settings(ref.pruned, ref.input_names, backbone_settings, OPSET)
    key = settings_key(key_settings)
    entry = store.get(key)
    if entry is None:
        logger.info("exporting the bare backbone into the store %s", store.root)
        bare = export_bare_backbone(ref.pruned, ref.example, ref.input_names)
        bare, _ = postprocess(bare, ref.pruned.backbone.config, backbone_settings)
        entry = store.put(bare, key, key_settings)
    shared_graph = onnx.ModelProto()
    shared_graph.CopyFrom(compiled.graph)
    shared_names = share_backbone_tensors(shared_graph, entry)
    if not shared_names:
        raise ExportError(
            "no tensor of the task graph matched the stored backbone; the store entry "
            f"{entry.directory} does not belong to this backbone: delete it and export again"
        )
    if len(shared_names) < len(entry.tensors):
        notes.append(
            f"only {len(shared_names)} of the {len(entry.tensors)} stored backbone tensors matched the task "
            f"graph; the others stay inline in {GRAPH_NAME} (correct, but larger)"
        )
    _write_graph(shared_graph, staging / GRAPH_NAME, allow_external=False)
    sharing = place_backbone_file(entry.data_path, staging / BACKBONE_DATA_NAME, hardlink=options.hardlink_backbone)
    if options.hardlink_backbone and sharing != HARDLINK:
        notes.append(f"the backbone file could not be hard-linked (different file systems?): {sharing} instead")
    verify_external_data(shared_graph, staging)
    # The final check: plain ONNX Runtime loads the folder as a user would and reproduces the
    # validated outputs from the folder's backbone file.
    final = ort_logits(ort_session(staging / GRAPH_NAME, ref.threads), ref.cases)
    report = compiled.report
    report.shared_max_abs_diff, _ = compare(compiled.outputs, final, ref.cases)
    if not report.shared_max_abs_diff <= SHARED_ATOL:
        raise ValidationError(
            f"the shared-backbone graph differs from the validated graph by {report.shared_max_abs_diff:.3g}",
            report.to_dict(),
        )
    return _SharedLayout(entry=entry, shared_names=shared_names, sharing=sharing)


def _write_folder_files(
    ref: _Reference, compiled: _CompiledGraph, layout: _SharedLayout, staging: Path, options: ExportOptions
) -> dict[str, Any]:
    """Step 7: config, tokenizer, manifest (with sizes), model card. Returns the manifest."""
    _write_config(ref.pruned.backbone, staging)
    _save_tokenizer(ref.tokenizer, ref.max_length, staging)
    if not (staging / TOKENIZER_NAME).is_file():
        raise ExportError(f"the tokenizer did not write {TOKENIZER_NAME}; a fast tokenizer is required")
    manifest = _manifest(ref, compiled, layout, options)
    if ref.trained_depth is None:
        _copy_run_files_for_card(ref.run.directory, staging)
    else:  # the run's files describe the depth it was trained to run at, not this export's
        _write_redepthed_run_files(ref, compiled, staging)
    _write_manifest(staging, manifest, layout.sharing, on_write=lambda: _write_card(staging))
    return manifest


# ------------------------------------------------------------------------------------------- helpers
def _load_tokenizer(backbone: str | None) -> Any:
    from transformers import AutoTokenizer

    from aa_deploy.backbones import resolve_backbone_path

    try:
        tokenizer = AutoTokenizer.from_pretrained(resolve_backbone_path(backbone))
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot load the tokenizer of the backbone {backbone!r}: {exc}") from exc
    if not getattr(tokenizer, "is_fast", False):
        raise ExportError(
            f"the backbone {backbone!r} has no fast tokenizer; the export needs tokenizer.json (the server "
            "tokenizes with the `tokenizers` library). Add a tokenizer.json to the backbone folder."
        )
    return tokenizer


def _max_length(run: RunFolder, config: Any, tokenizer: Any) -> int:
    """The training max length, capped by what the backbone's position embeddings allow."""
    requested = int((run.training or {}).get("max_length") or 128)
    limits = [requested]
    family = family_for(config.model_type)
    positions = getattr(config, family.positions_key, None)
    if positions:
        if family.positions_after_padding:
            positions -= int(getattr(config, "pad_token_id", 1) or 0) + 1  # positions start after padding_idx
        limits.append(int(positions))
    model_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(model_max, int) and 0 < model_max < 1_000_000:
        limits.append(model_max)
    return min(limits)


def _validation_examples(
    run: RunFolder, spec: Any, options: ExportOptions
) -> tuple[list[tuple[str, str | None]], str, list[Any] | None]:
    """The task's labelled dev examples when available, else built-in sentences.

    Returns (examples for validation, where they came from, labelled examples for metrics or None).
    """
    from aa_deploy.cli_options import glue_dir_from_env
    from aa_deploy.data import DataError, load_task, read_glue_split
    from aa_deploy.data.glue import normalize_glue_task

    explicit = options.data_dir is not None
    data_dir = options.data_dir or glue_dir_from_env()
    labelled = None
    source = "builtin"
    try:
        glue = normalize_glue_task(spec.name)
        training_task = (run.training or {}).get("task")
        if glue is not None and data_dir:
            labelled, source = read_glue_split(glue, data_dir, "dev"), f"glue:{glue}/dev"
        elif training_task and Path(str(training_task)).is_file():
            data = load_task(str(training_task), test_file=(run.training or {}).get("test_file"))
            labelled, source = (data.test or data.train), f"file:{Path(str(training_task)).name}"
    except (DataError, OSError) as exc:
        if explicit:
            raise ExportError(f"cannot read the validation data for task {spec.name!r}: {exc}") from exc
        logger.warning("task data unavailable (%s); validating on built-in sentences", exc)
        labelled, source = None, "builtin"
    if labelled:
        if options.max_eval_examples:
            labelled = labelled[: options.max_eval_examples]
        pairs = [(e.text, (e.text_pair or "") if spec.is_pair else None) for e in labelled[:24]]
        return pairs, source, labelled
    return builtin_examples(spec.is_pair), "builtin", None


def _check_contract(graph: Any, input_names: list[str], settings: OptimizeSettings) -> None:
    try:
        check_domains(graph, allow_ort_builtin=settings.optimize or settings.quantize is not None)
        check_no_switch(graph)
    except ValueError as exc:
        raise GraphCheckError(str(exc)) from exc
    signature = io_signature(graph)
    names = [i["name"] for i in signature["inputs"]]
    if names != input_names:
        raise GraphCheckError(f"graph inputs are {names}, expected {input_names}")
    outputs = signature["outputs"]
    if [o["name"] for o in outputs] != [GRAPH_OUTPUT] or outputs[0]["elem_type"] != "FLOAT":
        raise GraphCheckError(f"graph outputs are {outputs}, expected one float32 {GRAPH_OUTPUT!r}")
    for value in signature["inputs"]:
        if (
            value["elem_type"] != "INT64"
            or len(value["dims"]) != 2
            or not all(isinstance(d, str) for d in value["dims"])
        ):
            raise GraphCheckError(f"input {value} must be int64 [batch, sequence] with dynamic dims")


def _spill(graph: Any, staging: Path) -> Path:
    """Write a >2 GiB graph to a scratch folder so that ONNX Runtime can load it."""
    scratch = _scratch_dir(staging)
    scratch.mkdir(exist_ok=True)
    path = scratch / GRAPH_NAME
    _write_graph(graph, path, allow_external=True)
    return path


def _write_graph(graph: Any, path: Path, *, allow_external: bool) -> None:
    import onnx

    if graph.ByteSize() < _PROTOBUF_LIMIT:
        atomic_write_bytes(path, graph.SerializeToString())
        return
    if not allow_external:
        raise ExportError("the task graph alone exceeds 2 GiB; this should not happen with a shared backbone")
    onnx.save_model(
        graph, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
        location=f"{path.stem}.onnx_data", size_threshold=1024,
    )  # fmt: skip


def _store_settings(model: Any, input_names: list[str], settings: OptimizeSettings, opset: int) -> dict[str, Any]:
    """Everything that determines the bare backbone's exported bytes (the store key)."""
    import onnx
    import onnxruntime
    import torch
    import transformers

    digest = hashlib.sha256()
    for name, tensor in sorted(model.backbone.base_model.state_dict().items()):
        array = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{array.dtype}|{tuple(array.shape)}|".encode())
        digest.update(array.numpy().tobytes() if array.dtype != torch.bfloat16 else array.float().numpy().tobytes())
    return {
        "backbone_sha256": digest.hexdigest(),
        "model_type": model.backbone.config.model_type,
        "inputs": list(input_names),
        "opset": opset,
        "exporter": "torch.onnx.export(dynamo=False), eager attention",
        "pipeline_version": PIPELINE_VERSION,
        **settings.to_dict(),
        "versions": {
            "torch": torch.__version__, "transformers": transformers.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
    }  # fmt: skip


def _quantization_metrics(
    labelled: list[Any] | None, options: ExportOptions, spec: Any, tokenizer: Any, input_names: list[str],
    max_length: int, fp32_graph: Any, backbone_config: Any, int8_session: Any, threads: int,
) -> dict[str, Any] | None:  # fmt: skip
    """Dev-set metric of the fp32 graph (same fusions) and of the INT8 graph, when data is available."""
    if options.quantize is None or not labelled:
        return None
    fp32, _ = postprocess(fp32_graph, backbone_config, OptimizeSettings(optimize=options.optimize))
    fp32_session = ort_session(fp32.SerializeToString(), threads)
    before = evaluate_metric(fp32_session, spec, labelled, tokenizer, input_names, max_length)
    after = evaluate_metric(int8_session, spec, labelled, tokenizer, input_names, max_length)
    logger.info("%s on %d dev examples: fp32 %.4f, int8 %.4f", spec.metric, len(labelled), before, after)
    return {
        "metric": spec.metric, "num_examples": len(labelled), "fp32": before, options.quantize: after,
        "delta": after - before,
    }  # fmt: skip


def _save_tokenizer(tokenizer: Any, max_length: int, staging: Path) -> None:
    """The tokenizer files, truncating where the server does: ``model_max_length`` in
    tokenizer_config.json and the truncation of tokenizer.json are the manifest's ``max_length``.

    Without this the backbone's own limit (512 for BERT) would be written, and a tool that trusts the
    tokenizer files (transformers and Optimum pipelines with ``truncation=True``, the ``tokenizers``
    library) would feed longer sequences than the server and get other logits for long texts.
    """
    tokenizer = copy.deepcopy(tokenizer)  # the reference's tokenizer stays as loaded
    tokenizer.model_max_length = max_length
    tokenizer.backend_tokenizer.enable_truncation(max_length)
    tokenizer.save_pretrained(str(staging))


def _write_config(backbone: Any, staging: Path) -> None:
    """config.json as transformers/Optimum read it: the sequence classifier with the task's labels."""
    config = copy.deepcopy(backbone.config)
    config.architectures = [type(backbone).__name__]
    atomic_write_text(staging / MODEL_CONFIG_NAME, config.to_json_string(use_diff=True))


def _manifest(
    ref: _Reference, compiled: _CompiledGraph, layout: _SharedLayout, options: ExportOptions
) -> dict[str, Any]:
    """The folder's manifest (aa_deploy.contract.manifest owns its keys): the values, gathered here."""
    import onnx
    import onnxruntime
    import torch
    import transformers

    from aa_deploy import __version__

    from .onnx_export import OPSET

    spec, config, entry, report = ref.spec, ref.pruned.config, layout.entry, compiled.report
    name = options.task_name or spec.name
    # The run's scores describe the export only when it runs at the depth the run recorded.
    trained = (ref.run.metrics or {}) if ref.trained_depth is None else {}
    backbone_data = None
    if entry is not None:
        backbone_data = backbone_data_entry(
            sha256=entry.sha256, tensors=layout.shared_names, size=entry.data_bytes,
            linked=layout.sharing == HARDLINK, store_object=entry.directory.name, sharing=layout.sharing,
        )  # fmt: skip
    informational = {
        "recipe": config.recipe,
        "adapter": {
            "kind": "rational" if config.uses_rational else "relu",
            "rational_version": config.rational_version,
            "bottleneck": config.bottleneck_size(int(config.hidden_size or 0)) if config.hidden_size else None,
            "folded_rationals": {str(k): v.to_dict() for k, v in compiled.folded.items()},
        },  # fmt: skip
        "graph": {
            "opset": OPSET,
            "domains": sorted({d or "ai.onnx" for d in (n.domain for n in compiled.graph.graph.node)}),
            "fused_operators": compiled.post_report.get("fused_operators", {}),
            "quantization": compiled.post_report.get("quantization"),
        },  # fmt: skip
        "metrics": {
            "metric": spec.metric,
            "trained_dev_split": trained.get("value"),
            "trained_test": trained.get("test_value"),
            "quantization": compiled.metrics,
            **({} if ref.trained_depth is None else {"at_export_depth": compiled.depth_metric}),
        },
        # What the removed layers save in ONNX Runtime (--measure-latency, and only when layers were removed).
        **({"latency": compiled.latency.to_dict()} if compiled.latency is not None else {}),
        "export_options": {
            k: v for k, v in options.to_dict().items() if k not in ("backbone_store", "data_dir", "overwrite")
        },
        "producer": {
            "aa_deploy": __version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
        },  # fmt: skip
    }
    return build_manifest(
        task={"name": name, "metric": spec.metric, "label_names": spec.label_names, "is_pair": spec.is_pair},
        num_labels=spec.num_labels,
        is_regression=spec.is_regression,
        inputs=list(ref.input_names),
        max_length=ref.max_length,
        pad_token_id=int(ref.tokenizer.pad_token_id if ref.tokenizer.pad_token_id is not None else 0),
        kept_layers=list(ref.kept),
        num_layers=ref.num_layers,
        base_model={
            "name_or_path": config.base_model_name_or_path,
            "model_type": config.base_model_type,
            "config_fingerprint": config.base_model_config_fingerprint,
            "weights_fingerprint": config.base_model_weights_fingerprint,
        },
        backbone_data=backbone_data,
        optimized=compiled.settings.optimize,
        quantization=compiled.settings.quantize,
        validation=report.to_dict(),
        informational=informational,
    )


def _write_manifest(
    staging: Path, manifest: dict[str, Any], sharing: str | None, on_write: Callable[[], None] | None = None
) -> SizeReport:
    """Write the manifest with the folder's sizes, which include the manifest itself and the model card
    (``on_write``, which quotes the sizes): iterate to a fixpoint."""
    text = ""
    sizes = folder_report(staging, sharing=sharing)
    for _ in range(6):
        manifest["sizes"] = sizes.to_manifest()
        new_text = manifest_json(manifest)
        if new_text == text:
            return sizes
        text = write_manifest(staging, manifest)
        if on_write is not None:
            on_write()
        sizes = folder_report(staging, sharing=sharing)
    # No fixpoint: recording N bytes can print a number one character shorter (a ratio that loses a
    # trailing digit), so the folder comes out at N - 1, and recording N - 1 makes it N again. Record the
    # larger total, then pad the manifest with JSON whitespace up to exactly what it records.
    if sizes.task_bytes > manifest["sizes"]["task_bytes"]:
        manifest["sizes"] = sizes.to_manifest()
        text = write_manifest(staging, manifest)
        if on_write is not None:
            on_write()
        sizes = folder_report(staging, sharing=sharing)
    shortfall = manifest["sizes"]["task_bytes"] - sizes.task_bytes
    if shortfall > 0:
        atomic_write_text(staging / MANIFEST_NAME, text.rstrip("\n") + " " * shortfall + "\n")
        sizes = folder_report(staging, sharing=sharing)
    return sizes


def _copy_run_files_for_card(run_directory: Path, staging: Path) -> None:
    """What the run learned, carried into the export so the folder describes itself (and the card can
    reuse the picture instead of drawing it again)."""
    for name in RUN_FILES_FOR_CARD:
        source = run_directory / name
        if source.is_file():
            shutil.copyfile(source, staging / name)


def _write_redepthed_run_files(ref: _Reference, compiled: _CompiledGraph, staging: Path) -> None:
    """metrics.json for an adapterdrop run exported at another depth: what training recorded that still
    holds (data, seed, epochs), this depth's layers, and its score where the export could measure it
    (the labelled examples it validated on; the official dev set for GLUE tasks). The training-time
    scores, the dev-split score and the latency savings were measured at the other depth: not copied.
    ``selection.json`` is this depth's; the run's picture (its layer stack) is left out."""
    atomic_write_text(staging / SELECTION_NAME, json.dumps(ref.pruned.selection(), indent=2) + "\n")
    trained = dict(ref.run.metrics or {})
    for key in ("value", "dev", "test", "test_value", "savings", "history", "adapter_bytes"):
        trained.pop(key, None)
    measured = compiled.depth_metric
    official = measured is not None and str(measured["source"]).startswith("glue:")  # GLUE dev: our test set
    trained.update(
        selected_layers=list(ref.kept),
        layers_kept=len(ref.kept),
        trained_params=ref.pruned.num_trainable_parameters(),  # counted as training counts them
        adapter_params=ref.pruned.num_trainable_parameters(include_head=False),
        adapterdrop_eval_layers=ref.num_layers - len(ref.kept),
        trained_adapterdrop_eval_layers=ref.trained_depth,
        at_export_depth=measured,
        test_value=measured["value"] if official else None,
        test_examples=measured["num_examples"] if official else None,
    )
    atomic_write_text(staging / METRICS_NAME, json.dumps(trained, indent=2, sort_keys=True) + "\n")


def _write_card(staging: Path) -> None:
    from aa_deploy.card import write_model_card

    write_model_card(staging)


def _scratch_dir(staging: Path) -> Path:
    return staging.parent / f"{staging.name}{SCRATCH_SUFFIX}"


def _publish(staging: Path, output: Path, overwrite: bool) -> None:
    """Rename the finished staging folder onto ``output``.

    The up-front ``_check_output`` is only a courtesy (it fails before minutes of work); the rename is
    the real check: without ``overwrite`` it refuses a folder that appeared meanwhile (another export
    to the same path), atomically, so of two concurrent exports exactly one wins.
    """
    apply_umask(staging)
    try:
        if overwrite:
            replace_folder(staging, output)
        else:
            publish_new_folder(staging, output)
    except FileExistsError as exc:
        raise OutputExistsError(
            f"{output} already exists: another export wrote it while this one ran. Nothing of it was "
            "changed; choose another --output or pass --overwrite to replace it"
        ) from exc
    finally:
        shutil.rmtree(_scratch_dir(staging), ignore_errors=True)
