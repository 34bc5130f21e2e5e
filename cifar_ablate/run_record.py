"""What a run dir records of its own, beside Hydra's `.hydra/`: `metrics.json`, the run's result (or why
it has none), and `run_config.json`, what the run computes as of its first start. Both are written whole.
Also the check that a command run into a dir holding a result or a checkpoint is that same run.

Imports neither torch nor Lightning: `run` checks a rerun before those load.
"""
import json
import math
import os
from pathlib import Path
from typing import Optional

from lightning_utilities.core.rank_zero import rank_zero_only  # Lightning's own, without importing Lightning
from omegaconf import DictConfig, OmegaConf

from cifar_ablate.config import group_choices, where_and_how_keys
from cifar_ablate.errors import ConfigError

RESULT_STATUSES = ("completed", "diverged")  # a diverged run is a result (its accuracy counts)
RESULT_KEYS = ("test_acc", "best_val_acc", "epochs", "train_seconds")  # what the report reads of a result
# Kept from the run's first start: Hydra rewrites .hydra/ whenever a command runs into the dir.
RUN_CONFIG = "run_config.json"
# In RUN_CONFIG beside the config's keys: the option each group picked, to name a difference as the user typed
# it (model: lenet there, lenet_bn now), never compared itself (an option renamed with the same values is alike).
CHOICES_KEY = "(choices)"
# Also kept there: the overrides the run started with, which `resume=` continues with (a later command into the
# dir, even a refused sweep rerun, rewrites .hydra/overrides.yaml).
OVERRIDES_KEY = "(overrides)"


def write_json_whole(path: Path, content: dict, **dumps_options) -> None:
    """Write `path` whole or not at all: a reader never sees a half-written file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(content, allow_nan=False, **dumps_options) + "\n")
    os.replace(tmp, path)


@rank_zero_only  # under SLURM with trainer=ddp every task runs the job; only rank 0 records the run
def write_metrics(run_dir: Path, content: dict) -> None:
    """Write the run's metrics.json whole. NaN and inf become null (strict JSON); a diverged run says so in its
    status. Lightning must have been imported: it sets the rank this reads."""
    content = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in content.items()}
    write_json_whole(run_dir / "metrics.json", content, indent=2)


def read_metrics(run_dir: Path) -> Optional[dict]:
    """A run's metrics.json; None when it has none (still running, or stopped before the end). A file that is
    not a whole record (cut short by a full disk, edited by hand) reads as status "unreadable", so the report
    lists it and a rerun of the sweep trains that run again."""
    path = run_dir / "metrics.json"
    if not path.exists():
        return None
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return {"status": "unreadable", "error": f"metrics.json: {e}"}
    if not isinstance(metrics, dict) or not isinstance(metrics.get("status"), str):
        return {"status": "unreadable", "error": "metrics.json: no status"}
    lacking = [k for k in RESULT_KEYS if k not in metrics] if metrics["status"] in RESULT_STATUSES else []
    if lacking:
        return {"status": "unreadable",
                "error": f"metrics.json: a {metrics['status']} run without {', '.join(lacking)}"}
    return metrics


def what_it_computes(cfg: DictConfig) -> dict:
    """The run's config as dotted keys, without the where-and-how keys, the report's baseline and Hydra's own
    settings. Unresolved, so a default that depends on the device (the trainer's precision) reads the same on a
    GPU and a CPU."""
    flat = {}

    def walk(node, prefix: str):
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            flat[prefix[:-1]] = node
    walk(OmegaConf.to_container(cfg, resolve=False, enum_to_str=True), "")
    skip = where_and_how_keys() | {"baseline", "hydra"}
    return {k: v for k, v in flat.items() if not any(k == s or k.startswith(s + ".") for s in skip)}


def first_overrides(run_dir: Path) -> Optional[list]:
    """The overrides `run_dir`'s run started with; None for a run from before cifar_ablate kept them."""
    path = run_dir / RUN_CONFIG
    return json.loads(path.read_text()).get(OVERRIDES_KEY) if path.is_file() else None


@rank_zero_only
def write_run_config(run_dir: Path, cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig
    write_json_whole(run_dir / RUN_CONFIG, {**what_it_computes(cfg), CHOICES_KEY: group_choices(),
                                            OVERRIDES_KEY: list(HydraConfig.get().overrides.task)},
                     indent=1, sort_keys=True)


def _holds_a_run(run_dir: Path) -> bool:
    previous = read_metrics(run_dir)
    return ((previous is not None and previous["status"] in RESULT_STATUSES)
            or (run_dir / "checkpoints" / "last.ckpt").exists())


def _config_differences(run_dir: Path, now: dict, now_choices: dict, ignore: tuple = ()) -> str:
    """How the config `run_dir`'s run started with differs from `now` ("" when alike, or when the run predates
    run_config.json), as a few `key: there, now` items."""
    path = run_dir / RUN_CONFIG
    if not path.exists():  # started before cifar_ablate kept it
        return ""
    saved = json.loads(path.read_text())
    saved_choices = saved.pop(CHOICES_KEY, {})
    saved.pop(OVERRIDES_KEY, None)  # how the run was asked for, not what it computes
    differ = sorted(k for k in saved.keys() | now.keys()
                    if k not in ignore and (k not in saved or k not in now or saved[k] != now[k]))
    # Keys of a group whose option changed read as that option: `model: lenet there, lenet_bn now`.
    items = {}
    for k in differ:
        group = k.split(".")[0]
        if group in saved_choices and saved_choices[group] != now_choices.get(group):
            items[group] = f"{group}: {saved_choices[group]} there, {now_choices.get(group, 'unset')} now"
        else:
            items[k] = f"{k}: {saved.get(k, 'unset')} there, {now.get(k, 'unset')} now"
    shown = ", ".join(list(items.values())[:3])
    return shown + (", ..." if len(items) > 3 else "")


def check_same_run(run_dir: Path, cfg: DictConfig, variant_runs: tuple = ()) -> None:
    """Refuse to skip or resume a run whose dir holds one of another config: a sweep rerun into its dir with a
    setting changed (trainer.max_epochs=3) would otherwise report the old results under the new settings.
    A dir without a result or a checkpoint is a fresh start, whatever it holds.

    `variant_runs`: the other runs of this run's variant in its sweep dir (the same name but for the seed).
    Each must hold this config but for the seed, or the report would count runs of two settings as one variant:
    a one-seed sweep rerun into its dir with `seed=0,1` and a setting changed names its new runs `...,seed=0`,
    beside the old ones."""
    now, choices = what_it_computes(cfg), group_choices(cfg)
    shown = _config_differences(run_dir, now, choices) if _holds_a_run(run_dir) else ""
    if shown:
        raise ConfigError(f"{run_dir}: holds a run of another config ({shown}); use a new run or sweep dir, or "
                          "delete this run's dir to train it with this config")
    for other in variant_runs:
        shown = _config_differences(other, now, choices, ignore=("seed",)) if _holds_a_run(other) else ""
        if shown:
            raise ConfigError(f"{other}: a run of this variant with another config ({shown}), which the report "
                              "would count with this one; use a new sweep dir, or delete that run's dir")
