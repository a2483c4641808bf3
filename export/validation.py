"""Validation inputs and the comparison of ONNX Runtime against PyTorch.

Export only succeeds once the graph, run by ONNX Runtime, reproduces the trained PyTorch model on
real tokenised inputs: the task's own dev examples when its data is at hand (else built-in
sentences), pairs for pair tasks, a single unpadded example, a padded batch, the shortest possible
input (special tokens only) and inputs truncated to the maximum length. Padding and batch size are
where exports usually break (a mask traced as a constant, a shape baked in), so every case varies them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from aa_deploy.contract.layout import GRAPH_OUTPUT

logger = logging.getLogger("aa_deploy.export")

Pair = tuple[str, "str | None"]

BUILTIN_SENTENCES: tuple[str, ...] = (
    "The cat sat on the mat.",
    "A quick brown fox jumps over the lazy dog while the farmer watches from the porch.",
    "I loved this film!",
    "The committee postponed its decision until the auditors had reviewed every account in detail.",
    "No.",
    "Prices rose sharply in March, then fell back by the end of the quarter.",
    "She said she would come, but she never did.",
    "Researchers found that the new treatment reduced symptoms in most patients.",
    "What time does the train to Berlin leave tomorrow morning?",
    "This is, without any doubt, the worst service I have ever experienced.",
    "Water boils at 100 degrees Celsius at sea level.",
    "The museum's collection includes paintings, sculptures and rare manuscripts.",
    "He didn't like it.",
    "Naïve café owners rarely résumé their coöperation — or do they?",
    "The results were not statistically significant.",
    "Two dogs are playing in the snow.",
)


@dataclass
class ValidationCase:
    """One batch of model inputs (int64 numpy arrays keyed by graph input name)."""

    name: str
    inputs: dict[str, np.ndarray]

    @property
    def batch(self) -> int:
        return int(self.inputs["input_ids"].shape[0])

    @property
    def sequence(self) -> int:
        return int(self.inputs["input_ids"].shape[1])

    @property
    def padded(self) -> bool:
        return bool((self.inputs["attention_mask"] == 0).any())


@dataclass
class ValidationReport:
    """What was compared and how close it was (written to the manifest under ``validation``)."""

    max_abs_diff: float
    atol: float
    num_inputs: int
    passed: bool
    enforced: bool = True
    inputs_source: str = "builtin"
    pruned_max_abs_diff: float | None = None
    folded_max_abs_diff: float | None = None
    shared_max_abs_diff: float | None = None
    cases: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def builtin_examples(is_pair: bool) -> list[Pair]:
    if not is_pair:
        return [(s, None) for s in BUILTIN_SENTENCES]
    shifted = BUILTIN_SENTENCES[1:] + BUILTIN_SENTENCES[:1]
    return list(zip(BUILTIN_SENTENCES, shifted, strict=True))


def encode(
    tokenizer: Any,
    examples: Sequence[Pair],
    input_names: Sequence[str],
    max_length: int,
    padding: bool | str = True,
) -> dict[str, np.ndarray]:
    """Tokenise like training does (truncation to ``max_length``) and keep the graph's inputs."""
    texts = [text for text, _ in examples]
    pairs = [pair or "" for _, pair in examples] if any(pair is not None for _, pair in examples) else None
    encoded = tokenizer(texts, pairs, padding=padding, truncation=True, max_length=max_length, return_tensors="np")
    inputs: dict[str, np.ndarray] = {}
    for name in input_names:
        if name in encoded:
            inputs[name] = np.ascontiguousarray(encoded[name], dtype=np.int64)
        elif name == "token_type_ids":  # a tokenizer that does not emit them means segment 0 throughout
            inputs[name] = np.zeros_like(inputs["input_ids"])
        else:
            raise ValueError(f"the tokenizer does not produce {name!r}, which the graph needs")
    return inputs


def build_cases(
    tokenizer: Any, input_names: Sequence[str], examples: Sequence[Pair], max_length: int
) -> list[ValidationCase]:
    """The fixed set of batches every export is checked on (see the module docstring)."""
    if not examples:
        raise ValueError("no validation examples")
    is_pair = examples[0][1] is not None
    examples = list(examples)
    while len(examples) < 8:
        examples = examples + examples
    long_text = " ".join(text for text, _ in examples[:12])
    long_example: Pair = (long_text, long_text if is_pair else None)
    empty: Pair = ("", "" if is_pair else None)
    cases = [
        ValidationCase("single", encode(tokenizer, examples[:1], input_names, max_length)),
        ValidationCase("shortest", encode(tokenizer, [empty], input_names, max_length)),
        ValidationCase("padded_batch", encode(tokenizer, examples[:8], input_names, max_length)),
        ValidationCase(
            "max_length",
            encode(tokenizer, [long_example, examples[0]], input_names, max_length, padding="max_length"),
        ),
        ValidationCase("max_length_single", encode(tokenizer, [long_example], input_names, max_length)),
    ]
    rest = examples[8:24]
    if rest:
        cases.append(ValidationCase("data_batch", encode(tokenizer, rest, input_names, max_length)))
    return cases


def example_for_export(cases: Sequence[ValidationCase]) -> dict[str, np.ndarray]:
    """A padded batch of more than one example: tracing must see padding and a real batch."""
    for case in cases:
        if case.batch > 1 and case.padded:
            return case.inputs
    return cases[0].inputs


def torch_logits(model: Any, cases: Sequence[ValidationCase]) -> list[np.ndarray]:
    import torch

    outputs = []
    model.eval()
    with torch.no_grad():
        for case in cases:
            tensors = {k: torch.from_numpy(v) for k, v in case.inputs.items()}
            outputs.append(model(**tensors).logits.detach().float().cpu().numpy())
    return outputs


def ort_session(model: str | os.PathLike | bytes, threads: int | None = None) -> Any:
    """A CPU session with default (full) graph optimisations, as a server would create it."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def ort_logits(session: Any, cases: Sequence[ValidationCase]) -> list[np.ndarray]:
    names = [i.name for i in session.get_inputs()]
    return [session.run([GRAPH_OUTPUT], {n: case.inputs[n] for n in names})[0] for case in cases]


def compare(
    reference: Sequence[np.ndarray], actual: Sequence[np.ndarray], cases: Sequence[ValidationCase]
) -> tuple[float, list[dict[str, Any]]]:
    """Largest absolute difference overall and per case (NaN anywhere counts as infinite)."""
    per_case = []
    worst = 0.0
    for case, ref, out in zip(cases, reference, actual, strict=True):
        if ref.shape != out.shape:
            raise ValueError(f"case {case.name}: output shape {out.shape} differs from PyTorch's {ref.shape}")
        diff = np.abs(ref.astype(np.float64) - out.astype(np.float64))
        value = float("inf") if not np.all(np.isfinite(diff)) else float(diff.max(initial=0.0))
        worst = max(worst, value)
        per_case.append(
            {
                "name": case.name,
                "batch": case.batch,
                "sequence": case.sequence,
                "padded": case.padded,
                "max_abs_diff": value,
            }
        )
    return worst, per_case


def evaluate_metric(
    session: Any,
    spec: Any,
    examples: Sequence[Any],
    tokenizer: Any,
    input_names: Sequence[str],
    max_length: int,
    batch_size: int = 32,
) -> float:
    """The task metric of an ONNX graph on labelled examples (``aa_deploy.data.Example``)."""
    from aa_deploy.metrics import task_metrics

    logits, labels = [], []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        pairs = [(e.text, e.text_pair if spec.is_pair else None) for e in chunk]
        inputs = encode(tokenizer, pairs, input_names, max_length)
        names = [i.name for i in session.get_inputs()]
        logits.append(session.run([GRAPH_OUTPUT], {n: inputs[n] for n in names})[0])
        labels.extend(e.label for e in chunk)
    return float(task_metrics(spec, np.concatenate(logits), np.asarray(labels))[spec.metric])
