"""Building a run from its config and training it: data module, classifier, trainer, fit, test.

Imported by `cifar_ablate.run` only once the config has passed its checks, since torch, Lightning and
torchvision take seconds to import.
"""
import gc
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Optional

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, OmegaConf

from cifar_ablate.augment import BatchAugment
from cifar_ablate.checkpointing import ResumeCheckpoint, check_checkpoint
from cifar_ablate.classifier import Classifier
from cifar_ablate.config import group_choices
from cifar_ablate.data import NUM_CLASSES, CIFAR10DataModule
from cifar_ablate.errors import ConfigError
from cifar_ablate.penalty import WeightPenalty
from cifar_ablate.report import CUSTOM_SCALARS_LAYOUT
from cifar_ablate.run_record import write_run_config
from cifar_ablate.weight_init import init_weights

log = logging.getLogger(__name__)


class DropLines(logging.Filter):
    """Drops a logger's records whose message contains one of `parts`."""

    def __init__(self, *parts: str):
        super().__init__()
        self.parts = parts

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(part in record.getMessage() for part in self.parts)


# Lines Lightning prints that say nothing true or useful about a run here.
LIGHTNING_NOISE = {
    # An advertisement at every fit; Lightning's word for a Ctrl+C outside training, which run.main says in its own.
    "lightning.pytorch.utilities.rank_zero": ("💡 Tip: ", "Detected KeyboardInterrupt"),
    # A Ctrl+C reaches Lightning as SIGTERM (checkpointing.ROUTED_TO_SIGTERM); run.main names the real signal.
    "lightning.pytorch.trainer.connectors.signal_connector": ("Received SIGTERM",),
}
WARNING_NOISE = (
    r"Checkpoint directory .* exists and is not empty",  # the run's own last.ckpt, which a resume continues
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",  # inside Lightning, for the torch it runs on
)


def quiet_lightning() -> None:
    """Each line once, and none of Lightning's noise. Safe to call for every run of a sweep."""
    # The `lightning` package gives its logger a console handler of its own, and Hydra's root handlers (the
    # console and run.log) get every line too: printed twice. Where Hydra has set up logging, keep only Hydra's.
    if logging.getLogger().hasHandlers():
        for handler in logging.getLogger("lightning").handlers[:]:
            logging.getLogger("lightning").removeHandler(handler)
    for name, parts in LIGHTNING_NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropLines) for f in logger.filters):
            logger.addFilter(DropLines(*parts))
    for message in WARNING_NOISE:
        warnings.filterwarnings("ignore", message=message)  # an identical filter replaces the earlier one


class RunProgress(Callback):
    """Counts finished epochs, times training, and prints one line per epoch when there is no progress bar.

    An epoch's line is printed when the next epoch starts (or training ends): the training metrics of an
    epoch are logged by the module's on_train_epoch_end, which Lightning calls after the callbacks'.
    The counts travel in every checkpoint, so a resumed run's times and images cover the whole run, not only
    what ran after the resume (time a kill lost after the last checkpoint is not counted: that work is redone).
    """

    def __init__(self, print_lines: bool):
        self.print_lines = print_lines
        self.epochs_done = 0
        self.train_seconds = 0.0
        self.epoch_seconds: list[float] = []
        self.images_trained = 0  # by all processes
        self._start = self._epoch_start = None  # _epoch_start is None between epochs
        self._seconds_before = 0.0  # trained before this process resumed the run
        self._epoch_seconds_before = 0.0  # of the epoch a mid-epoch checkpoint was taken in
        self._printed = 0
        self._validated = 0  # the last epoch (from 1) that validation ran after

    def _seconds(self) -> float:
        return self._seconds_before + (time.perf_counter() - self._start if self._start is not None else 0.0)

    def state_dict(self) -> dict:
        in_epoch = 0.0 if self._epoch_start is None else time.perf_counter() - self._epoch_start
        return {"train_seconds": self._seconds(), "epoch_seconds": list(self.epoch_seconds),
                "epoch_seconds_so_far": in_epoch, "images_trained": self.images_trained}

    def load_state_dict(self, state: dict) -> None:  # Lightning calls it before on_train_start
        self._seconds_before = state["train_seconds"]
        self.epoch_seconds = list(state["epoch_seconds"])
        self._epoch_seconds_before = state["epoch_seconds_so_far"]
        self.images_trained = state["images_trained"]

    def on_train_start(self, trainer, pl_module):
        self._start = time.perf_counter()
        self._epoch_start = self._start - self._epoch_seconds_before  # a run resumed mid-epoch starts no epoch
        self._printed = self.epochs_done = trainer.current_epoch  # a resumed run starts past 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        # Counted, not derived from the split: trainer.limit_train_batches, a resumed partial epoch or max_steps
        # train less. Every process trains a batch of this size (DDP pads the last ones).
        self.images_trained += len(batch[1]) * trainer.world_size

    def on_train_epoch_end(self, trainer, pl_module):
        self.epochs_done = trainer.current_epoch + 1
        self.epoch_seconds.append(round(time.perf_counter() - self._epoch_start, 3))
        self._epoch_start = None  # the epoch-end checkpoint, saved after this, is taken between epochs

    def _print_finished_epoch(self, trainer):
        if not self.print_lines or not trainer.is_global_zero or self._printed == self.epochs_done:
            return
        self._printed = self.epochs_done
        m = trainer.callback_metrics
        # Validation every few epochs (check_val_every_n_epoch) leaves its last values in callback_metrics.
        validated = self._validated == self.epochs_done
        shown = ("train/loss_epoch", "val/loss", "val/acc") if validated else ("train/loss_epoch",)
        parts = [f"epoch {self.epochs_done}/{trainer.max_epochs}"]
        parts += [f"{k} {float(m[k]):.4f}" for k in shown if k in m]
        parts.append(f"{self._seconds():.1f}s")
        print("  ".join(parts), flush=True)

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            self._validated = trainer.current_epoch + 1

    def on_train_epoch_start(self, trainer, pl_module):
        self._print_finished_epoch(trainer)
        self._epoch_start = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        self._print_finished_epoch(trainer)
        self.train_seconds = self._seconds()
        # Under trainer=ddp (ddp_spawn) this runs in a worker process; Lightning sends rank 0's
        # callback_metrics back to the process that called fit, so the counters go home with them.
        trainer.callback_metrics.update({
            "progress/epochs_done": torch.tensor(self.epochs_done),
            "progress/train_seconds": torch.tensor(self.train_seconds, dtype=torch.float64),
            "progress/epoch_seconds": torch.tensor(self.epoch_seconds, dtype=torch.float64),
            "progress/images_trained": torch.tensor(self.images_trained)})

    def collect(self, trainer) -> None:
        """After fit, in the process that called it: take over what the (possibly spawned) workers counted."""
        m = trainer.callback_metrics
        if "progress/epochs_done" in m:
            self.epochs_done = int(m["progress/epochs_done"])
            self.train_seconds = float(m["progress/train_seconds"])
            self.epoch_seconds = m["progress/epoch_seconds"].tolist()
            self.images_trained = int(m["progress/images_trained"])
        else:  # fit had no epoch left to train (stopped after its last checkpoint): the checkpoint's counts
            self.epochs_done = trainer.current_epoch
            self.train_seconds = self._seconds_before


def build_datamodule(cfg: DictConfig) -> CIFAR10DataModule:
    data = OmegaConf.to_container(cfg.data, resolve=True, enum_to_str=True)
    data["root"] = hydra.utils.to_absolute_path(data["root"])
    return CIFAR10DataModule(**data, augment=BatchAugment(**cfg.augment), seed=cfg.seed)


def build_model(cfg: DictConfig) -> torch.nn.Module:
    """The configured network, tried on two blank CIFAR-10 images before its init scheme is applied: values that
    build no working classifier (blocks_per_stage=0, a custom model's wrong sizes) are the user's to fix, in one
    line. The try draws no random numbers and changes no state (eval mode, no grad), so weights stay as seeded."""
    target, keys = cfg.model._target_, ("model", *(f"model.{k}" for k in cfg.model if not k.startswith("_")))
    try:
        model = instantiate(cfg.model)
    except InstantiationException as e:
        if not isinstance(e.__cause__, (ValueError, TypeError)):
            raise
        raise ConfigError(f"model: {target} refused its values ({first_line(e.__cause__)})", keys=keys) from None
    model.eval()
    try:
        with torch.no_grad():
            logits = model(torch.zeros(2, 3, 32, 32))
    except (RuntimeError, ValueError, IndexError) as e:  # torch's word for mismatched shapes is RuntimeError
        values = ", ".join(f"{k}={v}" for k, v in cfg.model.items() if not k.startswith("_"))
        raise ConfigError(f"model: {target} ({values}) fails on a batch of 3x32x32 images ({first_line(e)})",
                          keys=keys) from None
    finally:
        model.train()
    if tuple(getattr(logits, "shape", ())) != (2, NUM_CLASSES):
        shape = tuple(logits.shape) if hasattr(logits, "shape") else type(logits).__name__
        raise ConfigError(f"model: {target} returns {shape} for 2 images; a CIFAR-10 classifier returns "
                          f"(N, {NUM_CLASSES}) logits", keys=keys)
    return init_weights(model, cfg.init.scheme)


def build_classifier(cfg: DictConfig) -> Classifier:
    model = build_model(cfg)
    penalty = WeightPenalty(model, **OmegaConf.to_container(cfg.regularization))
    scheduler_cfg = OmegaConf.to_container(cfg.scheduler, resolve=True)
    interval, monitor = scheduler_cfg.pop("interval", "epoch"), scheduler_cfg.pop("monitor", None)
    scheduler = instantiate(scheduler_cfg) if scheduler_cfg.get("_target_") else None
    return Classifier(model, instantiate(cfg.optimizer), scheduler, interval, penalty, scheduler_monitor=monitor,
                      compile_model=cfg.compile, compile_mode=cfg.compile_mode, channels_last=cfg.channels_last)


# The groups whose values the HPARAMS tab lists, each named as an override names it (model.batch_norm).
HPARAM_GROUPS = ("model", "optimizer", "scheduler", "regularization", "init", "augment")


def hparams_of(cfg: DictConfig, choices: dict) -> dict:
    """What the HPARAMS tab shows: the group choices, the seed, the batch size and every value the groups above
    set, so that any key a sweep varies (model.activation, optimizer.lr) tells its runs apart there; values that
    are no number, string or bool (lists) as text."""
    params = {group: str(choice) for group, choice in choices.items()}
    params.update({"seed": cfg.seed, "data.batch_size": cfg.data.batch_size, "data.normalize": cfg.data.normalize})
    for group in HPARAM_GROUPS:
        for key, value in OmegaConf.to_container(cfg[group], resolve=True).items():
            if not key.startswith("_"):
                params[f"{group}.{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return params


def first_line(error: Exception) -> str:
    """An error's message, its first line (omegaconf's and torch's add lines of context); a KeyError's unquoted."""
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    return text.splitlines()[0] if text.strip() else type(error).__name__


def peak_gpu_memory_mb(trainer: L.Trainer) -> Optional[float]:
    """The CUDA caching allocator's peak during this run (what it held, not only what tensors used; without
    the CUDA context, which nvidia-smi adds), in MiB: None off CUDA, and where spawned workers trained
    (trainer=ddp) and this process only tested."""
    device = trainer.strategy.root_device
    if device.type != "cuda" or trainer.world_size > 1:
        return None
    return round(torch.cuda.max_memory_reserved(device) / 2**20, 1)


def train(cfg: DictConfig, run_dir: Path, progress: RunProgress, resume: ResumeCheckpoint) -> dict:
    """Fit and test one run of a checked config; the metrics for metrics.json, the run's identity aside."""
    if torch.cuda.is_initialized():  # a launcher's worker that ran a trial before: count this run's peak only
        gc.collect()  # the previous trial's tensors, held in reference cycles
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    quiet_lightning()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    classifier = build_classifier(cfg)  # model weights drawn right after seeding
    # torch checks an optimizer's and a scheduler's values (betas, eps, start_factor, ...) only when they are built,
    # which Lightning does mid-fit: built here once, on a copy of the optimizer, so a bad value is one line.
    try:
        optimizer = classifier.optimizer_factory(classifier.parameters())
    except (ValueError, TypeError, IndexError) as e:  # IndexError: a list too short (betas=[0.9])
        raise ConfigError(f"optimizer: {cfg.optimizer._target_} refused its values ({first_line(e)})") from None
    if classifier.scheduler_factory is not None:
        try:
            classifier.scheduler_factory(optimizer, **classifier.scheduler_length(steps=100, epochs=10))
        except (ValueError, TypeError, IndexError, KeyError, ArithmeticError) as e:  # KeyError: last_epoch given
            raise ConfigError(f"scheduler: {cfg.scheduler._target_} refused its values ({first_line(e)})") from None
    datamodule = build_datamodule(cfg)
    datamodule.prepare_data()
    datamodule.load()  # bad data fails here, before a logger or trainer writes anything

    logger = instantiate(cfg.logger)  # writes nothing until first used
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    if trainer_cfg.get("enable_progress_bar") is None:
        trainer_cfg["enable_progress_bar"] = sys.stdout.isatty()
    progress.print_lines = not trainer_cfg["enable_progress_bar"]
    # Each process already takes its share of every epoch (epoch_indices): a DistributedSampler that Lightning
    # put around data.loader=torch's sampler would shard it a second time.
    trainer_cfg["use_distributed_sampler"] = False
    # Redrawing the bar every step costs more than the step.
    bar = [TQDMProgressBar(refresh_rate=20)] if trainer_cfg["enable_progress_bar"] else []
    callbacks = [progress, LearningRateMonitor(), resume,
                 # No monitor and top-1: last.ckpt is rewritten at the end of every epoch, after its validation
                 # (by default Lightning would save only after validations, so not between check_val_every_n_epoch).
                 ModelCheckpoint(dirpath=resume.path.parent, filename=resume.path.stem, enable_version_counter=False,
                                 save_on_train_epoch_end=True),
                 *bar]
    try:
        trainer = instantiate(trainer_cfg, logger=logger, callbacks=callbacks, default_root_dir=str(run_dir))
    except InstantiationException as e:
        # Lightning refusing a trainer.* value (precision, accelerator, ...) is the user's to fix; anything else
        # (a broken driver, a bug) keeps its traceback.
        if not isinstance(e.__cause__, (ValueError, TypeError, ImportError, MisconfigurationException)):
            raise
        asked, refusal = str(trainer_cfg.get("accelerator", "auto")), str(e.__cause__).lower()
        # The refusal is of the accelerator (a TPU's names the package it lacks, torch_xla); a name Lightning does
        # not know is refused with the names it knows, which need no hint.
        missing = (asked not in ("cpu", "auto") and not (asked in ("gpu", "cuda") and torch.cuda.is_available())
                   and "invalid accelerator name" not in refusal
                   and (asked.lower() in refusal or "accelerator" in refusal or "torch_xla" in refusal))
        hint = (f" (no {asked} here: trainer=cpu, or trainer.accelerator=auto, runs on what this machine has)"
                if missing else "")
        raise ConfigError(f"trainer: {e.__cause__}{hint}") from None

    # An interrupted run continues where its checkpoint was taken: same data order, weights and RNG.
    last = resume.path
    if last.exists():
        check_checkpoint(last, classifier.state_dict())
        log.info("%s: resuming from %s", run_dir.name, last)
    else:  # a fresh start: logs an earlier attempt left (its checkpoint deleted) are not this run's, and the
        # report would read their epochs as this run's
        for stale in (*run_dir.glob("events.out.tfevents.*"), run_dir / "metrics.csv"):
            stale.unlink(missing_ok=True)
        write_run_config(run_dir, cfg)  # what a later rerun into this dir is compared with
    if isinstance(logger, TensorBoardLogger):  # the first write to the run's logs, once nothing can be refused
        logger.experiment.add_custom_scalars(CUSTOM_SCALARS_LAYOUT)
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
        "epoch_seconds": progress.epoch_seconds,
        "images_trained": progress.images_trained,
        "images_per_second": round(progress.images_trained / max(progress.train_seconds, 1e-9), 1),
        "params": sum(p.numel() for p in classifier.model.parameters()),
        "peak_gpu_memory_mb": peak_gpu_memory_mb(trainer),
        "name": cfg.name or run_dir.name,
        "choices": group_choices(),
    }
    final = {f"hparams/{k}": metrics[k] for k in ("test_acc", "test_loss", "best_val_acc")}
    if isinstance(logger, TensorBoardLogger):  # the HPARAMS tab pairs hyperparameters with these metrics
        logger.log_hyperparams(hparams_of(cfg, metrics["choices"]), final)
    else:
        logger.log_hyperparams(hparams_of(cfg, metrics["choices"]))
        logger.log_metrics(final)
    logger.finalize("success")
    return metrics
