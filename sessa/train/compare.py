"""`sessa compare`: train matched models on a task set and report one table, JSON, Markdown and plots."""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sessa import registry
from sessa.progress import Progress
from sessa.train.config import TrainConfig
from sessa.train.evaluate import primary_metric
from sessa.train.runs import check_writable, finished_summary, guard_folder, start_mode
from sessa.train.trainer import train

# Built-in CPU defaults: small task variants that separate the models within minutes on a 2-core CPU.
QUICK_TASKS: dict[str, dict[str, Any]] = {
    "mqar": {
        "task_options": {
            "vocab_size": 64,
            "seq_len": 32,
            "n_pairs": 4,
            "n_train": 8000,
            "n_valid": 200,
            "n_test": 400,
        },
        "steps": 1500,
        "batch_size": 32,
        "lr": 1e-2,
    },
    "diffuse_mqar": {
        "task_options": {
            "n_pairs": 4,
            "key_len": 2,
            "key_vocab": 8,
            "value_vocab": 8,
            "min_noise_pairs": 2,
            "max_noise_pairs": 6,
            "n_train": 8000,
            "n_valid": 200,
            "n_test": 400,
        },
        "steps": 1500,
        "batch_size": 32,
        "lr": 1e-2,
    },
}
# The paper's tables on one GPU, `small` models: SymbolSoup 400-600 tokens and diffuse MQAR at full size
# (Table 1), byte-level LM on the offline corpus (the Table 2 analogue). Warm-up is 10% of the run. Each
# model's lr was selected on validation data by `sessa sweep --suite paper` (scripts/paper_tables.sh,
# results in docs/paper/); PAPER_LRS holds the picks.
PAPER_LRS: dict[str, dict[str, float]] = {
    # scripts/paper_tables.sh STAGE=sweep/final on one H200, 2026-12-01 (docs/paper/<task>/results.json)
    "symbolsoup": {"sessa": 5e-4, "attention": 2e-3, "mamba2": 5e-4, "sessa_nofb": 1e-3},
    "diffuse_mqar": {"sessa": 2e-3, "attention": 2.5e-4, "mamba2": 5e-4, "sessa_nofb": 2.5e-4},
    # STAGE=lm, 2026-12-01: every model picked the largest lr of {5e-4, 1e-3, 2e-3, 4e-3} (larger not tried)
    "bytelm": {"sessa": 4e-3, "attention": 4e-3, "mamba2": 4e-3, "sessa_nofb": 4e-3},
}
PAPER_TASKS: dict[str, dict[str, Any]] = {
    "symbolsoup": {"task_options": {}, "steps": 600, "batch_size": 128, "warmup_fraction": 0.1},
    "diffuse_mqar": {"task_options": {}, "steps": 600, "batch_size": 128, "warmup_fraction": 0.1},
    "bytelm": {"task_options": {"seq_len": 256}, "steps": 600, "batch_size": 64, "warmup_fraction": 0.1},
}
for _task, _settings in PAPER_TASKS.items():
    _settings["lr"] = PAPER_LRS[_task]
SUITES = {"quick": ("tiny", QUICK_TASKS), "paper": ("small", PAPER_TASKS)}
PAPER_TABLE1 = ["symbolsoup", "diffuse_mqar"]


def default_tasks(suite: str) -> list[str]:
    """The tasks `sessa compare` runs by default: the quick suite's, or the paper's Table 1."""
    return list(QUICK_TASKS) if suite == "quick" else list(PAPER_TABLE1)


@dataclass
class CompareConfig:
    """What `sessa compare` runs: every task x model x seed, each a full `sessa train` run."""

    tasks: list[str] = field(default_factory=lambda: list(QUICK_TASKS))
    models: list[str] = field(default_factory=lambda: ["sessa", "attention", "mamba2", "sessa_nofb"])
    seeds: list[int] = field(default_factory=lambda: [0])
    suite: str = "quick"  # "quick" (CPU minutes) or "paper" (the paper's Table 1 setting, one GPU)
    preset: str | None = None  # model preset; default from the suite
    steps: int | None = None  # override every task's step count
    batch_size: int | None = None
    lr: float | None = None
    device: str = "auto"
    amp: str = "auto"
    out_dir: str = "runs/compare"
    train_overrides: dict[str, Any] = field(default_factory=dict)  # any other TrainConfig field

    def __post_init__(self) -> None:
        check_suite_and_models(self.suite, self.models)
        if not self.models or not self.tasks or not self.seeds:
            raise ValueError("tasks, models and seeds must each name at least one entry")

    def plan(self) -> list[TrainConfig]:
        """Every run, in order: task, then model, then seed."""
        return [self.run_config(t, m, s) for t in self.tasks for m in self.models for s in self.seeds]

    def run_config(self, task: str, model: str, seed: int) -> TrainConfig:
        overrides = dict(self.train_overrides)
        for name in ("steps", "batch_size", "lr"):
            if getattr(self, name) is not None:
                overrides[name] = getattr(self, name)
        return suite_run_config(
            self.suite,
            task,
            model,
            seed,
            preset=self.preset,
            device=self.device,
            amp=self.amp,
            out_dir=str(Path(self.out_dir) / task / f"{model}-seed{seed}"),
            overrides=overrides,
        )


def check_suite_and_models(suite: str, models: list[str]) -> None:
    """ValueError unless ``suite`` is a suite and every model a trainable model of the registry."""
    if suite not in SUITES:
        raise ValueError(f"suite must be one of {sorted(SUITES)}, got {suite!r}")
    bad = [m for m in models if m not in registry.model_names()]
    if bad:
        raise ValueError(f"unknown model(s) {bad}; valid models: {', '.join(registry.model_names())}")


def suite_run_config(
    suite: str,
    task: str,
    model: str,
    seed: int,
    *,
    preset: str | None,
    device: str,
    amp: str,
    out_dir: str,
    overrides: dict[str, Any],
) -> TrainConfig:
    """The TrainConfig of one run of a suite: the suite's settings for the task (its lr may be a per-model
    table), then ``overrides`` (any TrainConfig field)."""
    default_preset, table = SUITES[suite]
    settings = dict(table.get(task, {}))
    lr = settings.get("lr")
    if isinstance(lr, dict):
        if model not in lr and "lr" not in overrides:
            raise ValueError(
                f"the {suite!r} suite has no selected lr for model {model!r} on {task!r} (it has "
                f"{sorted(lr)}); pass --lr"
            )
        settings["lr"] = lr.get(model)
    fields = {
        "task": task,
        "model": model,
        "seed": seed,
        "preset": preset or default_preset,
        "device": device,
        "amp": amp,
        "out_dir": out_dir,
        "log_every": 100,
        "eval_examples": 400,
        **settings,
        **overrides,
    }
    fields.setdefault("eval_every", max(1, fields.get("steps", 200) // 5))
    return TrainConfig(**fields)


def compare(
    cfg: CompareConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    log=print,  # noqa: ANN001
) -> dict[str, Any]:
    """Run every (task, model, seed); write results.json, results.md and plots into cfg.out_dir.

    Partial results are written after every finished run. A non-empty ``out_dir`` needs ``resume`` (finished
    runs are reused, an interrupted one resumes from its checkpoint) or ``overwrite`` (compare's own runs and
    results are deleted first; nothing else in the folder is touched)."""
    out = Path(cfg.out_dir)
    plan = cfg.plan()
    owned = (
        [out / n for n in ("compare_config.json", "results.json", "results.md")]
        + [Path(r.out_dir) for r in plan]
        + list(out.glob("*_metric_vs_step.png"))
        + list(out.glob("*_accuracy_vs_*.png"))
    )
    check_writable(out)
    guard_folder(out, owned, resume, overwrite, "a comparison")
    (out / "compare_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    runs: list[dict[str, Any]] = []
    start = time.perf_counter()
    progress = Progress(len(plan), "compare")
    for i, run_cfg in enumerate(plan, 1):
        progress.write(
            f"== [{i}/{len(plan)}] {run_cfg.task} | {run_cfg.model} | seed {run_cfg.seed} "
            f"({progress.eta_text()} for the comparison) =="
        )
        summary = finished_summary(run_cfg)
        if summary is None:
            t0, mode = time.perf_counter(), start_mode(run_cfg)
            summary = train(run_cfg, resume=mode == "resume", overwrite=mode == "fresh")
            summary["wall_time_s"] = time.perf_counter() - t0
        else:
            log(f"   finished earlier: reusing {run_cfg.out_dir}")
            summary.setdefault("wall_time_s", summary.get("train_time_s", 0.0))
        runs.append(summary)
        progress.update(1)
        _write_results(cfg, runs, out, time.perf_counter() - start, complete=i == len(plan))
    progress.close()
    result = _write_results(cfg, runs, out, time.perf_counter() - start, complete=True)
    plots = write_plots(runs, out)
    log(render_markdown(result["table"], result["total_wall_time_s"]))
    if plots:
        log("plots: " + ", ".join(str(p) for p in plots))
    return result


def _write_results(
    cfg: CompareConfig, runs: list[dict[str, Any]], out: Path, seconds: float, complete: bool
) -> dict[str, Any]:
    table = aggregate(runs)
    result = {
        "config": dataclasses.asdict(cfg),
        "complete": complete,
        "table": table,
        "runs": runs,
        "total_wall_time_s": seconds,
    }
    (out / "results.json").write_text(json.dumps(result, indent=2, default=str))
    (out / "results.md").write_text(render_markdown(table, seconds))
    return result


def aggregate(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (task, model): mean and std over seeds of the test metric, params, tokens/s, wall time."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["task"], run["model"]), []).append(run)
    rows = []
    for (task, model), members in groups.items():
        split = "test" if "test" in members[0]["final"] else sorted(members[0]["final"])[-1]
        values = []
        for run in members:
            name, value, higher = primary_metric(run["metric"], run["final"][split])
            values.append(value)
        rows.append(
            {
                "task": task,
                "model": model,
                "split": split,
                "metric": name,
                "higher_is_better": higher,
                "mean": statistics.fmean(values),
                "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "seeds": len(values),
                "params": members[0]["params"],
                "tokens_per_s": statistics.fmean(r["tokens_per_s"] for r in members),
                "wall_time_s": statistics.fmean(r["wall_time_s"] for r in members),
            }
        )
    return rows


def render_markdown(table: list[dict[str, Any]], total_s: float) -> str:
    lines = [
        "| task | model | metric (split) | value | params | tokens/s | wall time |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in table:
        value = f"{r['mean']:.4f}" + (f" ± {r['std']:.4f}" if r["seeds"] > 1 else "")
        lines.append(
            f"| {r['task']} | {r['model']} | {r['metric']} ({r['split']}) | {value} | {r['params']:,} | "
            f"{r['tokens_per_s']:,.0f} | {r['wall_time_s']:.0f} s |"
        )
    lines.append(f"\nTotal wall time: {total_s / 60:.1f} min.")
    return "\n".join(lines) + "\n"


def write_plots(runs: list[dict[str, Any]], out: Path) -> list[Path]:
    """metric vs step per task; metric vs length/lag per task where the task labels them."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    paths = []
    for task in sorted({r["task"] for r in runs}):
        members = [r for r in runs if r["task"] == task]
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        for run in members:
            rows = [
                h
                for h in run["history"]
                if h.get("split") == "test" or (h.get("split") and "test" not in run["final"])
            ]
            if rows:
                ax.plot(
                    [h["step"] for h in rows],
                    [h["value"] for h in rows],
                    marker="o",
                    label=f"{run['model']} s{run['seed']}",
                )
        ax.set(
            xlabel="training step", ylabel=members[0]["metric"], title=f"{task}: test metric during training"
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / f"{task}_metric_vs_step.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
        paths += _breakdown_plots(task, members, out, plt)
    return paths


def _breakdown_plots(task: str, members: list[dict[str, Any]], out: Path, plt) -> list[Path]:  # noqa: ANN001
    paths = []
    test = members[0]["final"].get("test", {})
    for key in [k for k in test if k.startswith("by_") and k[3:] in ("length", "lag")]:
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        for run in members:
            groups = run["final"]["test"][key]
            xs = sorted(groups, key=float)
            ax.plot(
                [float(x) for x in xs],
                [groups[x] for x in xs],
                marker="o",
                label=f"{run['model']} s{run['seed']}",
            )
        ax.set(xlabel=key[3:], ylabel="accuracy", title=f"{task}: accuracy vs {key[3:]} (test)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / f"{task}_accuracy_vs_{key[3:]}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths
