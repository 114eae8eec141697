"""`sessa sweep`: pick each model's learning rate on validation data; report test as mean ± std over seeds.

For one task, every (model, lr, seed) is a full `sessa train` run with the suite's settings (the same
settings `sessa compare` uses). Each model's lr is the one with the best mean *validation* metric over
seeds among the lrs whose runs all stayed healthy; its *test* metric (mean ± std over seeds) is reported.
A run whose loss became NaN/inf ("diverged") or whose training-health alarm fired ("unhealthy",
:mod:`sessa.train.health`) is reported as diverged and never selected.

Runs go one after another in this process, or ``parallel`` at a time as subprocesses (small models are
launch-bound, so several share one GPU well). A finished run (its summary.json, made with the same
settings) is reused on a re-run, so an interrupted sweep continues where it stopped.

Outputs in ``out_dir/<task>``: ``results.json`` (one row per run), ``results.md``, ``valid_vs_lr.png``,
``curves.png`` (learning curves at each selected lr) and one folder per run (``<model>/lr<lr>-seed<seed>``)
with its metrics.csv, summary.json and log.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sessa.progress import Progress
from sessa.train.compare import check_suite_and_models, suite_run_config
from sessa.train.config import TrainConfig
from sessa.train.evaluate import primary_metric
from sessa.train.runs import check_writable, finished_summary, guard_folder, start_mode

DEFAULT_LRS = [1e-4, 2e-4, 3e-4, 5e-4, 1e-3]
DEFAULT_MODELS = ["sessa", "attention", "mamba2", "sessa_nofb"]


@dataclass
class SweepConfig:
    """What `sessa sweep` runs: models x lrs x seeds on one task, each a full training run."""

    task: str = "mqar"  # a task of the suite (or any task, with the suite's defaults)
    models: list[str] = field(default_factory=lambda: list(DEFAULT_MODELS))
    lrs: list[float] = field(default_factory=lambda: list(DEFAULT_LRS))
    seeds: list[int] = field(default_factory=lambda: [0])  # the lr is selected on these seeds
    final_seeds: list[int] = field(default_factory=list)  # more seeds run at each model's selected lr only
    suite: str = "quick"  # where steps, batch size, warm-up and task options come from
    preset: str | None = None  # model preset; default from the suite
    steps: int | None = None
    batch_size: int | None = None
    device: str = "auto"
    amp: str = "auto"
    parallel: int = 1  # runs at a time; > 1 runs each as a subprocess (they share the device)
    time_limit_s: float | None = None  # start no new run after this many seconds (the rest: "skipped")
    out_dir: str = "runs/sweep"
    train_overrides: dict[str, Any] = field(default_factory=dict)  # any other TrainConfig field

    def __post_init__(self) -> None:
        check_suite_and_models(self.suite, self.models)
        if not self.models or not self.lrs or not self.seeds:
            raise ValueError("models, lrs and seeds must each name at least one entry")
        for lr in self.lrs:
            if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < math.inf:
                raise ValueError(f"every lr must be a finite number > 0, got {lr!r}")
        all_seeds = [*self.seeds, *self.final_seeds]
        if len(set(self.lrs)) != len(self.lrs) or len(set(all_seeds)) != len(all_seeds):
            raise ValueError(
                f"lrs and seeds must not repeat, got lrs {self.lrs}, seeds {self.seeds}, "
                f"final seeds {self.final_seeds}"
            )
        if isinstance(self.parallel, bool) or not isinstance(self.parallel, int) or self.parallel < 1:
            raise ValueError(f"parallel must be an int >= 1, got {self.parallel!r}")
        if self.time_limit_s is not None and not self.time_limit_s > 0:
            raise ValueError(f"time_limit_s must be > 0 or None, got {self.time_limit_s!r}")
        if "lr" in self.train_overrides or "seed" in self.train_overrides:
            raise ValueError("lr and seed are swept: give them with --lrs / --seeds, not as overrides")

    def run_config(self, model: str, lr: float, seed: int) -> TrainConfig:
        out = Path(self.out_dir) / self.task / model / f"lr{lr:g}-seed{seed}"
        overrides = {**self.train_overrides, "lr": lr}
        for name in ("steps", "batch_size"):
            if getattr(self, name) is not None:
                overrides[name] = getattr(self, name)
        return suite_run_config(
            self.suite,
            self.task,
            model,
            seed,
            preset=self.preset,
            device=self.device,
            amp=self.amp,
            out_dir=str(out),
            overrides=overrides,
        )

    def plan(self) -> list[TrainConfig]:
        """Every run, seeds outermost: with a time limit, the first seed of every (model, lr) comes first."""
        return [self.run_config(m, lr, s) for s in self.seeds for m in self.models for lr in self.lrs]

    def final_plan(self, picks: dict[str, dict[str, Any]]) -> list[TrainConfig]:
        """The final seeds of every model that has a selected lr, at that lr."""
        chosen = [(m, p["lr"]) for m, p in picks.items() if p["lr"] is not None]
        return [self.run_config(m, lr, s) for s in self.final_seeds for m, lr in chosen]


def sweep(cfg: SweepConfig, *, resume: bool = False, overwrite: bool = False, log=print) -> dict[str, Any]:  # noqa: ANN001
    """Run every planned run, select each model's lr, write results.json/results.md/plots.

    A non-empty ``out_dir/<task>`` needs ``resume`` (finished runs are reused, interrupted ones resumed from
    their checkpoints) or ``overwrite`` (the sweep's own runs and results are deleted first)."""
    out = Path(cfg.out_dir) / cfg.task
    owned = [
        out / name
        for name in ("results.json", "results.md", "sweep_config.json", "valid_vs_lr.png", "curves.png")
    ] + [out / m for m in cfg.models]
    check_writable(out)
    guard_folder(out, owned, resume, overwrite, "a sweep")
    (out / "sweep_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    plan = cfg.plan()
    start = time.perf_counter()
    deadline = None if cfg.time_limit_s is None else time.monotonic() + cfg.time_limit_s

    def write(runs: list[dict[str, Any]], picks: dict[str, Any], final: bool) -> dict[str, Any]:
        result = {
            "config": dataclasses.asdict(cfg),
            "complete": final,
            "runs": runs,
            "selected": picks,
            "total_wall_time_s": time.perf_counter() - start,
        }
        (out / "results.json").write_text(json.dumps(result, indent=2, default=str))
        (out / "results.md").write_text(render_markdown(result))
        return result

    def partial(done: dict[str, dict[str, Any] | None]) -> None:
        runs = [run_row(c, done.get(c.out_dir)) for c in plan]
        write(runs, select(runs), final=False)

    summaries = _execute(plan, cfg, deadline, log, partial)
    runs = [run_row(c, summaries.get(c.out_dir)) for c in plan]
    picks = select(runs)
    if cfg.final_seeds:
        finals = cfg.final_plan(picks)
        summaries = _execute(finals, cfg, deadline, log, lambda done: None)
        runs += [{**run_row(c, summaries.get(c.out_dir)), "final": True} for c in finals]
        picks = confirm(picks, runs)
    result = write(runs, picks, final=True)
    plots = [plot_valid_vs_lr(runs, out / "valid_vs_lr.png"), plot_curves(runs, picks, out / "curves.png")]
    log(render_markdown(result))
    if any(plots):
        log("plots: " + ", ".join(str(p) for p in plots if p))
    return result


def _execute(  # noqa: ANN001
    plan: list[TrainConfig], cfg: SweepConfig, deadline: float | None, log, on_done
) -> dict[str, dict[str, Any] | None]:
    results: dict[str, dict[str, Any] | None] = {}
    todo = []
    for run in plan:
        summary = finished_summary(run)
        if summary is not None:
            results[run.out_dir] = summary
        else:
            todo.append(run)
    if len(todo) < len(plan):
        log(f"reusing {len(plan) - len(todo)} finished run(s) from {cfg.out_dir}")
    progress = Progress(len(todo), f"sweep {cfg.task}")
    runner = _run_inline if cfg.parallel == 1 else _run_subprocesses
    try:
        runner(todo, results, cfg.parallel, deadline, progress, log, on_done)
    finally:
        progress.close()
    return results


def _describe(run: TrainConfig) -> str:
    return f"{run.task} {run.model} lr={run.lr:g} seed={run.seed}"


def _finished(  # noqa: ANN001
    run: TrainConfig, results: dict, progress: Progress, t0: float, log, on_done, extra: str = ""
) -> None:
    results[run.out_dir] = _read_summary(run)
    progress.update(1)
    log(
        f"[{progress.done}/{progress.total}] {_describe(run)}: {_outcome(run, results[run.out_dir])} "
        f"({time.perf_counter() - t0:.0f} s{extra}; {progress.eta_text()})"
    )
    on_done(results)


def _run_inline(todo, results, parallel, deadline, progress, log, on_done) -> None:  # noqa: ANN001
    from sessa.train.trainer import TrainingDiverged, train

    for i, run in enumerate(todo):
        if deadline is not None and time.monotonic() > deadline:
            log(f"time limit reached: {len(todo) - i} run(s) not started")
            return
        t0, mode = time.perf_counter(), start_mode(run)
        try:
            train(run, quiet=True, resume=mode == "resume", overwrite=mode == "fresh")
        except TrainingDiverged:
            pass  # its summary.json says "diverged"
        _finished(run, results, progress, t0, log, on_done)


def _run_subprocesses(todo, results, parallel, deadline, progress, log, on_done) -> None:  # noqa: ANN001
    queue, running = list(todo), []
    env = {**os.environ}
    env.setdefault("OMP_NUM_THREADS", "1")  # parallel runs: one CPU thread each, or they oversubscribe
    try:
        while queue or running:
            while queue and len(running) < parallel and (deadline is None or time.monotonic() < deadline):
                run = queue.pop(0)
                running.append((_launch(run, env), run, time.perf_counter()))
            if queue and not running:  # the deadline passed with nothing in flight
                log(f"time limit reached: {len(queue)} run(s) not started")
                return
            time.sleep(0.5)
            for item in [r for r in running if r[0].poll() is not None]:
                running.remove(item)
                proc, run, t0 = item
                _finished(run, results, progress, t0, log, on_done, f", exit {proc.returncode}")
    except KeyboardInterrupt:  # the runs got the signal too: let them save their checkpoints
        for proc, _, _ in running:
            proc.wait()
        raise


def _launch(run: TrainConfig, env: dict[str, str]) -> subprocess.Popen:
    folder = Path(run.out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    request = folder / "request.json"
    request.write_text(json.dumps(run.to_dict(), indent=2, default=str))
    mode = "--resume" if start_mode(run) == "resume" else "--overwrite"
    with (folder / "log.txt").open("a") as fh:
        cmd = [sys.executable, "-m", "sessa", "train", "--config", str(request), mode]
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)


def _read_summary(run: TrainConfig) -> dict[str, Any] | None:
    path = Path(run.out_dir) / "summary.json"
    return json.loads(path.read_text()) if path.exists() else None


def _outcome(run: TrainConfig, summary: dict[str, Any] | None) -> str:
    if summary is None:
        return "failed (no summary; see its log.txt)"
    row = run_row(run, summary)
    if row["status"] == "diverged":
        return "diverged (non-finite loss)"
    return f"{row['status']}, valid {row['valid']:.4f}" + (
        f", test {row['test']:.4f}" if row["test"] is not None else ""
    )


# -- selection and reporting --------------------------------------------------------------------------
def run_row(run: TrainConfig, summary: dict[str, Any] | None) -> dict[str, Any]:
    """One row of results.json: the run's settings, its valid/test metric and whether it diverged."""
    row: dict[str, Any] = {
        "task": run.task,
        "model": run.model,
        "seed": run.seed,
        "lr": run.lr,
        "warmup": run.warmup,
        "steps": run.steps,
        "batch_size": run.batch_size,
        "out_dir": run.out_dir,
    }
    if summary is None:
        return {**row, "status": "not run", "diverged": None, "params": None, "valid": None, "test": None}
    final = summary.get("final") or {}
    metrics = {}
    for split in ("valid", "test"):
        if split in final:
            name, value, higher = primary_metric(summary["metric"], final[split])
            metrics[split] = value
            row.update(metric=name, higher_is_better=higher)
    status = summary.get("status", "ok")
    return {
        **row,
        "status": status,
        "diverged": status != "ok",
        "params": summary.get("params"),
        "valid": metrics.get("valid"),
        "test": metrics.get("test"),
        "tokens_per_s": summary.get("tokens_per_s"),
        "train_time_s": summary.get("train_time_s"),
        "health_warnings": [w["message"] for w in summary.get("health", {}).get("warnings", [])],
    }


def select(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per model: the lr with the best mean validation metric among lrs whose every seed ran healthily."""
    picks: dict[str, dict[str, Any]] = {}
    for model in dict.fromkeys(r["model"] for r in runs):
        by_lr: dict[float, list[dict[str, Any]]] = {}
        for r in runs:
            if r["model"] == model:
                by_lr.setdefault(r["lr"], []).append(r)
        eligible = {
            lr: rows
            for lr, rows in by_lr.items()
            if all(r["status"] == "ok" and r["valid"] is not None for r in rows)
        }
        if not eligible:
            statuses = sorted({r["status"] for rows in by_lr.values() for r in rows})
            picks[model] = {"lr": None, "reason": f"no lr ran healthily on every seed (statuses: {statuses})"}
            continue
        higher = next(iter(eligible.values()))[0]["higher_is_better"]
        score = {lr: statistics.fmean(r["valid"] for r in rows) for lr, rows in eligible.items()}
        lr = (max if higher else min)(score, key=lambda k: score[k])
        rows = eligible[lr]
        tests = [r["test"] for r in rows if r["test"] is not None]
        picks[model] = {
            "lr": lr,
            "metric": rows[0]["metric"],
            "higher_is_better": higher,
            "valid_mean": score[lr],
            "test_mean": statistics.fmean(tests) if tests else None,
            "test_std": statistics.stdev(tests) if len(tests) > 1 else 0.0 if tests else None,
            "seeds": len(rows),
            "params": rows[0]["params"],
            "tokens_per_s": statistics.fmean(r["tokens_per_s"] for r in rows),
        }
    return picks


def confirm(picks: dict[str, dict[str, Any]], runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Test statistics at each selected lr over every seed run there (selection seeds + final seeds).

    Runs of a final seed that diverged are counted in ``unhealthy_seeds``, never dropped silently."""
    out = {}
    for model, pick in picks.items():
        if pick["lr"] is None:
            out[model] = pick
            continue
        rows = [r for r in runs if r["model"] == model and r["lr"] == pick["lr"]]
        tests = [r["test"] for r in rows if r["status"] == "ok" and r["test"] is not None]
        out[model] = {
            **pick,
            "test_mean": statistics.fmean(tests) if tests else None,
            "test_std": statistics.stdev(tests) if len(tests) > 1 else 0.0 if tests else None,
            "seeds": len(tests),
            "unhealthy_seeds": sum(r["status"] != "ok" for r in rows),
            "tokens_per_s": statistics.fmean(r["tokens_per_s"] for r in rows if r.get("tokens_per_s")),
        }
    return out


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def render_markdown(result: dict[str, Any]) -> str:
    picks, runs = result["selected"], result["runs"]
    task = result["config"]["task"]
    lines = [
        f"## {task}: lr picked on validation, test at that lr (mean ± std over seeds)",
        "",
        "| model | picked lr | valid | test | seeds | params | tokens/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for model, p in picks.items():
        if p["lr"] is None:
            lines.append(f"| {model} | none | – | – | – | – | – ({p['reason']}) |")
            continue
        test = "–" if p["test_mean"] is None else f"{p['test_mean']:.4f} ± {p['test_std']:.4f}"
        lines.append(
            f"| {model} | {p['lr']:g} | {p['valid_mean']:.4f} | {test} | {p['seeds']} | {p['params']:,} | "
            f"{p['tokens_per_s']:,.0f} |"
        )
    lines += [
        "",
        "Every run (valid / test; diverged and unhealthy runs are never picked):",
        "",
        "| model | lr | seed | valid | test | status |",
        "|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r['model']} | {r['lr']:g} | {r['seed']} | {_fmt(r['valid'])} | {_fmt(r['test'])} | "
            f"{r['status']} |"
        )
    train = sum(r.get("train_time_s") or 0.0 for r in runs)
    wall = result.get("total_wall_time_s")
    lines.append(
        f"\nTraining time summed over runs: {train / 60:.1f} min"
        + ("" if wall is None else f"; wall time of the last invocation: {wall / 60:.1f} min")
        + " (runs of earlier invocations are reused on --resume)."
    )
    return "\n".join(lines) + "\n"


def plot_valid_vs_lr(runs: list[dict[str, Any]], path: Path) -> Path | None:
    """Validation metric vs lr per model (mean over seeds, bars = min..max); diverged lrs marked with x."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    metric = next((r["metric"] for r in runs if r.get("metric")), "metric")
    for model in dict.fromkeys(r["model"] for r in runs):
        rows = [r for r in runs if r["model"] == model]
        lrs = sorted({r["lr"] for r in rows})
        healthy = [r for r in rows if r["status"] == "ok" and r["valid"] is not None]
        ok = {lr: [r["valid"] for r in healthy if r["lr"] == lr] for lr in lrs}
        xs = [lr for lr in lrs if ok[lr]]
        means = [statistics.fmean(ok[lr]) for lr in xs]
        low = [m - min(ok[lr]) for m, lr in zip(means, xs, strict=True)]
        high = [max(ok[lr]) - m for m, lr in zip(means, xs, strict=True)]
        line = ax.errorbar(xs, means, yerr=[low, high], marker="o", capsize=3, label=model)
        bad = sorted({r["lr"] for r in rows if r["status"] in ("diverged", "unhealthy")})
        if bad:
            bottom = min((v for r in runs for v in [r["valid"]] if v is not None), default=0.0)
            ax.scatter(bad, [bottom] * len(bad), marker="x", s=60, color=line[0].get_color())
    ax.set_xscale("log")
    title = "lr sweep (x: diverged / unhealthy runs)"
    ax.set(xlabel="peak learning rate", ylabel=f"validation {metric}", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _eval_curve(run_dir: str, split: str) -> dict[int, float]:
    """{step: metric} of the periodic evaluations of ``split`` in a run's metrics.csv."""
    path = Path(run_dir) / "metrics.csv"
    if not path.exists():
        return {}
    with path.open() as fh:
        return {int(r["step"]): float(r["value"]) for r in csv.DictReader(fh) if r.get("split") == split}


def plot_curves(runs: list[dict[str, Any]], picks: dict[str, dict[str, Any]], path: Path) -> Path | None:
    """Validation and test metric vs step at each model's selected lr (mean over seeds, band = min..max)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, split in zip(axes, ("valid", "test"), strict=True):
        for model, pick in picks.items():
            curves = [
                _eval_curve(r["out_dir"], split)
                for r in runs
                if r["model"] == model and r["lr"] == pick.get("lr") and r["status"] == "ok"
            ]
            steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
            if not steps:
                continue
            values = [[c[s] for c in curves] for s in steps]
            label = f"{model} (lr {pick['lr']:g})"
            ax.plot(steps, [statistics.fmean(v) for v in values], marker="o", label=label)
            ax.fill_between(steps, [min(v) for v in values], [max(v) for v in values], alpha=0.2)
        metric = next((r["metric"] for r in runs if r.get("metric")), "metric")
        ax.set(xlabel="training step", ylabel=metric, title=f"{split} (mean over seeds; band min..max)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
