"""One run: check the config, build data, model and trainer from it, train, test, write metrics.json.

`python -m cifar_ablate [overrides]` enters at `main`; with `-m` Hydra calls it once per sweep point.
"""
import gc
import json
import logging
import math
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback as HydraCallback
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf, read_write
from omegaconf.errors import InterpolationResolutionError

from cifar_ablate.augment import BatchAugment
from cifar_ablate.classifier import Classifier
from cifar_ablate.config import check_config
from cifar_ablate.data import CIFAR10DataModule
from cifar_ablate.checkpointing import ResumeCheckpoint, check_checkpoint
from cifar_ablate.errors import UserError
from cifar_ablate.penalty import WeightPenalty
from cifar_ablate.report import CUSTOM_SCALARS_LAYOUT
from cifar_ablate.weight_init import init_weights

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
            print(f"error: {key}: cannot write the output dir ({reason}); pass a writable {key}=<dir>",
                  file=sys.stderr)
            sys.exit(2)


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
    return "ddp" if SLURMEnvironment.detect() else "ddp_spawn"


def trial_gpu():
    """trainer=gpu's devices: one GPU. In a sweep on a machine with several, trial n takes GPU n mod their
    count, so trials run side by side on different GPUs (hydra/launcher=parallel, n_jobs = the count)."""
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
    cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return if_cuda if cuda else otherwise


OmegaConf.register_new_resolver("on_cuda", on_cuda, replace=True)
OmegaConf.register_new_resolver("ddp_strategy", ddp_strategy, replace=True)
OmegaConf.register_new_resolver("trial_gpu", trial_gpu, replace=True)
OmegaConf.register_new_resolver("run_name", run_name, replace=True)
OmegaConf.register_new_resolver("fresh_dir", fresh_dir, replace=True, use_cache=True)


class RunProgress(Callback):
    """Counts finished epochs, times training, and prints one line per epoch when there is no progress bar.

    An epoch's line is printed when the next epoch starts (or training ends): the training metrics of an
    epoch are logged by the module's on_train_epoch_end, which Lightning calls after the callbacks'.
    """

    def __init__(self, print_lines: bool):
        self.print_lines = print_lines
        self.epochs_done = 0
        self.train_seconds = 0.0
        self.epoch_seconds: list[float] = []
        self._start = self._epoch_start = None
        self._printed = 0

    def on_train_start(self, trainer, pl_module):
        self._start = self._epoch_start = time.perf_counter()  # a run resumed mid-epoch starts no epoch
        self._printed = self.epochs_done = trainer.current_epoch  # a resumed run starts past 0

    def on_train_epoch_end(self, trainer, pl_module):
        self.epochs_done = trainer.current_epoch + 1
        self.epoch_seconds.append(round(time.perf_counter() - self._epoch_start, 3))

    def _print_finished_epoch(self, trainer):
        if not self.print_lines or not trainer.is_global_zero or self._printed == self.epochs_done:
            return
        self._printed = self.epochs_done
        m = trainer.callback_metrics
        parts = [f"epoch {self.epochs_done}/{trainer.max_epochs}"]
        parts += [f"{k} {float(m[k]):.4f}" for k in ("train/loss_epoch", "val/loss", "val/acc") if k in m]
        parts.append(f"{time.perf_counter() - self._start:.1f}s")
        print("  ".join(parts), flush=True)

    def on_train_epoch_start(self, trainer, pl_module):
        self._print_finished_epoch(trainer)
        self._epoch_start = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        self._print_finished_epoch(trainer)
        self.train_seconds = time.perf_counter() - self._start
        # Under trainer=ddp (ddp_spawn) this runs in a worker process; Lightning sends rank 0's
        # callback_metrics back to the process that called fit, so the counters go home with them.
        trainer.callback_metrics.update({
            "progress/epochs_done": torch.tensor(self.epochs_done),
            "progress/train_seconds": torch.tensor(self.train_seconds, dtype=torch.float64),
            "progress/epoch_seconds": torch.tensor(self.epoch_seconds, dtype=torch.float64)})

    def collect(self, trainer) -> None:
        """After fit, in the process that called it: take over what the (possibly spawned) workers counted."""
        m = trainer.callback_metrics
        if "progress/epochs_done" in m:  # absent when fit had no epoch left to train
            self.epochs_done = int(m["progress/epochs_done"])
            self.train_seconds = float(m["progress/train_seconds"])
            self.epoch_seconds = m["progress/epoch_seconds"].tolist()


@rank_zero_only  # under SLURM with trainer=ddp every task runs the job; only rank 0 records the run
def write_metrics(run_dir: Path, content: dict) -> None:
    """Write the run's metrics.json whole or not at all: a reader never sees a half-written file. NaN and
    inf become null (strict JSON); a diverged run says so in its status."""
    content = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in content.items()}
    path = run_dir / "metrics.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(content, indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)


def build_datamodule(cfg: DictConfig) -> CIFAR10DataModule:
    data = OmegaConf.to_container(cfg.data, resolve=True, enum_to_str=True)
    data["root"] = hydra.utils.to_absolute_path(data["root"])
    return CIFAR10DataModule(**data, augment=BatchAugment(**cfg.augment), seed=cfg.seed)


def build_classifier(cfg: DictConfig) -> Classifier:
    model = init_weights(instantiate(cfg.model), cfg.init.scheme.name)
    penalty = WeightPenalty(model, **OmegaConf.to_container(cfg.regularization))
    scheduler_cfg = OmegaConf.to_container(cfg.scheduler, resolve=True)
    interval = scheduler_cfg.pop("interval")
    scheduler = instantiate(scheduler_cfg) if scheduler_cfg.get("_target_") else None
    return Classifier(model, instantiate(cfg.optimizer), scheduler, interval, penalty,
                      compile_model=cfg.compile, compile_mode=cfg.compile_mode, channels_last=cfg.channels_last)


def hparams_of(cfg: DictConfig, choices: dict) -> dict:
    """What the HPARAMS tab shows: the group choices and the values most studies vary."""
    params = {group: str(choice) for group, choice in choices.items()}
    params.update({"seed": cfg.seed, "batch_size": cfg.data.batch_size, "lr": cfg.optimizer.lr,
                   "weight_decay": cfg.optimizer.get("weight_decay", 0.0), "dropout": cfg.model.get("dropout", 0.0),
                   "l1": cfg.regularization.l1, "l2": cfg.regularization.l2})
    return params


def run_identity(cfg: DictConfig) -> dict:
    """What every metrics.json says about which run it is, completed or failed."""
    hydra_cfg = HydraConfig.get()
    return {"seed": cfg.seed, "overrides": list(hydra_cfg.overrides.task), "job_num": hydra_cfg.job.get("num", 0)}


def objective(metrics: dict) -> Optional[float]:
    return metrics["best_val_acc"] if metrics["status"] == "completed" else None


def read_metrics(run_dir: Path) -> Optional[dict]:
    path = run_dir / "metrics.json"
    return json.loads(path.read_text()) if path.exists() else None


def peak_gpu_memory_mb(trainer: L.Trainer) -> Optional[float]:
    """The CUDA caching allocator's peak during this run (what it held, not only what tensors used; without
    the CUDA context, which nvidia-smi adds), in MiB: None off CUDA, and where spawned workers trained
    (trainer=ddp) and this process only tested."""
    device = trainer.strategy.root_device
    if device.type != "cuda" or trainer.world_size > 1:
        return None
    return round(torch.cuda.max_memory_reserved(device) / 2**20, 1)


def train(cfg: DictConfig, run_dir: Path, progress: RunProgress, resume: ResumeCheckpoint) -> dict:
    check_config(cfg)
    if torch.cuda.is_initialized():  # a launcher's worker that ran a trial before: count this run's peak only
        gc.collect()  # the previous trial's tensors, held in reference cycles
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    classifier = build_classifier(cfg)  # model weights drawn right after seeding
    datamodule = build_datamodule(cfg)
    datamodule.prepare_data()
    datamodule.load()  # bad data fails here, before a logger or trainer writes anything

    logger = instantiate(cfg.logger)
    if isinstance(logger, TensorBoardLogger):
        logger.experiment.add_custom_scalars(CUSTOM_SCALARS_LAYOUT)
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    if trainer_cfg.get("enable_progress_bar") is None:
        trainer_cfg["enable_progress_bar"] = sys.stdout.isatty()
    progress.print_lines = not trainer_cfg["enable_progress_bar"]
    # Redrawing the bar every step costs more than the step.
    bar = [TQDMProgressBar(refresh_rate=20)] if trainer_cfg["enable_progress_bar"] else []
    callbacks = [progress, LearningRateMonitor(), resume,
                 # No monitor and top-1: last.ckpt is rewritten at the end of every epoch.
                 ModelCheckpoint(dirpath=resume.path.parent, filename=resume.path.stem, enable_version_counter=False),
                 *bar]
    trainer = instantiate(trainer_cfg, logger=logger, callbacks=callbacks, default_root_dir=str(run_dir))

    # An interrupted run continues where its checkpoint was taken: same data order, weights and RNG.
    last = resume.path
    if last.exists():
        check_checkpoint(last, classifier.state_dict())
        log.info("%s: resuming from %s", run_dir.name, last)
    trainer.fit(classifier, datamodule=datamodule, ckpt_path=last if last.exists() else None, weights_only=True)
    progress.collect(trainer)
    tester = trainer
    if trainer.world_size > 1:
        # Test here on one device: DDP would pad the test set with repeated images so that every process
        # gets as many (skewing test_acc), and a spawn strategy would start its workers once more.
        one_device = {"devices": 1, "num_nodes": 1, "strategy": "auto", "sync_batchnorm": False}
        tester = instantiate({**trainer_cfg, **one_device}, logger=logger, callbacks=bar, enable_checkpointing=False,
                             default_root_dir=str(run_dir))
    test = tester.test(classifier, datamodule=datamodule, verbose=False)[0]

    hydra_cfg = HydraConfig.get()
    metrics = {
        "status": "diverged" if bool(classifier.diverged) else "completed",
        "test_acc": test["test/acc"],
        "test_loss": test["test/loss"],
        "best_val_acc": float(classifier.val_acc_best.max_value),  # also right where fit ran in workers
        "epochs": progress.epochs_done,
        "train_seconds": round(progress.train_seconds, 3),
        "epoch_seconds": progress.epoch_seconds,  # each epoch trained by this process (a resumed run: since resuming)
        "images_per_second": round(len(progress.epoch_seconds) * datamodule.num_train_images
                                   / max(progress.train_seconds, 1e-9), 1),
        "params": sum(p.numel() for p in classifier.model.parameters()),
        "peak_gpu_memory_mb": peak_gpu_memory_mb(trainer),
        "name": cfg.name or run_dir.name,
        "choices": {k: v for k, v in hydra_cfg.runtime.choices.items() if not k.startswith("hydra")},
        **run_identity(cfg),
    }
    final = {f"hparams/{k}": metrics[k] for k in ("test_acc", "test_loss", "best_val_acc")}
    if isinstance(logger, TensorBoardLogger):  # the HPARAMS tab pairs hyperparameters with these metrics
        logger.log_hyperparams(hparams_of(cfg, metrics["choices"]), final)
    else:
        logger.log_hyperparams(hparams_of(cfg, metrics["choices"]))
        logger.log_metrics(final)
    logger.finalize("success")
    return metrics


# The config tree lives beside the package (conf/ at the repo root); an absolute path is a file path to Hydra.
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> Optional[float]:
    """Returns the objective a sweeper (Optuna) optimizes: the run's best validation accuracy, or None when
    the run has none to offer (failed or diverged), which the Optuna sweeper records as a failed trial.
    (Not NaN: hydra-optuna-sweeper 1.3.0.dev0 then tells Optuna a failure with a value and crashes.)"""
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    progress = RunProgress(print_lines=False)
    resume = ResumeCheckpoint(run_dir / "checkpoints" / "last.ckpt")
    previous = read_metrics(run_dir)
    if previous is not None and previous.get("status") in ("completed", "diverged"):
        # Re-running a sweep into its dir redoes only what has no result yet.
        log.info("%s: already %s, skipping (delete its metrics.json to rerun)", run_dir.name, previous["status"])
        return objective(previous)
    try:
        metrics = train(cfg, run_dir, progress, resume)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except SIGTERMException:
        # Stopped by a signal: not a result. The same command continues from the checkpoint; a sweep stops.
        signame = signal.Signals(resume.stopped_by).name
        saved = f"{resume.path} saved" if resume.path.exists() else "no checkpoint yet"
        write_metrics(run_dir, {"status": "interrupted", "signal": signame, "epoch": progress.epochs_done,
                                **run_identity(cfg)})
        print(f"{run_dir}: stopped by {signame} in epoch {progress.epochs_done + 1}; {saved}; "
              "run the same command to continue", file=sys.stderr)
        sys.exit(128 + resume.stopped_by)
    except Exception as e:
        # A crashed run is recorded as such; in a sweep the other runs go on and the sweep exits non-zero.
        log.exception("run failed")
        write_metrics(run_dir, {"status": "failed", "error": f"{type(e).__name__}: {e}", "epoch": progress.epochs_done,
                                **run_identity(cfg)})
        if hydra_cfg.mode != RunMode.MULTIRUN:
            raise
        return None
    write_metrics(run_dir, metrics)
    log.info("%s: test_acc %.4f  best_val_acc %.4f  (%s, %d epochs, %.1f s)", metrics["name"],
             metrics["test_acc"], metrics["best_val_acc"], metrics["status"], metrics["epochs"],
             metrics["train_seconds"])
    return objective(metrics)


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
    where_and_how = set(OmegaConf.load(Path(CONFIG_DIR) / "config.yaml").hydra.job.config.override_dirname.exclude_keys)
    others = [a for a in args if not a.startswith("resume=")]
    changed = [a for a in others if a.split("=", 1)[0].lstrip("+~") not in where_and_how]
    if changed:
        raise UserError(f"{given[-1]}: continues with the run's own config, so {changed[0]} cannot be given; "
                        f"only where and how it runs may change ({', '.join(sorted(where_and_how))})")
    quoted_dir = "'" + str(run_dir).replace("'", "\\'") + "'"  # a sweep's run dir holds '=' and ','
    keys = {a.split("=", 1)[0] for a in others}
    kept = [a for a in OmegaConf.load(saved) if a.split("=", 1)[0] not in keys]  # e.g. data.root moved
    return [*kept, *others, "hydra.mode=RUN", f"hydra.run.dir={quoted_dir}"]


def cli() -> None:
    """`python -m cifar_ablate`: `main` with `resume=<run dir>` expanded first."""
    try:
        sys.argv[1:] = resume_overrides(sys.argv[1:])
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    main()

