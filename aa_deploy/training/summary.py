"""What ``aa-deploy train`` prints when a run ends: a few readable lines, or (``--json``) one JSON object.

Both are built from the run's ``metrics.json`` record, so the summary can never disagree with the
files in the run folder. Standard library only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def summary_record(output: Path, metrics: dict[str, Any]) -> dict[str, Any]:
    """The machine-readable summary (``--json``): stable keys, scripts parse them."""
    test_value = metrics.get("test_value")
    return {
        "output": str(output),
        "metric": metrics["metric"],
        "value": round(float(metrics["value"]), 4),
        "test_value": None if test_value is None else round(float(test_value), 4),
        "selected_layers": list(metrics.get("selected_layers", [])),
    }


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def summary_text(output: Path, metrics: dict[str, Any]) -> str:
    """The human summary: what was trained, how well, which layers kept adapters, what to do next."""
    metric = metrics["metric"]
    epochs = len(metrics.get("history", [])) or "?"
    kept = list(metrics.get("selected_layers", []))
    layers = ", ".join(str(i) for i in kept) if kept else "none"
    lines = [
        f"Trained {metrics.get('recipe', '?')} adapters for {metrics.get('task', '?')} in "
        f"{_duration(float(metrics.get('wall_time_s', 0.0)))} on {metrics.get('device') or '?'}",
        f"  dev  {metric}: {float(metrics['value']):.4f} (best epoch {metrics.get('best_epoch')} of {epochs}, "
        f"{metrics.get('dev_examples', '?')} examples)",
    ]
    if metrics.get("test_value") is not None:
        lines.append(
            f"  test {metric}: {float(metrics['test_value']):.4f} ({metrics.get('test_examples', '?')} examples)"
        )
    lines += [
        f"  adapters kept in layers: {layers} ({len(kept)} of {metrics.get('num_layers', '?')})",
        f"  trained parameters: {int(metrics.get('trained_params', 0)):,} "
        f"({int(metrics.get('adapter_bytes', 0)) / 1024:.0f} KiB on disk)",
        f"Run folder: {output}",
        f"Next: aa-deploy export {output} --output EXPORT_DIR   (or --json for this summary as JSON)",
    ]
    return "\n".join(lines)
