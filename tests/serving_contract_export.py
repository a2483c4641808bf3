"""THROWAWAY: writes DESIGN.md-conforming export folders until export.export_run lands. Delete then."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, numpy_helper

from aa_deploy.backbones import frozen_parameter_names
from aa_deploy.config import AdapterConfig
from aa_deploy.modeling.model import AdaptableAdapterModel


def make_run(backbone_dir: Path, task: dict, layers: list[int], seed: int, recipe: str = "search") -> AdaptableAdapterModel:
    torch.manual_seed(seed)
    model = AdaptableAdapterModel.from_backbone(str(backbone_dir), AdapterConfig(recipe=recipe), task=task)
    with torch.no_grad():
        for index, block in model.adapter_layers.items():
            for p in block.adapter.parameters():
                p.normal_(0, 0.3)
            if block.switch is not None:
                block.switch.logits.copy_(torch.tensor([0.0, 5.0]) if int(index) in layers else torch.tensor([5.0, 0.0]))
        for name, p in model.backbone.named_parameters():
            if name.startswith("classifier"):
                p.normal_(0, 0.5)
    return model.eval()


class _Wrapper(torch.nn.Module):
    def __init__(self, model: AdaptableAdapterModel, with_types: bool) -> None:
        super().__init__()
        self.m = model
        self.with_types = with_types

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        kwargs = {"token_type_ids": token_type_ids} if self.with_types else {}
        return self.m(input_ids=input_ids, attention_mask=attention_mask, **kwargs).logits


def export_folder(model: AdaptableAdapterModel, backbone_dir: Path, output: Path, store: Path, max_length: int = 32,
                  standalone: bool = False) -> Path:
    pruned = model.pruned().eval()
    output.mkdir(parents=True, exist_ok=True)
    with_types = pruned.backbone.config.model_type not in ("distilbert", "roberta", "xlm-roberta")
    inputs = ["input_ids", "attention_mask"] + (["token_type_ids"] if with_types else [])
    ids = torch.randint(5, 50, (2, 8))
    args = (ids, torch.ones_like(ids)) + ((torch.zeros_like(ids),) if with_types else ())
    raw = output / "raw.onnx"
    torch.onnx.export(_Wrapper(pruned, with_types), args, str(raw), dynamo=False, opset_version=17,
                      input_names=inputs, output_names=["logits"], do_constant_folding=False,
                      dynamic_axes={**{k: {0: "batch", 1: "sequence"} for k in inputs}, "logits": {0: "batch"}})
    proto = onnx.load(str(raw))
    raw.unlink()
    graph = proto.graph
    rename = {}
    for t in graph.initializer:
        new = t.name.removeprefix("m.").removeprefix("backbone.")
        rename[t.name] = new
        t.name = new
    consumers: dict[str, list] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = rename.get(name, name)
            consumers.setdefault(node.input[i], []).append(node)
    # Pre-transpose weights consumed only by a Transpose node (what a clean exporter stores).
    inits = {t.name: t for t in graph.initializer}
    drop = []
    for node in graph.node:
        if node.op_type == "Transpose" and node.input[0] in inits and len(consumers[node.input[0]]) == 1:
            t = inits[node.input[0]]
            arr = numpy_helper.to_array(t).T.copy()
            t.CopyFrom(numpy_helper.from_array(arr, t.name))
            for other in graph.node:
                for i, name in enumerate(other.input):
                    if name == node.output[0]:
                        other.input[i] = t.name
            drop.append(node)
    for node in drop:
        graph.node.remove(node)
    frozen = frozen_parameter_names(pruned.backbone)
    backbone_names = sorted(t.name for t in graph.initializer if t.name in frozen)
    proto.ir_version = 10
    if standalone:
        onnx.save(proto, str(output / "model.onnx"))
        backbone_info = None
    else:
        blob = bytearray()
        for t in graph.initializer:
            if t.name not in frozen:
                continue
            data = numpy_helper.to_array(t).tobytes()
            pad = (-len(blob)) % 64
            blob += b"\0" * pad
            offset = len(blob)
            blob += data
            t.ClearField("raw_data")
            for f in ("float_data", "int64_data", "int32_data"):
                t.ClearField(f)
            t.data_location = TensorProto.EXTERNAL
            del t.external_data[:]
            for k, v in (("location", "backbone.onnx_data"), ("offset", str(offset)), ("length", str(len(data)))):
                e = t.external_data.add()
                e.key, e.value = k, v
        sha = hashlib.sha256(bytes(blob)).hexdigest()
        store.mkdir(parents=True, exist_ok=True)
        stored = store / f"{sha}.onnx_data"
        if not stored.exists():
            stored.write_bytes(bytes(blob))
        target = output / "backbone.onnx_data"
        if target.exists():
            target.unlink()
        os.link(stored, target)
        onnx.save(proto, str(output / "model.onnx"))
        backbone_info = {"file": "backbone.onnx_data", "sha256": sha, "tensors": backbone_names}
    shutil.copy(backbone_dir / "tokenizer.json", output / "tokenizer.json")
    pruned.save_pretrained(output)
    task = pruned.config.task
    manifest = {
        "format": "aa-deploy-onnx", "format_version": 1, "task": task,
        "num_labels": len(task["label_names"]) if task.get("label_names") else 1,
        "problem_type": "single_label_classification" if task.get("label_names") else "regression",
        "inputs": inputs, "outputs": ["logits"], "max_length": max_length, "pad_token_id": 0,
        "kept_layers": pruned.kept_layers(), "num_layers": pruned.config.num_hidden_layers,
        "base_model": {"name_or_path": str(backbone_dir), "model_type": pruned.backbone.config.model_type},
        "mode": "standalone" if standalone else "shared", "backbone_data": backbone_info,
        "optimized": False, "quantization": None,
        "validation": {"passed": True}, "sizes": {},
    }
    (output / "aa_export.json").write_text(json.dumps(manifest, indent=2))
    return output


def torch_logits(model: AdaptableAdapterModel, enc: dict[str, np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        return model(**{k: torch.from_numpy(v) for k, v in enc.items()}).logits.numpy()
