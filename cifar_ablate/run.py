"""One run: check the config, train and test it (`cifar_ablate.training`), write metrics.json.

`python -m cifar_ablate [overrides]` enters at `cli`; with `-m` Hydra calls `main` once per sweep point.
Nothing here imports torch or Lightning at load: a config error is reported before those imports.
"""
import contextlib
import gc
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Optional

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback as HydraCallback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, read_write
from omegaconf.errors import InterpolationResolutionError

from cifar_ablate.config import CONFIG_DIR, check_config, where_and_how_keys
from cifar_ablate.console import ReaderGoneStdout
from cifar_ablate.errors import CheckpointError, ConfigError, UserError, exit_with_error
from cifar_ablate.report import name_items, override_key, restore_plan, run_dirs, variant_of
from cifar_ablate.run_record import RESULT_STATUSES, check_same_run, first_overrides, read_metrics, write_metrics

log = logging.getLogger(__name__)


def run_name(override_dirname: str, job_num: int) -> str:
    """A sweep's run dir name (and TensorBoard run name): Hydra's override_dirname, e.g. `model=lenet_bn`."""
    return override_dirname.replace("/", "_") or f"run{job_num}"


class RunNaming(HydraCallback):
    """Names each run of a sweep by what varies: overrides given one value for the whole sweep
    (trainer.max_epochs=1, +experiment=...) join hydra.job.config.override_dirname.exclude_keys."""

    def on_multirun_start(self, config: DictConfig, **kwargs):
        overrides = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
        fixed = [o.key_or_group for o in overrides if not o.is_sweep_override()]
        if not fixed:
            return
        excluded = list(config.hydra.job.config.override_dirname.exclude_keys) + fixed
        # Hydra re-applies its own overrides to every job's config (load_sweep_config).
        with read_write(config.hydra):
            config.hydra.overrides.hydra.append(
                f"hydra.job.config.override_dirname.exclude_keys=[{','.join(excluded)}]")


class OutputDirCheck(HydraCallback):
    """Stops in one line, before anything runs, when the run or sweep dir cannot be created or written."""

    def on_run_start(self, config: DictConfig, **kwargs):
        self._check(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs):
        self._check(config, "hydra.sweep.dir")

    @staticmethod
    def _check(config: DictConfig, key: str):
        try:
            path = Path(OmegaConf.select(config, key))  # resolving the default dir creates it
            path.mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryFile(dir=path).close()
        except (OSError, InterpolationResolutionError) as e:
            reason = (e.__cause__ or e.__context__ or e) if isinstance(e, InterpolationResolutionError) else e
            exit_with_error(f"{key}: cannot write the output dir ({reason}); pass a writable {key}=<dir>")


def refuse_other_run(run_dir: Path, cfg: DictConfig) -> None:
    """One line and exit 2 when `run_dir`, or another run of its variant beside it (a sweep's runs that differ only
    in seed), holds a result or a checkpoint of another config; their files stay."""
    variant = variant_of(run_dir.name)
    siblings = tuple(d for d in run_dirs(run_dir.parent) if d.name != run_dir.name and variant_of(d.name) == variant)
    try:
        check_same_run(run_dir, cfg, siblings)
    except ConfigError as e:
        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            restore_plan(run_dir.parent)
        exit_with_error(e)


class SameRunCheck(HydraCallback):
    """A single run into a dir that holds another config's run is refused here, before Hydra rewrites the dir's
    .hydra/ with this command's config (from which `resume=<run dir>` reads the run's overrides). A sweep's runs
    are checked in `main`: Hydra composes their configs only as it launches them.

    A single run into a sweep's run dir (`resume=`, or `hydra.run.dir=` by hand) keeps the job number the sweep
    gave it: Hydra's rewritten record would say none, and the report orders runs (and picks the default
    baseline, the first variant) by it."""

    def on_run_start(self, config: DictConfig, **kwargs):
        run_dir = Path(OmegaConf.select(config, "hydra.run.dir")).absolute()  # as Hydra's output_dir
        refuse_other_run(run_dir, config)
        record = run_dir / ".hydra" / "hydra.yaml"
        # A record with a job number is a sweep's run (or one continued alone since); a single run's has none.
        num = OmegaConf.select(OmegaConf.load(record), "hydra.job.num", default=None) if record.exists() else None
        if isinstance(num, int):
            with read_write(config.hydra):
                config.hydra.job.num = num


def fresh_dir(path: str) -> str:
    """`path`, or `path-2`, `path-3`, ... : the first that did not exist, created here so that two runs
    or sweeps started in the same second never share a dir. Cached per config, like Hydra's `now`."""
    base, suffix = Path(path), 1
    while True:
        candidate = base if suffix == 1 else base.with_name(f"{base.name}-{suffix}")
        try:
            candidate.mkdir(parents=True)
            return str(candidate)
        except FileExistsError:
            suffix += 1


def ddp_strategy() -> str:
    """trainer=ddp's strategy: under SLURM, whose tasks are the processes (one per device), Lightning's
    `ddp` joins them; elsewhere `ddp_spawn`, whose workers only train, because `ddp` would start the other
    processes by running this command again, a sweep included."""
    from lightning.fabric.plugins.environments import SLURMEnvironment
    return "ddp" if SLURMEnvironment.detect() else "ddp_spawn"


def trial_gpu():
    """trainer=gpu's devices: one GPU. In a sweep on a machine with several, trial n takes GPU n mod their
    count, so trials run side by side on different GPUs (hydra/launcher=parallel, n_jobs = the count)."""
    import torch
    count = torch.cuda.device_count()
    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
    # No job number in a single run, nor where a launcher reads the config to submit the sweep.
    job_num = OmegaConf.select(hydra_cfg, "job.num", default=None) if hydra_cfg is not None else None
    if count < 2 or job_num is None or hydra_cfg.mode != RunMode.MULTIRUN:
        return 1
    return [job_num % count]


def on_cuda(accelerator: str, if_cuda, otherwise):
    """`if_cuda` when the run trains on a CUDA GPU (accelerator gpu or cuda, or auto with one visible), else
    `otherwise`: the default trainer's bf16 mixed precision and cuDNN autotuning, which pay off only there."""
    import torch
    cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return if_cuda if cuda else otherwise


OmegaConf.register_new_resolver("on_cuda", on_cuda, replace=True)
OmegaConf.register_new_resolver("ddp_strategy", ddp_strategy, replace=True)
OmegaConf.register_new_resolver("trial_gpu", trial_gpu, replace=True)
OmegaConf.register_new_resolver("run_name", run_name, replace=True)
OmegaConf.register_new_resolver("fresh_dir", fresh_dir, replace=True, use_cache=True)


def freeze_imports() -> None:
    """Once per process, when torch and Lightning are imported: their millions of objects live as long as the
    process, so the garbage collector need not scan them in every full collection, nor at exit (where it took
    about 1.4 s on a 2-core machine; see docs/performance.md)."""
    if gc.get_freeze_count() == 0:
        gc.freeze()


def run_identity(cfg: DictConfig) -> dict:
    """What every metrics.json says about which run it is, completed or failed. `job_num` is the run's place in its
    sweep (the report's order, whose first variant is the default baseline): a sweep's run continued alone
    (`resume=<run dir>`) keeps the place its metrics.json gave it; a single run has none."""
    hydra_cfg = HydraConfig.get()
    job_num = OmegaConf.select(hydra_cfg, "job.num", default=None)  # a single run: a sweep's run's, kept
    if not isinstance(job_num, int):  # a run continued alone before SameRunCheck kept its number
        job_num = (read_metrics(Path(hydra_cfg.runtime.output_dir)) or {}).get("job_num")
    return {"seed": cfg.seed, "overrides": list(hydra_cfg.overrides.task), "job_num": job_num}


def objective(metrics: dict) -> Optional[float]:
    return metrics["best_val_acc"] if metrics["status"] == "completed" else None


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> Optional[float]:
    """Returns the objective a sweeper (Optuna) optimizes: the run's best validation accuracy, or None when
    the run has none to offer (failed or diverged), which the Optuna sweeper records as a failed trial.
    (Not NaN: hydra-optuna-sweeper 1.3.0.dev0 then tells Optuna a failure with a value and crashes.)"""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        return one_run(cfg, run_dir)
    except KeyboardInterrupt:
        # Ctrl+C outside training (imports, loading the data, testing): training saves on a stop signal itself.
        print(f"{run_dir}: stopped by SIGINT outside training, nothing new saved; to continue: "
              f"{how_to_continue(run_dir)}", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)


def one_run(cfg: DictConfig, run_dir: Path) -> Optional[float]:
    """Skip, refuse, or train and test the run into `run_dir`, and record it (`main`'s return value)."""
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:  # a single run's dir was checked by SameRunCheck
        refuse_other_run(run_dir, cfg)  # another config's run stays as it is, and the sweep stops
    previous = read_metrics(run_dir)
    if previous is not None and previous["status"] in RESULT_STATUSES:
        # Re-running a sweep into its dir redoes only what has no result yet.
        # Deleting metrics.json alone would resume from the last checkpoint and only test again.
        log.info("%s: already %s, skipping (delete its dir to train it again)", run_dir.name, previous["status"])
        return objective(previous)
    try:
        check_config(cfg)
    except UserError as e:
        return refuse(e, cfg, run_dir, epochs_done=0)
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from cifar_ablate import training
    from cifar_ablate.checkpointing import ResumeCheckpoint
    freeze_imports()
    progress = training.RunProgress(print_lines=False)
    resume = ResumeCheckpoint(run_dir / "checkpoints" / "last.ckpt")
    try:
        metrics = {**training.train(cfg, run_dir, progress, resume), **run_identity(cfg)}
    except UserError as e:
        return refuse(e, cfg, run_dir, progress.epochs_done)
    except SIGTERMException:
        # Stopped by a signal: not a result. The same command continues from the checkpoint; a sweep stops.
        signame = signal.Signals(resume.stopped_by).name
        saved = f"{resume.path} saved" if resume.path.exists() else "no checkpoint yet"
        write_metrics(run_dir, {"status": "interrupted", "signal": signame, "epoch": progress.epochs_done,
                                **run_identity(cfg)})
        why = "as the sweep process that started it is gone" if resume.orphaned else f"by {signame}"
        print(f"{run_dir}: stopped {why} in epoch {progress.epochs_done + 1} ({progress.epochs_done} "
              f"finished); {saved}; to continue: {how_to_continue(run_dir)}", file=sys.stderr)
        if resume.orphaned:  # a pool worker no one waits on: end the process, not just this task
            logging.shutdown()
            sys.stderr.flush()
            os._exit(128 + resume.stopped_by)
        sys.exit(128 + resume.stopped_by)
    except SystemExit:  # after SIGTERMException, which is one
        if resume.ctrl_c:  # Lightning's sys.exit(1) for a Ctrl+C inside fit or test: told as one, by main
            raise KeyboardInterrupt from None
        raise
    except Exception as e:
        # A crashed run is recorded as such; in a sweep the other runs go on and the sweep exits non-zero.
        log.exception("run failed")
        write_metrics(run_dir, {"status": "failed", "error": f"{type(e).__name__}: {e}", "epoch": progress.epochs_done,
                                **run_identity(cfg)})
        if hydra_cfg.mode != RunMode.MULTIRUN:
            raise
        return None
    write_metrics(run_dir, metrics)
    best = metrics["best_val_acc"]  # -inf when no epoch validated (max_epochs < check_val_every_n_epoch)
    log.info("%s: test_acc %.4f  best_val_acc %s  (%s, %d epoch%s, %.1f s)", metrics["name"], metrics["test_acc"],
             f"{best:.4f}" if math.isfinite(best) else "none (no epoch validated)", metrics["status"],
             metrics["epochs"], "" if metrics["epochs"] == 1 else "s", metrics["train_seconds"])
    return objective(metrics)


def how_to_continue(run_dir: Path) -> str:
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        return f"rerun the sweep with hydra.sweep.dir={run_dir.parent}"
    return f"python -m cifar_ablate resume={run_dir}"  # a plain rerun would start in a new dir


def refuse(error: UserError, cfg: DictConfig, run_dir: Path, epochs_done: int) -> None:
    """A user error: one line and exit 2. In a sweep, an error of this sweep point alone (a value the sweep
    varies, or this run's checkpoint) instead fails only this run: recorded, and the other runs go on (the
    sweep exits 1 at its end, as for a crashed run). An error every point shares stops the sweep at once."""
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        # What a sweep varies names its runs: hydra.job.override_dirname, e.g. `model=lenet,optimizer.lr=0`.
        varying = {override_key(item) for item in name_items(hydra_cfg.job.override_dirname)}
        if isinstance(error, CheckpointError) or varying & set(getattr(error, "keys", ())):
            print(f"error: {error}", file=sys.stderr)
            import lightning.fabric.utilities.rank_zero  # noqa: F401  (sets the process's rank, from the environment)
            write_metrics(run_dir, {"status": "failed", "error": f"{type(error).__name__}: {error}",
                                    "epoch": epochs_done, **run_identity(cfg)})
            return None
        restore_plan(run_dir.parent)  # the whole command is refused: its plan is not the study's
        remove_if_only_hydras(run_dir, f"{hydra_cfg.job.name}.log")  # else reported as running or stopped
    exit_with_error(error)


def remove_if_only_hydras(run_dir: Path, log_name: str) -> None:
    """Remove a run dir that holds nothing but what Hydra wrote as the job started (its .hydra record and log),
    and the sweep dir around it if that leaves it empty: a refused command's, not a run of the study."""
    if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {".hydra", log_name}:
        shutil.rmtree(run_dir)
        with contextlib.suppress(OSError):  # not empty: other runs, or the plan of an earlier command
            run_dir.parent.rmdir()


def resume_overrides(args: list[str]) -> list[str]:
    """Turn `resume=<run dir>` into the overrides that run was started with plus `hydra.run.dir=<run dir>`:
    the same command into the same dir, which continues from its checkpoint. Other arguments may only
    change where and how it runs (the keys never part of a run's name, e.g. trainer.accelerator)."""
    given = [a for a in args if a.startswith("resume=")]
    if not given:
        return args
    run_dir = Path(given[-1].split("=", 1)[1])
    if {"-m", "--multirun"} & set(args):
        raise UserError(f"{given[-1]}: continues one run; to continue a sweep, rerun its command with "
                        "hydra.sweep.dir=<its dir>")
    saved = run_dir / ".hydra" / "overrides.yaml"
    if not saved.is_file():
        raise UserError(f"{given[-1]}: not a run dir (no {saved}); pass the dir holding the run's metrics.json "
                        "and checkpoints/")
    where_and_how = where_and_how_keys()
    others = [a for a in args if not a.startswith("resume=")]

    latest, first = list(OmegaConf.load(saved)), first_overrides(run_dir)
    # What the run computes as it started; where and how as the latest command into the dir said (data moved).
    own = latest if first is None else [a for a in first if override_key(a) not in where_and_how] + [
        a for a in latest if override_key(a) in where_and_how]
    # Its own value may be repeated (a reused command line).
    changed = [a for a in others if override_key(a) not in where_and_how and a not in own]
    if changed:
        raise UserError(f"{given[-1]}: continues with the run's own config, so {changed[0]} cannot be given; "
                        f"only where and how it runs may change ({', '.join(sorted(where_and_how))})")
    quoted_dir = "'" + str(run_dir).replace("'", "\\'") + "'"  # a sweep's run dir holds '=' and ','
    keys = {override_key(a) for a in others}
    kept = [a for a in own if override_key(a) not in keys]  # e.g. data.root moved
    return [*kept, *others, "hydra.mode=RUN", f"hydra.run.dir={quoted_dir}"]


def quote_baseline(args: list[str]) -> list[str]:
    """`baseline=model=lenet_bn` as `baseline='model=lenet_bn'`: a run name holds `=` (and `,`), which Hydra's
    override grammar takes only quoted, refusing the plain form with a message that names no key."""
    return [f"baseline='{a.split('=', 1)[1]}'" if a.startswith("baseline=") and "=" in a.split("=", 1)[1]
            and a.split("=", 1)[1][:1] not in "'\"" else a for a in args]


def check_one_mode(args: list[str]) -> None:
    """Hydra takes one of its modes a command; its own refusal of two is a traceback. Read with Hydra's parser."""
    try:
        from hydra._internal.utils import get_args_parser
    except ImportError:  # moved by a Hydra upgrade: Hydra's own refusal (a traceback), not a failing command
        return
    parsed = get_args_parser().parse_known_args(args)[0]
    modes = [flag for flag, given in (("--run", parsed.run), ("--multirun", parsed.multirun), ("--cfg", parsed.cfg),
                                      ("--info", parsed.info), ("--shell-completion", parsed.shell_completion))
             if given]
    if len(modes) > 1:
        hint = "; to see a sweep point's config, give its values without -m" if "--multirun" in modes else ""
        raise UserError(f"{' and '.join(modes)}: give one of --run, --multirun, --cfg, --info, --shell-completion"
                        + hint)
    if parsed.multirun or parsed.info or parsed.shell_completion:
        return
    from hydra.core.override_parser.overrides_parser import OverridesParser
    try:
        overrides = OverridesParser.create().parse_overrides(parsed.overrides)
    except Exception:  # a malformed override: Hydra's own message names it
        return
    sweeps = [o.input_line for o in overrides if o.is_sweep_override()]
    if sweeps:  # Hydra's refusal is a block of lines ("Ambiguous value for argument")
        raise UserError(f"{sweeps[0]}: a sweep of values runs with -m (python -m cifar_ablate -m {' '.join(sweeps)} ...); "
                        "without it a command is one run")


def cli() -> None:
    """`python -m cifar_ablate`: `main` with `resume=<run dir>` expanded and a `baseline=` run name quoted first."""
    try:
        check_one_mode(sys.argv[1:])
        sys.argv[1:] = resume_overrides(quote_baseline(sys.argv[1:]))
    except UserError as e:
        exit_with_error(e)
    sys.stdout = ReaderGoneStdout(sys.stdout)
    try:
        main()
    except KeyboardInterrupt:  # in a sweep process whose trials run elsewhere (joblib): each stops and says so
        if {"-m", "--multirun"} & set(sys.argv[1:]):
            print("stopped by SIGINT; each run continues from its last checkpoint: rerun the sweep's command with "
                  "hydra.sweep.dir=<its dir>", file=sys.stderr)
        else:  # before the run started (Hydra composing its config)
            print("stopped by SIGINT before the run started; nothing saved", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)

