"""Copy the paper sweeps from runs/ into docs/paper/ and write docs/paper/results.json (one row per run).

    python scripts/paper_collect.py [--runs runs] [--docs docs/paper] [--device NAME] [--date YYYY-MM-DD]

Settings (each a folder of docs/paper/):
  symbolsoup, diffuse_mqar  Table 1: `small` preset, 600 steps x 128 (scripts/paper_tables.sh sweep/final)
  bytelm                    the Table 2 analogue: byte-level LM, 600 steps x 64 x 256 bytes (STAGE=lm)
  symbolsoup_d384           Table 1's SymbolSoup with a larger matched model (d_model 384, 6 layers, ~8M
                            parameters), 1000 steps x 128, one sweep per model (STAGE=wide), merged here.
A run stopped by a command's time limit has no summary; its row keeps the last periodic evaluation with
status "incomplete" (never selected).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
from pathlib import Path
from typing import Any

from sessa.train.sweep import confirm, plot_curves, plot_valid_vs_lr, render_markdown, select

TABLES = {"symbolsoup": "paper", "diffuse_mqar": "paper", "bytelm": "paper"}
WIDE = ("symbolsoup_d384", "paper_wide_1000", "symbolsoup")
FILES = ("results.json", "results.md", "valid_vs_lr.png", "curves.png", "sweep_config.json")


def incomplete_rows(sweep_dir: Path, model: str) -> list[dict[str, Any]]:
    """Rows of runs that started but wrote no summary (the command's time limit stopped them)."""
    rows = []
    for run in sorted((sweep_dir / model).glob("lr*-seed*")):
        if (run / "summary.json").exists() or not (run / "config.json").exists():
            continue
        cfg = json.loads((run / "config.json").read_text())
        evals: dict[str, dict[int, float]] = {"valid": {}, "test": {}}
        steps = 0
        with (run / "metrics.csv").open() as fh:
            for r in csv.DictReader(fh):
                steps = max(steps, int(r["step"]))
                if r.get("split") in evals:
                    evals[r["split"]][int(r["step"])] = float(r["value"])
        last = max(evals["valid"], default=None)
        rows.append(
            {
                "task": cfg["task"],
                "model": model,
                "seed": cfg["seed"],
                "lr": cfg["lr"],
                "warmup": round(cfg["warmup_fraction"] * cfg["steps"]),
                "steps": cfg["steps"],
                "batch_size": cfg["batch_size"],
                "out_dir": str(run),
                "metric": "accuracy",
                "higher_is_better": True,
                "status": "incomplete",
                "diverged": False,
                "params": None,
                "valid": evals["valid"].get(last),
                "test": evals["test"].get(last),
                "note": f"stopped by the time limit after step {steps}; valid/test of step {last}",
            }
        )
    return rows


def merge_wide(runs_root: Path, out: Path) -> dict[str, Any]:
    """One result from the per-model sweeps of the wide setting (their lrs differ per model)."""
    name, folder, task = WIDE
    rows: list[dict[str, Any]] = []
    configs = []
    for model_dir in sorted((runs_root / folder).iterdir()):
        sweep_dir = model_dir / task
        if (sweep_dir / "results.json").exists():
            part = json.loads((sweep_dir / "results.json").read_text())
            rows += part["runs"]
            configs.append(part["config"])
        rows += incomplete_rows(sweep_dir, model_dir.name)
    order = ["sessa", "attention", "mamba2", "sessa_nofb"]
    rows.sort(key=lambda r: (order.index(r["model"]) if r["model"] in order else 9, r["lr"], r["seed"]))
    picks = confirm(select(rows), rows)
    config = {
        **configs[0],
        "models": [m for m in order if any(r["model"] == m for r in rows)],
        "lrs": sorted({r["lr"] for r in rows}),
        "out_dir": str(runs_root / folder),
    }
    result = {"config": config, "complete": True, "runs": rows, "selected": picks, "total_wall_time_s": None}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2, default=str))
    (out / "results.md").write_text(render_markdown(result))
    plot_valid_vs_lr(rows, out / "valid_vs_lr.png")
    plot_curves(rows, picks, out / "curves.png")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="runs")
    parser.add_argument("--docs", default="docs/paper")
    parser.add_argument("--device", default="one NVIDIA H200", help="where the runs ran (recorded as is)")
    parser.add_argument("--date", default="2026-12-01", help="when the runs ran (recorded as is)")
    args = parser.parse_args()
    runs_root, docs = Path(args.runs), Path(args.docs)
    table: list[dict[str, Any]] = []
    for task, folder in TABLES.items():
        src, dst = runs_root / folder / task, docs / task
        if (src / "results.json").exists():
            dst.mkdir(parents=True, exist_ok=True)
            for f in FILES:
                if (src / f).exists():
                    shutil.copy2(src / f, dst / f)
        result = json.loads((dst / "results.json").read_text())
        table += [{"setting": task, "preset": "small", "model_options": {}, **r} for r in result["runs"]]
    if (runs_root / WIDE[1]).exists():
        merge_wide(runs_root, docs / WIDE[0])
    wide = json.loads((docs / WIDE[0] / "results.json").read_text())
    options = {"d_model": 384, "n_layers": 6, "n_heads": 6}
    table += [{"setting": WIDE[0], "preset": "small", "model_options": options, **r} for r in wide["runs"]]
    keep = (
        "setting",
        "task",
        "model",
        "seed",
        "lr",
        "warmup",
        "steps",
        "batch_size",
        "preset",
        "model_options",
        "params",
        "metric",
        "valid",
        "test",
        "status",
        "diverged",
        "tokens_per_s",
        "note",
    )
    rows = [{k: r.get(k) for k in keep} for r in table]
    (docs / "results.json").write_text(
        json.dumps({"device": args.device, "date": args.date, "runs": rows}, indent=1) + "\n"
    )
    print(f"{len(rows)} runs -> {docs / 'results.json'}")


if __name__ == "__main__":
    main()
