"""Prepare the folder a GPU session carries to the device machine for the large cells of the grid.

    python benchmarks/quality/device_carry.py --glue-dir ../shared/data/glue   # writes .device-carry/

The device machine (see the device tool) reaches nothing and takes at most 64 MiB of carried files, so
the backbone travels as fp16 safetensors (~44 MiB; the trainer loads it back into fp32 — the weights
are the fp32 MiniLM rounded to fp16) and only the GLUE tasks the large cells need travel with it.
The folder is git-ignored and never committed (the GLUE files stay out of the repository). Then, with
`carry: [".device-carry"]`, one prepared call runs the cells in parallel:

    PYTHONPATH=. python3 benchmarks/quality/grid.py run --glue-dir .device-carry/glue \\
        --backbone .device-carry/minilm-fp16 --tasks rte,mrpc,stsb,cola --sizes 1000,full \\
        --jobs 8 --threads 2 --device cuda --results-dir $OUT/results --runs-dir /tmp/runs

and the result JSON files come back under $OUT/results (copy them into benchmarks/quality/results/).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from grid import add_glue_dir_option  # noqa: E402

from aa_deploy.data.glue import glue_split_path  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_glue_dir_option(parser)
    parser.add_argument("--tasks", default="rte,mrpc,stsb,cola")
    parser.add_argument("--output", type=Path, default=REPO / ".device-carry")
    args = parser.parse_args()

    import torch
    from transformers import AutoModel, AutoTokenizer

    from aa_deploy.backbones import resolve_backbone_path

    source = resolve_backbone_path(None)
    backbone_dir = args.output / "minilm-fp16"
    if backbone_dir.exists():
        shutil.rmtree(backbone_dir)
    AutoModel.from_pretrained(source, dtype=torch.float16).save_pretrained(backbone_dir)
    AutoTokenizer.from_pretrained(source).save_pretrained(backbone_dir)
    for task in args.tasks.split(","):
        for split in ("train", "dev"):  # the GLUE reader owns each task's folder name
            target = glue_split_path(task, args.output / "glue", split)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(glue_split_path(task, args.glue_dir, split), target)
    total = sum(p.stat().st_size for p in args.output.rglob("*") if p.is_file())
    print(f"wrote {args.output} ({total / 2**20:.1f} MiB; the carry limit is 64 MiB with the working tree)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
