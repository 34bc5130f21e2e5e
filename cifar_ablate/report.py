"""The sweep summary: one row per run from each run's metrics.json, as summary.csv and summary.md.

    python -m cifar_ablate.report <sweep dir>

Hydra runs it when a sweep ends (the SweepSummary callback). Runs without a metrics.json (still running
or killed) are listed as "missing", never dropped.
"""
import argparse
import csv
import json
import sys
from pathlib import Path

from hydra.experimental.callback import Callback

COLUMNS = ("run", "status", "test_acc", "best_val_acc", "epochs", "train_seconds")


def run_dirs(sweep_dir: Path) -> list[Path]:
    """Every run of a sweep: the sub-folders Hydra gave a .hydra config."""
    return sorted(p.parent for p in Path(sweep_dir).glob("*/.hydra"))


def collect_runs(sweep_dir: Path) -> list[dict]:
    rows = []
    for run_dir in run_dirs(sweep_dir):
        path = run_dir / "metrics.json"
        metrics = json.loads(path.read_text()) if path.exists() else {"status": "missing"}
        rows.append({"run": run_dir.name, **metrics})
    return sorted(rows, key=lambda r: (r.get("job_num", 1 << 30), r["run"]))


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)


def markdown_table(rows: list[dict], columns=COLUMNS) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_summary(sweep_dir) -> tuple[list[dict], str]:
    """Write summary.csv and summary.md into the sweep dir; return the rows and the markdown table."""
    sweep_dir = Path(sweep_dir)
    rows = collect_runs(sweep_dir)
    with open(sweep_dir / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({c: r.get(c) for c in COLUMNS} for r in rows)
    table = markdown_table(rows)
    (sweep_dir / "summary.md").write_text(f"# Sweep {sweep_dir}\n\n{table}\n")
    return rows, table


def unfinished(rows: list[dict]) -> list[dict]:
    """Runs that are not results: failed, or missing their metrics. Diverged runs are results."""
    return [r for r in rows if r.get("status") not in ("completed", "diverged")]


class SweepSummary(Callback):
    """Hydra callback: writes and prints the summary when a multirun ends; exit 1 if a run did not finish."""

    def on_multirun_end(self, config, **kwargs):
        rows, table = write_summary(config.hydra.sweep.dir)
        print(f"\nSweep summary ({config.hydra.sweep.dir}/summary.md):\n{table}", flush=True)
        bad = unfinished(rows)
        if bad:
            print(f"error: {len(bad)} of {len(rows)} runs did not complete: "
                  + ", ".join(f"{r['run']} ({r['status']})" for r in bad), file=sys.stderr)
            sys.exit(1)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m cifar_ablate.report", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path)
    args = parser.parse_args(argv)
    if not run_dirs(args.sweep_dir):
        sys.exit(f"error: {args.sweep_dir}: no runs here (expected sub-folders with a .hydra/ config)")
    rows, table = write_summary(args.sweep_dir)
    print(table)
    sys.exit(1 if unfinished(rows) else 0)


if __name__ == "__main__":
    main()
