"""The sweep report: which variant is better, by how much, and whether that is more than seed noise.

    python -m cifar_ablate.report <sweep dir>

Hydra runs it when a sweep ends (the SweepSummary callback). It reads only what the runs wrote
(metrics.json, .hydra/, and their TensorBoard or CSV logs), so it also works on a sweep dir copied
elsewhere. Writes into the sweep dir:

- summary.md / summary.csv: one row per variant (runs that differ only in `seed`, each seed counted once); with
  several seeds, mean ± std and n, and Welch's t-test of each variant's test accuracy against the baseline's, the
  verdict on Holm's adjustment of those p-values (several variants, one study);
- runs.csv: one row per run, failed, unfinished (no metrics.json yet) and unreadable runs included;
- val_acc.png, train_loss.png: per-epoch curves, one line per variant (mean, band = ± 1 std over seeds);
- curves.csv: the numbers those figures draw, and validation loss, per variant and epoch (mean, std, n);
  summary.md's "Curves" table reads them: each variant's peak validation accuracy and its epoch, the
  lowest validation loss and its epoch, and the last values (a peak well before the last epoch is overfitting);
- test_acc.png: final test accuracy per variant with ± 1 std error bars.
"""
import argparse
import contextlib
import csv
import logging
import math
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Optional

from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

from cifar_ablate.errors import ConfigError, exit_with_error
from cifar_ablate.run_record import RESULT_STATUSES, read_metrics

RUN_COLUMNS = ("run", "status", "seed", "test_acc", "best_val_acc", "test_loss", "epochs", "train_seconds")
ALPHA = 0.05
# The per-epoch values the report reads from each run's log, and their names in curves.csv.
CURVE_TAGS = {"val/acc": "val_acc", "val/loss": "val_loss", "train/loss_epoch": "train_loss"}
# Overlays every run of a sweep per metric in TensorBoard's Custom Scalars tab (written by each run).
CUSTOM_SCALARS_LAYOUT = {"cifar_ablate": {
    "loss": ["Multiline", [r"train/loss_epoch", r"val/loss"]],
    "accuracy": ["Multiline", [r"train/acc_epoch", r"val/acc$"]],
    "learning rate": ["Multiline", [r"lr-.*"]],
}}


def run_dirs(sweep_dir: Path) -> list[Path]:
    """Every run of a sweep: the sub-folders Hydra gave a .hydra config."""
    return sorted(p.parent for p in Path(sweep_dir).glob("*/.hydra"))


# Set for every job of a sweep by SweepSummary, so that the sweep's end knows which runs in its dir it launched.
LAUNCH_KEY = "CIFAR_ABLATE_LAUNCH"
# Set by SweepSummary in the sweep's process, for the trials a launcher starts from it: a trial whose parent it is
# (a joblib worker) stops when that process is gone (killed), instead of training on unseen, its sweep's other runs
# never launched.
SWEEP_PID_ENV = "CIFAR_ABLATE_SWEEP_PID"


def _job_num(hydra_record, metrics: dict) -> int:
    """The run's place in its sweep (the first variant is the default baseline): Hydra's record of the latest
    launch, also for runs a rerun skipped; where a single run into the dir (`hydra.run.dir=<it>`) has replaced
    that record, the place its metrics.json keeps."""
    num = OmegaConf.select(hydra_record, "hydra.job.num", default=None) if hydra_record is not None else None
    num = num if isinstance(num, int) else metrics.get("job_num")
    return num if isinstance(num, int) else 1 << 30


def collect_runs(sweep_dir: Path) -> list[dict]:
    rows = []
    for run_dir in run_dirs(sweep_dir):
        metrics = read_metrics(run_dir) or {"status": "unfinished"}
        hydra_yaml = run_dir / ".hydra" / "hydra.yaml"
        hydra_record = OmegaConf.load(hydra_yaml) if hydra_yaml.exists() else None
        launch = hydra_record and OmegaConf.select(hydra_record, f"hydra.job.env_set.{LAUNCH_KEY}", default=None)
        rows.append({"run": run_dir.name, "variant": variant_of(run_dir.name), **metrics,
                     "job_num": _job_num(hydra_record, metrics), "launch": launch,
                     "mode": hydra_record and OmegaConf.select(hydra_record, "hydra.mode", default=None)})
    if single_runs(sweep_dir, rows):
        names = single_run_names(sweep_dir)
        for r in rows:
            r["variant"] = variant_of(names.get(r["run"], r["run"]))
    rows.sort(key=lambda r: (r["job_num"], r["run"]))
    merge_same_configs(sweep_dir, rows)
    mark_repeated_seeds(rows)
    return rows


def _computed_config(run_dir: Path) -> Optional[str]:
    """What the run computed, its seed aside (run_config.json as of its first start), as one comparable string;
    None for a run without the file (it predates it, or was refused before training)."""
    import json

    from cifar_ablate.run_record import CHOICES_KEY, OVERRIDES_KEY, RUN_CONFIG
    try:
        saved = json.loads((run_dir / RUN_CONFIG).read_text())
    except (OSError, ValueError):
        return None
    for key in (CHOICES_KEY, OVERRIDES_KEY, "seed"):
        saved.pop(key, None)
    return json.dumps(saved, sort_keys=True)


def merge_same_configs(sweep_dir: Path, runs: list[dict]) -> None:
    """Runs named as different variants that computed the same config are one variant, the first's (in the report's
    order). Names leave out what every run of a command shares: a sweep rerun into its dir with one axis narrowed to
    a value (lr_range's optimizer.lr=0.01 with seed=0,1,2) names its runs `seed=N`, beside the first command's
    `optimizer.lr=0.01`; as two rows one would be the other's baseline, and seed 0, trained twice, counted twice.
    Such a run keeps its name in `named`."""
    first: dict[str, str] = {}
    for r in runs:
        config = _computed_config(sweep_dir / r["run"])
        if config is None:
            continue
        variant = first.setdefault(config, r["variant"])
        if variant != r["variant"]:
            r["named"], r["variant"] = r["variant"], variant


def single_runs(sweep_dir: Path, runs: list[dict]) -> bool:
    """A folder of single runs (a day's outputs/runs/<date>), not a sweep's: no plan, and every run's record says
    it ran alone with no place in a sweep. Their dirs are named by the time they started, which says nothing of
    what they compare."""
    return bool(runs) and not (sweep_dir / "multirun.yaml").exists() and all(
        r["mode"] == "RUN" and r["job_num"] == 1 << 30 for r in runs)


def single_run_names(sweep_dir: Path) -> dict[str, str]:
    """Each single run's name as a sweep would give it: the overrides it was given that not every run here was
    (sorted, joined by ','; where and how it ran left out), so runs that differ only in seed are one variant."""
    shared = set(shared_overrides(sweep_dir))
    from cifar_ablate.config import where_and_how_keys
    ignored = where_and_how_keys() | {"baseline"}
    names = {}
    for run_dir in run_dirs(sweep_dir):
        path = run_dir / ".hydra" / "overrides.yaml"
        if path.exists():  # else it keeps its dir's name
            names[run_dir.name] = ",".join(sorted(o for o in OmegaConf.load(path)
                                                  if o not in shared and override_key(o) not in ignored))
    return names


def mark_repeated_seeds(runs: list[dict]) -> None:
    """A variant's seed counts once. A result with the variant and seed of one listed before it (the report's order:
    job number, then name) gets `repeats`, that run's name, and is left out of the statistics and curves: rerunning a one-seed sweep into its dir with
    `seed=0,1,2` trains seed 0 again as `...,seed=0` beside the old run, and counting both would inflate n
    with a copy (on the CPU an exact one) and shrink the spread the test reads."""
    first: dict[tuple, str] = {}
    for r in runs:
        if r.get("status") not in RESULT_STATUSES or r.get("seed") is None:
            continue
        key = (r["variant"], r["seed"])
        if key in first:
            r["repeats"] = first[key]
        else:
            first[key] = r["run"]


def counted(run: dict) -> bool:
    """A result that the statistics and curves count: completed or diverged, and not a repeated seed."""
    return run.get("status") in RESULT_STATUSES and not run.get("repeats")


def name_items(run_name: str) -> list[str]:
    """`model=lenet,seed=1` → ["model=lenet", "seed=1"] (a comma inside a value stays in it)."""
    return re.split(r",(?=[+~]*[\w./-]+=)", run_name)


def variant_of(run_name: str) -> str:
    """The run's name without its seed: runs of one variant differ only in seed."""
    kept = [item for item in name_items(run_name) if not re.fullmatch(r"[+~]*seed=.*", item)]
    return ",".join(kept) or "default"


def _same_value(value: str) -> str:
    """A value as Hydra names runs with it: true as True, 1e-3 as 0.001."""
    if value in ("true", "false"):
        return value.title()
    try:
        return repr(float(value)) if re.fullmatch(r"[-+]?[\d.]+(e[-+]?\d+)?", value, re.IGNORECASE) else value
    except ValueError:
        return value


def _unordered(run_name: str) -> list[str]:
    items = [item.split("=", 1) for item in name_items(run_name)]
    return sorted(f"{kv[0]}={_same_value(kv[1])}" if len(kv) == 2 else kv[0] for kv in items)


def _mean_std(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n if n else math.nan
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan
    return mean, std


def welch_p(a: list[float], b: list[float]) -> float:
    """Two-sided p-value of Welch's t-test (unequal variances); NaN when it cannot be computed."""
    from scipy.stats import ttest_ind

    if len(a) < 2 or len(b) < 2 or (len(set(a)) == 1 and len(set(b)) == 1):
        return math.nan
    with warnings.catch_warnings():  # scipy's "precision loss" when one side has no spread (all at chance)
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(ttest_ind(a, b, equal_var=False).pvalue)


def holm(p_values: dict[str, float]) -> dict[str, float]:
    """Holm's step-down adjustment of a study's p-values (NaN ones are left out and stay NaN).

    Testing each of m variants at 5% lets the chance of some false "yes" grow with m (23% for five
    independent comparisons, as many as lr_range makes); a verdict on the adjusted values keeps it at or
    below 5% for the whole study, whatever the comparisons' dependence.
    """
    tested = sorted((p, name) for name, p in p_values.items() if not math.isnan(p))
    adjusted, running = {name: math.nan for name in p_values}, 0.0
    for i, (p, name) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - i) * p))  # adjusted values never decrease with p
        adjusted[name] = running
    return adjusted


def matching_variant(baseline: str, variants: list[str]) -> str:
    """The variant `baseline` names, as typed: Hydra names runs with sorted keys and Python's True/False, so
    data.normalize=true,augment=none is augment=none,data.normalize=True. ConfigError when it names none."""
    if baseline in variants:
        return baseline
    same = [v for v in dict.fromkeys(variants) if _unordered(v) == _unordered(str(baseline))]
    if len(same) != 1:
        raise ConfigError(f"baseline={baseline}: no variant of this sweep has that name "
                          f"(its variants: {', '.join(dict.fromkeys(variants))})", keys=("baseline",))
    return same[0]


def variant_rows(runs: list[dict], baseline: Optional[str], search: bool = False) -> list[dict]:
    """One row per variant, compared with the baseline (the first variant with a result unless named); for a `search` (trials a
    sweeper such as Optuna drew) no baseline and no test, the rows ranked by the objective, best_val_acc."""
    variants: dict[str, list[dict]] = {}
    for r in runs:
        variants.setdefault(r["variant"], []).append(r)
    accuracy = {v: [r["test_acc"] for r in rs if counted(r) and r.get("test_acc") is not None]
                for v, rs in variants.items()}
    if search:
        baseline = None
    elif baseline is None:  # the first with a result: a failed first variant (lr=-1) would leave nothing tested
        baseline = next((v for v in variants if accuracy[v]), next(iter(variants), None))
    else:
        baseline = matching_variant(baseline, list(variants))
    p_values = {v: math.nan if search or v == baseline else welch_p(accuracy[v], accuracy[baseline])
                for v in variants}
    adjusted = holm(p_values)
    rows = []
    for variant, rs in variants.items():
        results = [r for r in rs if counted(r)]
        test_mean, test_std = _mean_std(accuracy[variant])
        val_mean, val_std = _mean_std([r["best_val_acc"] for r in results if r.get("best_val_acc") is not None])
        p, p_holm = p_values[variant], adjusted[variant]
        statuses = sorted({r["status"] for r in rs})
        job = min(r["job_num"] for r in rs) if all("job_num" in r for r in rs) else None
        rows.append({
            "variant": variant, "baseline": variant == baseline, "n": len(accuracy[variant]), "runs": len(rs),
            "status": "/".join(statuses),
            "diverged": sum(r["status"] == "diverged" and r.get("test_acc") is not None for r in results),  # among n
            "test_acc_mean": test_mean, "test_acc_std": test_std,
            "best_val_acc_mean": val_mean, "best_val_acc_std": val_std,
            "delta_vs_baseline": math.nan if search else test_mean - _mean_std(accuracy[baseline])[0],
            "p_value": p, "p_holm": p_holm, "differs": (p_holm < ALPHA) if not math.isnan(p_holm) else None,
            "epochs_mean": _mean_std([r["epochs"] for r in results])[0],
            "train_seconds_mean": _mean_std([r["train_seconds"] for r in results])[0],
            "job": job if job is not None and job < 1 << 30 else None,  # Hydra's job number (last: csv columns)
        })
    if search:  # best first; last the trials the sweeper got no value from (run.py's objective: failed, diverged)
        def rank(v):
            valued = v["status"] == "completed" and not math.isnan(v["best_val_acc_mean"])
            return (0, -v["best_val_acc_mean"]) if valued else (1, 0.0)
        rows.sort(key=rank)
    return rows


def _fmt(value, digits=4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float) and abs(value) >= 1e6:  # a loss on its way to diverging
        return f"{value:.3e}"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _fmt_p(p: float) -> str:
    """A p-value to 3 places; one that rounds to 0 as "< 0.001" (a p-value is never 0)."""
    return "< 0.001" if isinstance(p, float) and p < 0.0005 else _fmt(p, 3)


def _pm(mean, std) -> str:
    return _fmt(mean) if math.isnan(std) else f"{_fmt(mean)} ± {_fmt(std)}"


def summary_markdown(sweep_dir: Path, variants: list[dict], runs: list[dict], note: Optional[str] = None,
                     readings: Optional[list[dict]] = None, seeds_planned: int = 1,
                     search: Optional[str] = None, single: bool = False) -> str:
    """`search`: the sweeper (e.g. OptunaSweeper) whose trials these are, ranked by the objective, not tested;
    `single`: the runs are single runs, not a sweep's (their variants named by their overrides)."""
    # Several seeds run or planned: a sweep whose runs failed or have not started is no one-seed study.
    multi_seed = seeds_planned > 1 or any(v["runs"] > 1 for v in variants)
    title = f"# {'Single runs in' if single else 'Sweep'} {sweep_dir.name}"
    lines = [title, ""] + ([f"Note: {note}", ""] if note else [])
    settings = shared_overrides(sweep_dir)
    if settings:
        lines += ["Given to every run: " + " ".join(f"`{o}`" for o in settings), ""]
    if search:
        lines += ["| rank | job | values | status | best_val_acc (objective) | test_acc | epochs | train s |",
                  "|" + "---|" * 8]
        labels = figure_labels([v["variant"] for v in variants])
        for rank, v in enumerate(variants, 1):
            lines.append(f"| {rank} | {_fmt(v['job'])} | {labels[v['variant']]} | {v['status']} "
                         f"| {_pm(v['best_val_acc_mean'], v['best_val_acc_std'])} "
                         f"| {_pm(v['test_acc_mean'], v['test_acc_std'])} | {_fmt(v['epochs_mean'], 0)} "
                         f"| {_fmt(v['train_seconds_mean'], 1)} |")
        lines += ["", f"A search ({search}): each trial is one run of the values the sweeper drew (shown to 3 "
                      "significant digits; the Runs table below names each run dir; job: the order Hydra launched "
                      "them in), ranked by the objective it maximized, the best validation accuracy (a failed or "
                      "diverged trial gave it none and comes last). Trials are not tested against each other: the best "
                      f"of {len(variants)} picked on validation overstates what its values give, and one seed shows "
                      "nothing of the seed spread. Before calling the best values better, rerun them with "
                      "`seed=0,1,2` beside the values you compare them with, as a sweep (its report tests them)."]
    elif multi_seed:
        lines += ["| variant | status | n | test_acc (mean ± std) | best_val_acc (mean ± std) "
                  "| Δ test_acc vs baseline | p (Welch) | p (Holm) | differs at 95%? | epochs | train s |",
                  "|" + "---|" * 11]
        for v in variants:
            verdict = ("baseline" if v["baseline"] else
                       "untested (n < 2 or no spread)" if v["differs"] is None else "yes" if v["differs"] else "no")
            status = v["status"] + (f" ({v['diverged']} of {v['n']} diverged)" if v["diverged"] else "")
            lines.append(f"| {v['variant']} | {status} | {v['n']} | {_pm(v['test_acc_mean'], v['test_acc_std'])} "
                         f"| {_pm(v['best_val_acc_mean'], v['best_val_acc_std'])} "
                         f"| {'' if v['baseline'] else _fmt(v['delta_vs_baseline'])} | {_fmt_p(v['p_value'])} "
                         f"| {_fmt_p(v['p_holm'])} | {verdict} | {_fmt(v['epochs_mean'], 1)} "
                         f"| {_fmt(v['train_seconds_mean'], 1)} |")
        lines += ["", "test_acc: each run's model after its last epoch, on the test set; best_val_acc: each run's "
                      "best validation epoch. Mean ± sample std (n − 1) over a variant's seeds with a result (n); "
                      "a diverged run's accuracy counts in them and in the test."]
        tested = sum(not math.isnan(v["p_value"]) for v in variants)
        if not tested:
            lines += ["", "Nothing is tested: Welch's t-test needs at least 2 seeds with a result in both a variant "
                          "and the baseline, and a spread in at least one of them. The differences shown may be seed noise."]
        else:
            lines += ["", f"Test: Welch's two-sided t-test of each variant's test accuracies against the baseline's "
                          f"over seeds. \"yes\" when Holm's adjusted p < {ALPHA}: with {tested} variant"
                          f"{'s' if tested != 1 else ''} tested against the baseline, this keeps the chance of any "
                          f"false \"yes\" in the study at or below {ALPHA:.0%} (with one, Holm's p is Welch's). With few "
                          "seeds the test has little power: \"no\" means the difference is not shown to exceed seed "
                          "noise, not that there is none."]
    else:
        lines += ["| variant | status | test_acc | best_val_acc | Δ test_acc vs baseline | epochs | train s |",
                  "|" + "---|" * 7]
        for v in variants:
            lines.append(f"| {v['variant']} | {v['status']} | {_fmt(v['test_acc_mean'])} "
                         f"| {_fmt(v['best_val_acc_mean'])} | {'baseline' if v['baseline'] else _fmt(v['delta_vs_baseline'])} "
                         f"| {_fmt(v['epochs_mean'], 0)} | {_fmt(v['train_seconds_mean'], 1)} |")
        lines += ["", "One seed per variant: differences are not tested and may be seed noise. "
                      "Add `seed=0,1,2` to the sweep for mean ± std and a significance test."]
    not_results = without_result(runs)
    if not_results:
        lines += ["", "Runs without a result: " + ", ".join(
            f"{r['run']} ({r.get('status')}{': ' + r['error'] if r.get('error') else ''})" for r in not_results)]
    merged: dict[tuple, list[str]] = {}
    for r in runs:
        if r.get("named"):
            merged.setdefault((r["named"], r["variant"]), []).append(r["run"])
    if merged:
        lines += ["", "Counted as one variant, as their runs computed the same config (run_config.json, seed aside) "
                      "under other names: " + "; ".join(f"{', '.join(names)} (named {named}) as {variant}"
                                                       for (named, variant), names in merged.items())]
    repeats = [r for r in runs if r.get("repeats")]
    if repeats:
        lines += ["", "Not counted, as a seed counts once per variant: " + ", ".join(
            f"{r['run']} (seed {r['seed']} again, as {r['repeats']})" for r in repeats)]
    if readings:
        lines += ["", "## Curves", "", "Each variant's per-epoch mean over its runs with a result, as the figures "
                  "draw it (every epoch in curves.csv), so its peak can sit below best_val_acc above, the mean of "
                  "each run's own best epoch; a diverged run counts in the epochs where its values are finite. A peak "
                  "well before the last epoch, with the validation loss rising since its lowest, is overfitting.", "",
                  "| variant | val acc: peak (epoch) | val acc: last | val loss: lowest (epoch) | val loss: last "
                  "| train loss: last | epochs |", "|" + "---|" * 7]
        counts = {v["variant"]: v for v in variants}
        for r in readings:
            def at(key):
                return f"{_fmt(r.get(key + '_best'))} ({_fmt(r.get(key + '_best_epoch'))})"
            v = counts.get(r["variant"], {})
            notes = [f"{v['diverged']} of {v['n']} diverged"] if v.get("diverged") else []
            if 0 < r.get("val_acc_last_n", 0) < v.get("n", 0):  # the others stopped logging before the last epoch
                notes.append(f"last epoch over {r['val_acc_last_n']} of {v['n']}")
            name = f"{r['variant']} ({'; '.join(notes)})" if notes else r["variant"]
            lines.append(f"| {name} | {at('val_acc')} | {_fmt(r.get('val_acc_last'))} | {at('val_loss')} "
                         f"| {_fmt(r.get('val_loss_last'))} | {_fmt(r.get('train_loss_last'))} "
                         f"| {_fmt(r.get('train_loss_epochs'))} |")
    columns = ("run", "variant", *RUN_COLUMNS[1:]) if single else RUN_COLUMNS  # a single run's dir: when it began
    lines += ["", "## Runs", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in runs]
    lines += ["", "Figures: val_acc.png, train_loss.png, test_acc.png; per-epoch values: curves.csv"]
    return "\n".join(lines) + "\n"


def _tensorboard_curves(run_dir: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    quiet = logging.getLogger("tensorboard")  # its INFO lines, 3 per run, would flood the end of a sweep
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        events.Reload()
    finally:
        quiet.setLevel(level)
    available = set(events.Tags()["scalars"])
    # Lightning logs the (0-based) epoch beside every write, at the same step: a value's epoch is that of the
    # epoch event at its step written closest in time (a step can carry the end of one epoch and steps of the next).
    epochs: dict[int, list[tuple[float, int]]] = {}
    for e in events.Scalars("epoch") if "epoch" in available else []:
        epochs.setdefault(e.step, []).append((e.wall_time, int(e.value)))
    curves = {}
    for tag in CURVE_TAGS:
        values = events.Scalars(tag) if tag in available else []
        if not epochs:  # not a Lightning log: one value per epoch, in order
            curves[tag] = {i: e.value for i, e in enumerate(values, start=1)}
            continue
        curves[tag] = {}
        for e in values:
            near = epochs.get(e.step)
            if near:
                curves[tag][min(near, key=lambda t: abs(t[0] - e.wall_time))[1] + 1] = e.value
    return curves


def _csv_curves(run_dir: Path) -> dict[str, dict[int, float]]:
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return {tag: {int(float(r["epoch"])) + 1: float(r[tag]) for r in rows if r.get(tag) and r.get("epoch")}
            for tag in CURVE_TAGS}


def read_curves(run_dir: Path) -> dict[str, dict[int, float]]:
    """Each of CURVE_TAGS as {epoch (from 1): value} from the run's own logs: TensorBoard's and metrics.csv,
    both where a resume changed the logger. Keyed by the epoch Lightning logged with each value, so validation
    every few epochs (trainer.check_val_every_n_epoch) lands on the epochs it ran in, not on 1, 2, ..."""
    curves: dict[str, dict[int, float]] = {tag: {} for tag in CURVE_TAGS}
    sources = [(max(p.stat().st_mtime for p in files), read) for files, read in (
        (list(run_dir.glob("events.out.tfevents.*")), _tensorboard_curves),
        ([run_dir / "metrics.csv"] if (run_dir / "metrics.csv").exists() else [], _csv_curves)) if files]
    for _, read in sorted(sources, key=lambda source: source[0]):  # an epoch both logged: the later-written log's
        for tag, values in read(run_dir).items():
            curves[tag].update(values)
    return {tag: dict(sorted(values.items())) for tag, values in curves.items()}


def _by_epoch(curve) -> dict[int, float]:
    """A run's curve as {epoch: value}; a plain list holds epochs 1, 2, ..."""
    return curve if isinstance(curve, dict) else dict(enumerate(curve, start=1))


def mean_curve(curves: list) -> tuple[list[int], list[float], list[float], list[int]]:
    """Over the epochs any run logged (each run a {epoch: value} dict, or a list of epochs 1, 2, ...): the epochs,
    and per epoch the mean and the std (n - 1) over the runs with a finite value there, and how many they are.
    Runs may end at different epochs (a diverged run stops early); NaN where fewer than 1 (2) runs have one."""
    import numpy as np

    curves = [_by_epoch(c) for c in curves if c]
    if not curves:
        return [], [], [], []
    epochs = sorted(set().union(*curves))
    values = np.array([[c.get(e, np.nan) for e in epochs] for c in curves], dtype=float)
    values[~np.isfinite(values)] = np.nan
    n = (~np.isnan(values)).sum(axis=0)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # epochs where a single run or none is finite
        mean, std = np.nanmean(values, axis=0), np.nanstd(values, axis=0, ddof=1)
    return epochs, mean.tolist(), std.tolist(), n.tolist()


def curve_rows(curves: dict[str, dict[str, list]]) -> list[dict]:
    """curves.csv's rows: for each variant, metric and epoch, mean_curve's mean, std and n."""
    rows = []
    for tag, by_variant in curves.items():
        for variant, runs in by_variant.items():
            for epoch, mean, std, n in zip(*mean_curve(runs)):
                rows.append({"variant": variant, "metric": CURVE_TAGS[tag], "epoch": epoch, "mean": mean,
                             "std": std, "n": n})
    return rows


def curve_readings(rows: list[dict]) -> list[dict]:
    """Per variant, from curve_rows' means: the peak validation accuracy and the lowest validation loss with
    their epochs (a tie's first), and the last epoch's values."""
    means: dict[str, dict[str, list]] = {}
    last_n: dict[tuple, int] = {}
    for r in rows:  # in epoch order
        means.setdefault(r["variant"], {}).setdefault(r["metric"], []).append((r["epoch"], r["mean"]))
        last_n[r["variant"], r["metric"]] = r["n"]
    readings = []
    for variant, by_metric in means.items():
        reading = {"variant": variant}
        for metric in CURVE_TAGS.values():
            points = by_metric.get(metric, [])  # (epoch, mean)
            finite = [(v, e) for e, v in points if math.isfinite(v)]
            reading[f"{metric}_last"] = points[-1][1] if points else math.nan
            reading[f"{metric}_epochs"] = points[-1][0] if points else 0  # the last epoch it was logged in
            reading[f"{metric}_last_n"] = last_n.get((variant, metric), 0)  # the runs that last mean is over
            best = (max(finite, key=lambda t: (t[0], -t[1]), default=(math.nan, None)) if metric == "val_acc"
                    else min(finite, default=(math.nan, None)))
            reading[f"{metric}_best"], reading[f"{metric}_best_epoch"] = best
        readings.append(reading)
    return readings


def figure_label(variant: str, sep: str = ", ") -> str:
    """A variant as figures and a search's table name it: values drawn by a search to 3 significant digits
    (optimizer.lr=0.0229, not 0.022881136684755242), its items joined by `sep`."""
    def short(item: str) -> str:
        key, eq, value = item.partition("=")
        number = re.fullmatch(r"[-+]?(\d*)\.?(\d*)(e[-+]?\d+)?", value, re.IGNORECASE)
        digits = len((number.group(1) + number.group(2)).lstrip("0")) if number and value[-1:].isdigit() else 0
        if not eq or digits <= 6:  # as typed: 0.001, 1e-05, 2.12345, lenet
            return item
        whole = len(str(int(abs(float(value))))) if abs(float(value)) >= 1 else 0
        return f"{key}={float(value):.{max(3, whole)}g}"  # 1000.1234 as 1000, not 1e+03
    return sep.join(short(item) for item in name_items(variant))


def figure_labels(variants: list[str], sep: str = ", ") -> dict[str, str]:
    """Each variant's figure_label, or its full name where rounding would give two variants one label."""
    labels = {v: figure_label(v, sep) for v in variants}
    return labels if len(set(labels.values())) == len(labels) else {v: sep.join(name_items(v)) for v in variants}


def plot_curves(curves_by_variant: dict[str, list[list[float]]], ylabel: str, title: str,
                notes: Optional[dict[str, str]] = None, baseline: Optional[str] = None):
    """One line per variant: the mean over its runs per epoch, with a ± 1 std band when it has several.
    `notes` adds to a variant's legend entry (how many of its runs diverged); the `baseline` variant is named so,
    as in the table."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    names = figure_labels(list(curves_by_variant))
    for variant, curves in curves_by_variant.items():
        curves = [c for c in curves if c]
        if not curves:
            continue
        finite = [np.isfinite(list(_by_epoch(c).values())) for c in curves]
        # A diverged run's NaN or inf values draw nothing; the legend says so rather than hide the variant.
        drawable = any(f.any() for f in finite)
        epochs, mean, std, n = map(np.array, mean_curve(curves)) if drawable else ([],) * 4
        note = (notes or {}).get(variant)
        counts = ("baseline, " if variant == baseline else "") + f"n={len(curves)}" + (f", {note}" if note else "")
        fewer = n[(n > 0) & (n < len(curves))] if drawable else []  # epochs some runs have no value in
        if len(fewer):  # the line's mean and band there are over fewer runs (one stopped early, or diverged)
            at = f"{fewer.min()}" if fewer.min() == fewer.max() else f"{fewer.min()}-{fewer.max()}"
            counts += f", {at} from epoch {epochs[(n > 0) & (n < len(curves))][0]}"
        label = f"{names[variant]} ({counts})"
        if not drawable:
            ax.plot([], [], marker="x", linestyle="none", label=f"{label}: no finite value")
            continue
        if not all(f.all() for f in finite):
            label += ": non-finite values not drawn"
        drawn = np.isfinite(mean)  # the line joins the epochs with a value (validation every few epochs)
        epochs, mean, std = epochs[drawn], mean[drawn], std[drawn]
        (line,) = ax.plot(epochs, mean, marker="o", markersize=3, label=label)
        if len(curves) > 1:
            ax.fill_between(epochs, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    drawn = np.concatenate([line.get_ydata() for line in ax.get_lines()] or [np.array([])]).astype(float)
    drawn = drawn[np.isfinite(drawn)]
    if len(drawn) and drawn.min() > 0 and drawn.max() / drawn.min() > 1e3:  # a loss heading for divergence
        ax.set_yscale("log")  # would flatten every other line to zero on a linear axis
        ylabel += " (log scale)"
    xs = np.concatenate([line.get_xdata() for line in ax.get_lines()] or [np.array([])]).astype(float)
    if len(xs) and xs.max() - xs.min() < 10:  # few epochs: a tick at each (the locator drew 0.945 ... 1.065 for one)
        ax.set_xticks(range(int(xs.min()), int(xs.max()) + 1))
        ax.set_xlim(xs.min() - 0.5, xs.max() + 0.5)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    several = any(len([c for c in curves if c]) > 1 for curves in curves_by_variant.values())
    ax.set_title(title + ("\nmean over seeds, band: ± 1 std (n − 1); n: runs with a value" if several else ""),
                 fontsize=10 if several else None)
    ax.grid(alpha=0.3)
    entries = ax.get_legend_handles_labels()[1]
    if len(entries) > 6 or max(map(len, entries), default=0) > 40:
        # Below the axes, not over the lines, in a figure taller by its height, so the axes keep theirs.
        fig.set_figheight(4.5 + 0.16 * len(entries))
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0, -0.17), borderaxespad=0)
    elif entries:
        ax.legend(fontsize=8)
    else:  # empty axes would read as a figure that failed to draw
        ax.text(0.5, 0.5, "no run has values to draw yet", transform=ax.transAxes, ha="center", va="center")
    fig.tight_layout()
    return fig


def plot_test_accuracy(variants: list[dict]):
    """One bar per variant with its std over seeds (none where every variant has one run), the baseline named so;
    sideways (names to the left) where names are long or many, as a search's are, whose names tilted under the
    bars overlapped and ran off the figure."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = figure_labels([v["variant"] for v in variants])
    names = [labels[v["variant"]] + (" (baseline)" if v.get("baseline") else "") for v in variants]  # as the table
    means = [0 if math.isnan(v["test_acc_mean"]) else v["test_acc_mean"] for v in variants]
    one_run_each = all(v["n"] <= 1 for v in variants)  # no spread to show: no error bars, and the label says so
    # A bar with one result has no spread to show, which a zero-width error bar would claim: it is marked instead.
    errors = [v["test_acc_std"] if v["n"] > 1 and not math.isnan(v["test_acc_std"]) else 0 for v in variants]
    spread = [i for i, v in enumerate(variants) if v["n"] > 1 and not math.isnan(v["test_acc_std"])]
    sideways = len(names) > 8 or max(map(len, names), default=0) > 24
    if sideways:
        fig, ax = plt.subplots(figsize=(4.5 + 0.06 * max(map(len, names)), 1.5 + 0.4 * len(names)))
        ax.barh(range(len(names)), means, color="tab:blue", alpha=0.8)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.invert_yaxis()  # the first variant (a search's best trial) on top
    else:
        fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(variants) + 2), 4.5))
        ax.bar(range(len(names)), means, color="tab:blue", alpha=0.8)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    if spread:
        at, middle, width = spread, [means[i] for i in spread], [errors[i] for i in spread]
        ax.errorbar(*((middle, at) if sideways else (at, middle)), **{"xerr" if sideways else "yerr": width},
                    fmt="none", ecolor="black", capsize=4)
    # A variant without a result would read as a bar at 0%; a diverged run's accuracy is a result, marked as such.
    for i, v in enumerate(variants):
        text = ("no result" if v["n"] == 0 else f"{v['diverged']} of {v['n']} diverged" if v["diverged"]
                else "n=1: no spread" if v["n"] == 1 and not one_run_each else None)
        if text:
            end = means[i] + errors[i]
            ax.annotate(text, (end, i) if sideways else (i, end), xytext=(3, 0) if sideways else (0, 3),
                        textcoords="offset points", ha="left" if sideways else "center",
                        va="center" if sideways else "baseline", fontsize=7, color="tab:red")
    accuracy = "test accuracy (one run each)" if one_run_each else "test accuracy (mean ± std over seeds)"
    ax.set_xlabel(accuracy if sideways else "variant")
    ax.set_ylabel("variant" if sideways else accuracy)
    ax.set_title("Final test accuracy")
    ax.grid(axis="x" if sideways else "y", alpha=0.3)
    fig.tight_layout()
    return fig


def read_baseline(sweep_dir: Path) -> Optional[str]:
    """The `baseline` the sweep was configured with, from its runs' saved configs."""
    for run_dir in run_dirs(sweep_dir):
        config = run_dir / ".hydra" / "config.yaml"
        if config.exists():
            return OmegaConf.load(config).get("baseline")
    return None


LIMITS = ("limit_train_batches", "limit_val_batches", "limit_test_batches")


def _limits(trainer) -> dict:
    """The trainer keys that cut a split short. Lightning reads an int as a batch count (1: one batch) and a float
    as a fraction (1.0: all)."""
    given = {k: trainer.get(k) for k in LIMITS if trainer.get(k) is not None}
    return {k: v for k, v in given.items() if not (isinstance(v, float) and v == 1.0)}


def limits_note(sweep_dir: Path) -> Optional[str]:
    """Says so when runs used only part of a split (trainer.limit_*_batches): a quick check, not a study's
    numbers; when they had a step limit (trainer.max_steps); and when they trained on a fraction of the training
    split (data.train_fraction, which some presets set: a stated part of the study, not a cut)."""
    used: dict[str, set] = {}
    limited, fractions, runs = 0, set(), run_dirs(sweep_dir)
    trained_on_part, step_limits = 0, set()
    for run_dir in runs:
        config = run_dir / ".hydra" / "config.yaml"
        saved = OmegaConf.load(config) if config.exists() else OmegaConf.create()
        found = _limits(saved.get("trainer") or {})
        limited += bool(found)
        for k, v in found.items():
            used.setdefault(k, set()).add(str(v))
        if (OmegaConf.select(saved, "trainer.max_steps", default=None) or -1) > 0:
            step_limits.add(str(saved.trainer.max_steps))
        fraction = OmegaConf.select(saved, "data.train_fraction", default=None)
        if fraction is not None and fraction < 1:
            trained_on_part += 1
            fractions.add(str(fraction))
    notes = []
    if limited:
        notes.append(f"{limited} of {len(runs)} runs used part of a split ("
                     + ", ".join(f"trainer.{k}={'/'.join(sorted(v))}" for k, v in used.items())
                     + "): their epochs, accuracies and losses are not those of the full study.")
    if step_limits:
        notes.append(f"Runs had a step limit (trainer.max_steps={'/'.join(sorted(step_limits))}), which ends "
                     "training before trainer.max_epochs if it comes first.")
    if trained_on_part:
        notes.append(f"{trained_on_part} of {len(runs)} runs trained on part of the training split "
                     f"(data.train_fraction={'/'.join(sorted(fractions))}).")
    return " ".join(notes) or None


def override_key(override: str) -> str:
    """`+model.dropout=0.3` → `model.dropout`: the key an override or a run-name item sets."""
    return override.split("=", 1)[0].lstrip("+~")


def shared_overrides(sweep_dir: Path) -> list[str]:
    """The command-line overrides every run of the sweep was given (its fixed settings, a preset among them), in
    the order typed; what varies names the variants. Not the keys of where and how runs execute (data.root,
    trainer.accelerator, ...): Hydra rewrites a run's overrides.yaml whenever a command reaches it, also one that
    only skips it as done, and those keys may differ from the command that trained it (any other change is
    refused)."""
    from cifar_ablate.config import where_and_how_keys
    where_and_how = where_and_how_keys() | {"baseline"}  # baseline: what the report compares, not what runs do
    # What names a run varies in the sweep, also where only one value has a run yet (a sweep stopped early).
    varied = {override_key(item) for d in run_dirs(sweep_dir) for item in name_items(d.name)}
    shared: Optional[list[str]] = None
    for run_dir in run_dirs(sweep_dir):
        path = run_dir / ".hydra" / "overrides.yaml"
        if path.exists():
            given = [o for o in OmegaConf.load(path) if override_key(o) not in where_and_how | varied]
            shared = given if shared is None else [o for o in shared if o in given]
    return shared or []


def test_set_validation_note(sweep_dir: Path) -> Optional[str]:
    """Says so when runs validated on the test set (data.val_size=0): their best_val_acc, and a best epoch picked
    by it, are then test-set numbers."""
    runs = run_dirs(sweep_dir)
    on_test = sum(OmegaConf.select(OmegaConf.load(r / ".hydra" / "config.yaml"), "data.val_size", default=None) == 0
                  for r in runs if (r / ".hydra" / "config.yaml").exists())
    if not on_test:
        return None
    return (f"{on_test} of {len(runs)} runs validated on the test set (data.val_size=0): their best_val_acc and "
            "validation curves are test-set numbers, not a held-out choice.")


def search_sweeper(sweep_dir: Path) -> Optional[str]:
    """The sweeper's class name when it is not Hydra's basic sweeper (a search, such as Optuna's, whose trials are
    drawn as it goes); None for a grid, or when no record says. Read from the sweep's multirun.yaml (which only the
    basic sweeper writes) or else its runs' .hydra/hydra.yaml."""
    records = [sweep_dir / "multirun.yaml"] + [d / ".hydra" / "hydra.yaml" for d in run_dirs(sweep_dir)]
    try:
        record = next(r for r in records if r.exists())
        target = str(OmegaConf.select(OmegaConf.load(record), "hydra.sweeper._target_", default=""))
    except Exception:  # noqa: BLE001  (no record, or another Hydra version's: a grid's report, as before)
        return None
    return target.rsplit(".", 1)[-1] if target and not target.endswith("BasicSweeper") else None


def planned_runs(sweep_dir: Path) -> Optional[list[str]]:
    """The run names the sweep's last command planned, from its multirun.yaml, named as Hydra names them (the
    overrides that vary, sorted); None when that cannot be told (no multirun.yaml, which only Hydra's basic sweeper
    writes: a search such as Optuna's decides its trials as it goes)."""
    try:
        hydra_cfg = OmegaConf.load(sweep_dir / "multirun.yaml").hydra
    except Exception:  # noqa: BLE001  (none, or unreadable: the plan is then unknown)
        return None
    return plan_of(hydra_cfg)


def plan_of(hydra_cfg) -> Optional[list[str]]:
    """The run names a sweep's hydra config plans (multirun.yaml's, or the config as the sweep starts); None for
    a search, or a config this Hydra cannot read."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra._internal.config_loader_impl import get_overrides_dirname

    from cifar_ablate.run import run_name
    try:
        if not str(hydra_cfg.sweeper.get("_target_", "")).endswith("BasicSweeper"):
            return None
        parser = OverridesParser.create()
        task = list(hydra_cfg.overrides.task)
        params = [f"{k}={v}" for k, v in (hydra_cfg.sweeper.get("params") or {}).items()]  # a preset's sweep
        fixed = [o.key_or_group for o in parser.parse_overrides(task) if not o.is_sweep_override()]  # as RunNaming
        excluded = list(hydra_cfg.job.config.override_dirname.exclude_keys) + fixed
        (jobs,) = BasicSweeper.split_arguments(parser.parse_overrides(params + task), None)
    except Exception:  # noqa: BLE001  (a file from another Hydra version, or edited: the plan is then unknown)
        return None
    return [run_name(get_overrides_dirname(parser.parse_overrides(job), excluded, ",", "="), num)
            for num, job in enumerate(jobs)]


# multirun.yaml as the command before this one left it: Hydra rewrites the file as a sweep starts, also for a
# command that is then refused (a changed setting, a bad value every run shares), whose plan is not the study's.
PREVIOUS_PLAN = ".multirun.previous.yaml"


def restore_plan(sweep_dir: Path) -> None:
    """Put back the multirun.yaml of the command before a refused one (none: a new sweep dir, left without one)."""
    previous, plan = sweep_dir / PREVIOUS_PLAN, sweep_dir / "multirun.yaml"
    if previous.exists():
        os.replace(previous, plan)
    else:
        plan.unlink(missing_ok=True)


def not_started(planned: list[str], runs: list[dict]) -> list[str]:
    """The planned runs that have no dir in the sweep (a sweep stopped before it reached them)."""
    present = {r["run"] for r in runs}
    return [name for name in dict.fromkeys(planned) if name not in present]


def write_report(sweep_dir, baseline: Optional[str] = None, strict: bool = False) -> tuple[list[dict], list[dict], str]:
    """Write summary.md, summary.csv, runs.csv and the figures; return (variants, runs, summary markdown).

    A baseline that names no variant raises ConfigError when `strict` (asked for by hand); otherwise (the
    sweep's configured one) the report compares against the first variant and says so at its top."""
    import matplotlib.pyplot as plt

    sweep_dir = Path(sweep_dir)
    runs = collect_runs(sweep_dir)
    note, search, single = None, search_sweeper(sweep_dir), single_runs(sweep_dir, runs)
    if search and baseline is not None and strict:
        raise ConfigError(f"--baseline: {sweep_dir} is a search ({search}), whose trials are ranked, not compared "
                          "with a baseline")
    try:
        variants = variant_rows(runs, baseline if baseline is not None else read_baseline(sweep_dir), bool(search))
    except ConfigError as e:
        if strict:
            raise
        variants, note = variant_rows(runs, None), f"{e}; compared against the first variant with a result instead."
    planned = planned_runs(sweep_dir) or []  # read once: the note and the table's layout both use it
    missing = not_started(planned, runs)
    if missing:
        shown = ", ".join(missing[:6]) + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
        missing_note = (f"{len(missing)} of the runs the sweep's last command planned (multirun.yaml) have not "
                        f"started, so this study is incomplete: {shown}; rerun its command with "
                        f"hydra.sweep.dir={sweep_dir} to run them.")
        note = " ".join(n for n in (note, missing_note) if n)
    single_note = None if not single else ("These are single runs, not a sweep: each variant is named by the "
                                            "overrides its runs were given that not every run here was, and runs "
                                            "that differ only in seed are one variant.")
    note = " ".join(n for n in (single_note, note, limits_note(sweep_dir), test_set_validation_note(sweep_dir))
                    if n) or None
    with open(sweep_dir / "runs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=("variant",) + RUN_COLUMNS + ("repeats",), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(runs)
    with open(sweep_dir / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(variants[0]) if variants else ["variant"])
        writer.writeheader()
        writer.writerows(variants)

    curves: dict[str, dict[str, list]] = {tag: {} for tag in CURVE_TAGS}
    diverged: dict[str, dict[str, int]] = {tag: {} for tag in curves}  # among the runs each figure draws
    for r in runs:
        if not counted(r):  # a failed or unfinished run's partial curve is no result; a repeated seed a copy
            continue
        run_curves = read_curves(sweep_dir / r["run"])
        for tag in curves:
            curves[tag].setdefault(r["variant"], []).append(run_curves[tag])
            if r["status"] == "diverged" and run_curves[tag]:
                diverged[tag][r["variant"]] = diverged[tag].get(r["variant"], 0) + 1
    rows = curve_rows(curves)
    with open(sweep_dir / "curves.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=("variant", "metric", "epoch", "mean", "std", "n"))
        writer.writeheader()
        writer.writerows(rows)
    seeds_planned = max((sum(variant_of(n) == v for n in set(planned)) for v in {variant_of(n) for n in planned}),
                        default=1)
    markdown = summary_markdown(sweep_dir, variants, runs, note, curve_readings(rows), seeds_planned, search, single)
    baseline = next((v["variant"] for v in variants if v["baseline"]), None)
    (sweep_dir / "summary.md").write_text(markdown)

    for tag, ylabel, title, name in (("val/acc", "validation accuracy", "Validation accuracy per epoch", "val_acc.png"),
                                     ("train/loss_epoch", "training loss (cross-entropy)", "Training loss per epoch",
                                      "train_loss.png")):
        fig = plot_curves(curves[tag], ylabel, title, {v: f"{k} diverged" for v, k in diverged[tag].items()},
                          baseline)
        fig.savefig(sweep_dir / name, dpi=110, bbox_inches="tight")  # the legend under the axes, whole
        plt.close(fig)
    fig = plot_test_accuracy(variants)
    fig.savefig(sweep_dir / "test_acc.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return variants, runs, markdown


def without_result(runs: list[dict]) -> list[dict]:
    """Runs that are not results: failed, interrupted, unfinished or unreadable."""
    return [r for r in runs if r.get("status") not in RESULT_STATUSES]


def check_typed_baseline(config, sweep_dir: Path) -> None:
    """ConfigError when the sweep's command line gives a `baseline=` that names none of the variants it plans or
    its dir holds (a typo would otherwise be found only in the report, after every run has trained), or gives one
    to a search, whose trials are ranked. A preset's own baseline is not checked: a sweep may narrow the preset's
    axes, and the report then notes it and compares against the first variant."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    typed = [o for o in OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
             if o.key_or_group == "baseline" and not o.is_sweep_override()]
    baseline = config.get("baseline")
    if not typed or baseline is None:
        return
    target = str(OmegaConf.select(config, "hydra.sweeper._target_", default=""))
    if not target.endswith("BasicSweeper"):
        raise ConfigError(f"baseline={baseline}: this sweep is a search ({target.rsplit('.', 1)[-1]}), whose "
                          "trials are ranked, not compared with a baseline", keys=("baseline",))
    planned = plan_of(config.hydra)
    if planned is not None:
        matching_variant(str(baseline), [variant_of(n) for n in planned + [d.name for d in run_dirs(sweep_dir)]])


class SweepSummary(Callback):
    """Hydra callback: writes and prints the report when a multirun ends; exit 1 if a run it launched did not
    finish. The report covers every run in the sweep dir; runs an earlier command left there under other names
    (a one-seed sweep's, before seeds were added) are noted, and do not fail this command, which never runs them."""

    def on_multirun_start(self, config, **kwargs):
        import shutil
        import uuid

        from omegaconf import read_write
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            check_typed_baseline(config, sweep_dir)
        except ConfigError as e:
            with contextlib.suppress(OSError):  # made by OutputDirCheck a moment ago, unless it holds runs
                sweep_dir.rmdir()
            exit_with_error(e)
        os.environ[SWEEP_PID_ENV] = str(os.getpid())  # inherited by the trials a launcher starts here
        plan = sweep_dir / "multirun.yaml"
        if plan.exists():
            shutil.copyfile(plan, plan.with_name(PREVIOUS_PLAN))
        self.launch = uuid.uuid4().hex
        with read_write(config.hydra):  # Hydra applies these to every job's config, which records them
            config.hydra.overrides.hydra.append(f"+hydra.job.env_set.{LAUNCH_KEY}='{self.launch}'")  # a string

    def on_multirun_end(self, config, **kwargs):
        sweep_dir = Path(config.hydra.sweep.dir)
        (sweep_dir / PREVIOUS_PLAN).unlink(missing_ok=True)  # this command ran: its plan is the study's
        _, runs, markdown = write_report(sweep_dir, config.get("baseline"))
        print(f"\nSweep summary ({sweep_dir / 'summary.md'}):\n{markdown}", flush=True)
        ours = [r for r in runs if r["launch"] == self.launch]
        bad, left = without_result(ours), [r for r in without_result(runs) if r["launch"] != self.launch]
        if left:
            print(f"note: runs in {sweep_dir} that this command does not run, without a result (continue or delete "
                  "them): " + ", ".join(f"{r['run']} ({r['status']})" for r in left), file=sys.stderr)
        if bad:
            print(f"error: {len(bad)} of {len(ours)} runs did not complete: "
                  + ", ".join(f"{r['run']} ({r['status']})" for r in bad), file=sys.stderr)
            sys.exit(1)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m cifar_ablate.report", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--baseline", help="variant to compare against (default: the sweep's, else the first)")
    args = parser.parse_args(argv)
    from cifar_ablate.console import ReaderGoneStdout
    sys.stdout = ReaderGoneStdout(sys.stdout)  # `python -m cifar_ablate.report <dir> | head`: no BrokenPipeError
    if not args.sweep_dir.is_dir():
        exit_with_error(f"{args.sweep_dir}: no such directory")
    if not run_dirs(args.sweep_dir):
        exit_with_error(f"{args.sweep_dir}: no runs here (expected sub-folders with a .hydra/ config)")
    try:
        # Only a baseline asked for here is refused; the sweep's own may lack its runs yet (a sweep in progress).
        _, runs, markdown = write_report(args.sweep_dir, args.baseline, strict=args.baseline is not None)
    except ConfigError as e:
        exit_with_error(e)
    print(markdown)
    # Unfinished runs are listed in the report; they do not make the report itself fail.


if __name__ == "__main__":
    main()
