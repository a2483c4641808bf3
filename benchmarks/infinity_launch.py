"""Start Infinity's CLI (``infinity_emb v2 ...``) with one compatibility fix, for benchmarks/peers.py.

    .venv-infinity/bin/python benchmarks/infinity_launch.py v2 --model-id /abs/folder ...

Runs in Infinity's own environment (``make peers-env``), never in the project's. Infinity 0.0.78 finds a
local folder's ONNX file by globbing the folder and passes the file's *full path* as ``file_name`` to
Optimum's ``ORTModel.from_pretrained``; Optimum 2 (optimum-onnx, the only line that runs with the
torch available here: Optimum 1.x imports a torch.onnx helper that torch 2.9+ removed) compares
``file_name`` with the file's *name*, so any local folder fails with "Could not find any ONNX files
with target file name". The fix hands Optimum the path relative to the model folder, which is what a
Hub repository gives it. Nothing else of Infinity is changed.
"""

from __future__ import annotations

import sys
from pathlib import Path


def _relative_onnx_files() -> None:
    from infinity_emb.transformer import utils_optimum
    from infinity_emb.transformer.classifier import optimum as classifier

    original = utils_optimum.get_onnx_files

    def get_onnx_files(*, model_name_or_path: str, **kwargs: object) -> Path:
        found = original(model_name_or_path=model_name_or_path, **kwargs)
        folder = Path(model_name_or_path)
        return found.relative_to(folder) if folder.is_dir() and found.is_relative_to(folder) else found

    utils_optimum.get_onnx_files = get_onnx_files
    classifier.get_onnx_files = get_onnx_files


if __name__ == "__main__":
    _relative_onnx_files()
    from infinity_emb.cli import cli

    sys.argv[0] = "infinity_emb"
    sys.exit(cli())
