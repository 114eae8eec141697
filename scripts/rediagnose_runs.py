"""Re-diagnose finished runs with the current training-health rule (sessa.train.health.replay).

The rule is a pure function of each run's metrics.csv (health rows and training losses), so a run made
under an earlier rule gets the status it would get today without retraining. Rewrites the "status" and
"health" fields of every summary.json under the given folders (a NaN run keeps "diverged").
Usage: python scripts/rediagnose_runs.py runs/paper
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from sessa.train.health import replay


def main(folders: list[str]) -> None:
    for folder in folders:
        for path in sorted(Path(folder).rglob("summary.json")):
            metrics = path.with_name("metrics.csv")
            summary = json.loads(path.read_text())
            if not metrics.exists() or summary.get("status") == "diverged":
                continue
            state = replay(list(csv.DictReader(metrics.open())))
            old = summary.get("status")
            summary["status"] = "unhealthy" if state.active else "ok"
            health = {"warnings": state.warnings, "active": state.active}
            summary["health"] = {**summary.get("health", {}), **health}
            path.write_text(json.dumps(summary, indent=2, default=str))
            if old != summary["status"]:
                print(f"{path.parent}: {old} -> {summary['status']}")


if __name__ == "__main__":
    main(sys.argv[1:])
