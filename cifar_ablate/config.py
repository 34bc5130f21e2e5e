"""The config schema (OmegaConf checks types and keys when Hydra composes) and the range checks
that run before any training.

Groups whose options are keyword arguments of a class (model, optimizer, scheduler, trainer, logger)
are open mappings here; their keys are fixed by their YAML files, so a misspelt key is still refused.
This module imports neither torch nor Lightning at load (the checks that need them import them last), so a
mistyped override is reported in about a second, not after several seconds of imports.
"""
import collections.abc
import difflib
import inspect
import sys
import types
import typing
from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from cifar_ablate.errors import ConfigError

# The official archive and the training set's per-channel statistics (data.py reads these too).
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)

# The config tree lives beside the package (conf/ at the repo root); an absolute path is a file path to Hydra.
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def where_and_how_keys() -> set[str]:
    """The keys that say where and how a run executes, not what it computes (never part of a run's name)."""
    return set(OmegaConf.load(Path(CONFIG_DIR) / "config.yaml").hydra.job.config.override_dirname.exclude_keys)


Loader = Enum("Loader", {name: name for name in ("tensor", "torch")})


@dataclass
class DataConfig:
    root: str = "data"
    download: bool = False
    url: str = CIFAR10_URL
    md5: str = CIFAR10_MD5
    batch_size: int = 64
    eval_batch_size: int = 1000
    val_size: int = 5000
    split_seed: int = 0
    train_fraction: float = 1.0
    normalize: bool = True
    mean: List[float] = field(default_factory=lambda: list(MEAN))
    std: List[float] = field(default_factory=lambda: list(STD))
    loader: Loader = Loader.tensor
    num_workers: int = 0


@dataclass
class AugmentConfig:
    crop_padding: int = 0
    flip: bool = False
    rotation: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0


@dataclass
class RegularizationConfig:
    l1: float = 0.0
    l2: float = 0.0
    squared: bool = True
    layers: Optional[List[str]] = None


@dataclass
class InitConfig:
    scheme: str = "default"  # a name in weight_init.SCHEMES, checked by check_config


# torch.compile's modes; reduce-overhead replays the compiled forward and backward as CUDA graphs.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    regularization: RegularizationConfig = field(default_factory=RegularizationConfig)
    init: InitConfig = field(default_factory=InitConfig)
    model: Any = MISSING
    optimizer: Any = MISSING
    scheduler: Any = MISSING
    trainer: Any = MISSING
    logger: Any = MISSING
    seed: int = 0
    name: Optional[str] = None
    compile: bool = False
    compile_mode: str = "default"
    channels_last: bool = True
    # The variant a sweep's report compares the others against (a run name such as model=lenet,
    # seeds aside); null: the first variant.
    baseline: Optional[str] = None


ConfigStore.instance().store(name="run_schema", node=RunConfig)


def _require(ok: bool, key: str, value, fits: str):
    if not ok:
        raise ConfigError(f"{key}={value}: {fits}", keys=(key,))


def _require_number(group: DictConfig, prefix: str, keys: tuple, none_ok: bool = False):
    """The open groups (model, optimizer, ...) have no schema types: a value the range checks compare must be a number."""
    for key in keys:
        if key in group:
            value = group[key]
            ok = (value is None and none_ok) or (isinstance(value, (int, float)) and not isinstance(value, bool))
            _require(ok, f"{prefix}.{key}", value, "must be a number")


TYPED_GROUPS = {"data": DataConfig, "augment": AugmentConfig, "regularization": RegularizationConfig,
                "init": InitConfig}
OPEN_GROUPS = ("model", "optimizer", "scheduler", "trainer", "logger")  # their options' classes take the keys
# Keys of an open group that cifar_ablate reads itself instead of passing them to the group's class.
OWN_KEYS = {"scheduler": {"interval", "monitor"}}
# The metrics a scheduler may step on (`scheduler.monitor`), logged after every validation, and the way each improves.
MONITORED = {"val/loss": "min", "val/acc": "max"}
# Groups whose class cifar_ablate builds with an argument of its own (hydra's partial: the rest from the YAML).
BUILT_LATER = {"optimizer": "the model's parameters", "scheduler": "the optimizer"}
# Keys whose null the classifier fills from the run's length (Classifier.scheduler_length), whatever the class declares.
FILLED_IN = {"scheduler": {"T_max", "total_steps"}}
# Keyword arguments cifar_ablate passes itself (the parameters, the optimizer, the trainer's logger, ...).
PASSED_BY_US = {"params", "optimizer", "logger", "callbacks", "default_root_dir"}


def _did_you_mean(key: str, known) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f"; did you mean {close[0]}?" if close else ""


def _check_schema_keys(cfg: DictConfig) -> None:
    """A key added with `+` that the schema lacks (`+optimzer.lr=0.1`, `+data.batchsize=8`): the schema refuses a
    misspelt key only without `+`, which Hydra's own message suggests adding, and nothing would read it."""
    top = {f.name for f in fields(RunConfig)}
    for key in cfg:
        if key not in top:
            raise ConfigError(f"{key}: not a config group or key, so nothing would read it{_did_you_mean(key, top)}")
    for group, schema in TYPED_GROUPS.items():
        known = {f.name for f in fields(schema)}
        for key in cfg[group]:
            if key not in known:
                raise ConfigError(f"{group}.{key}: not a key of {group}{_did_you_mean(key, known)}")


def _setters(group: str, key: str, choices: dict) -> list[str]:
    """The options picked in other groups whose YAML sets `group.key` (regularization=dropout_0.3_0.2 sets
    model.dropout2)."""
    found = []
    for other, choice in choices.items():
        path = Path(CONFIG_DIR) / other / f"{choice}.yaml"
        if other != group and isinstance(choice, str) and path.is_file():
            if OmegaConf.select(OmegaConf.load(path), f"{group}.{key}", default=None) is not None:
                found.append(f"{other}={choice}")
    return found


def _is_union(annotation) -> bool:
    return typing.get_origin(annotation) is typing.Union or isinstance(annotation, types.UnionType)


def _is_sequence(origin) -> bool:
    return origin in (list, tuple, collections.abc.Sequence, collections.abc.Iterable)


def _fits(annotation, value) -> Optional[bool]:
    """Whether `value` (as YAML or the command line gave it) fits the type `annotation` declares; None where that
    cannot be told here (a class, an annotation left a string), which is then not checked."""
    from omegaconf import ListConfig
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if annotation is type(None):
        return value is None
    if getattr(annotation, "__module__", "") == "torch" and getattr(annotation, "__name__", "") == "Tensor":
        return False  # no YAML value is a tensor
    if origin is typing.Literal:
        return value in args
    if _is_union(annotation):
        fits = [_fits(a, value) for a in args]
        return True if any(fits) else None if None in fits else False
    if _is_sequence(origin) and args:
        if not isinstance(value, (list, tuple, ListConfig)):
            return False
        homogeneous = origin is not tuple or len(args) == 1 or args[-1] is Ellipsis
        if not homogeneous and len(args) != len(value):
            return False
        fits = [_fits(args[0] if homogeneous else args[i], v) for i, v in enumerate(value)]
        return False if False in fits else None if None in fits else True
    return None


PLURAL = {"true or false": "true/false values", "a whole number": "whole numbers", "a number": "numbers",
          "a string": "strings"}


def _describe(annotation) -> str:
    """A declared type as a refusal names it: `a whole number`, `true or false`, `a list of whole numbers`."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    names = {bool: "true or false", int: "a whole number", float: "a number", str: "a string", type(None): "null"}
    if annotation in names:
        return names[annotation]
    if origin is typing.Literal:
        return "one of " + ", ".join(map(str, args))
    if _is_union(annotation):
        choices = [v for a in args if typing.get_origin(a) is typing.Literal for v in typing.get_args(a)]
        others = [a for a in args if typing.get_origin(a) is not typing.Literal]
        listed = ["one of " + ", ".join(dict.fromkeys(map(str, choices)))] if choices else []  # 16 and "16" once
        parts = listed + [d for d in map(_describe, others) if d]
        if "a number" in parts:  # a whole number is one
            parts = [d for d in parts if d != "a whole number"]
        return " or ".join(dict.fromkeys(parts))
    if _is_sequence(origin):
        inner = _describe(args[0]) if args else ""
        return f"a list of {PLURAL[inner]}" if inner in PLURAL else "a list"
    return ""


def _type_error(parameter, value) -> Optional[str]:
    """What the value must be, when it does not fit the type its class declares for `parameter` (undeclared: a
    bool default makes it a bool); None when it fits or cannot be told. A class's None default takes None."""
    annotation = parameter.annotation
    if annotation is inspect.Parameter.empty:
        annotation = bool if isinstance(parameter.default, bool) else None
    if annotation is None or (value is None and parameter.default is None) or _fits(annotation, value) is not False:
        return None
    return f"must be {_describe(annotation) or 'of type ' + str(annotation)}"


def _signature(built) -> dict:
    """The parameters of a class, their annotations as types, also where a module postpones them (`from __future__
    import annotations`) and names them only for type checkers (`Iterable` unimported): each evaluated with
    typing's names at hand, and left a string (unchecked) where that fails."""
    try:
        return dict(inspect.signature(built, eval_str=True).parameters)
    except Exception:  # noqa: BLE001  (a name the annotations cannot resolve)
        pass
    params = dict(inspect.signature(built).parameters)
    owner = getattr(built, "__init__", built)
    names = {**vars(typing), **vars(collections.abc), **vars(sys.modules.get(getattr(owner, "__module__", ""), typing))}
    for name, parameter in params.items():
        if isinstance(parameter.annotation, str):
            try:
                params[name] = parameter.replace(annotation=eval(parameter.annotation, names))  # noqa: S307
            except Exception:  # noqa: BLE001
                pass
    return params


def _check_class_keys(cfg: DictConfig, choices: dict) -> None:
    """Every key of an open group must be a parameter of the class it builds (LeNet takes no dropout2): else the
    run would fail with a traceback as it builds, after the data has loaded."""
    from hydra.utils import get_object
    for group in OPEN_GROUPS:
        node = cfg[group]
        target = node.get("_target_")
        if not target:  # e.g. scheduler=none: nothing is built, so nothing would read a key
            unused = [k for k in node if not k.startswith("_") and k not in OWN_KEYS.get(group, ())]
            if unused:
                raise ConfigError(f"{group}.{unused[0]}: {group}={choices.get(group, 'this option')} builds nothing, "
                                  "so nothing would read it")
            continue
        if group in BUILT_LATER and node.get("_partial_") is not True:
            raise ConfigError(f"{group}={choices.get(group, 'this option')}: its YAML needs `_partial_: true`, as "
                              f"cifar_ablate passes {BUILT_LATER[group]} itself when it builds the {group}",
                              keys=(group,))
        try:
            built = get_object(target)
        except Exception as e:  # noqa: BLE001  (a class that is not there, or not in this torch)
            raise ConfigError(f"{group}._target_={target}: cannot be imported ({type(e).__name__})",
                              keys=(group, f"{group}._target_")) from None
        params = _signature(built)
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            continue  # takes any keyword (TensorBoardLogger passes them on)
        takes = set(params) - PASSED_BY_US
        for key in node:
            if key in takes:
                # An open group has no schema to convert values: `no` would be a string, so true; `abc` a width.
                filled_in = node[key] is None and key in FILLED_IN.get(group, ())
                fault = None if filled_in else _type_error(params[key], node[key])
                if fault:
                    raise ConfigError(f"{group}.{key}={node[key]}: {fault}", keys=(f"{group}.{key}",))
                continue
            if key.startswith("_") or key in OWN_KEYS.get(group, ()):
                continue
            choice, setters = choices.get(group), _setters(group, key, choices)
            hint = _did_you_mean(key, takes)
            message = f"{group}.{key}: not a parameter of {target.rsplit('.', 1)[-1]}"
            message += f" ({group}={choice})" if choice else ""
            message += f", which {' and '.join(setters)} sets" if setters else hint
            allowed = sorted(takes | OWN_KEYS.get(group, set()))
            message += f"; it takes {', '.join(allowed)}" if len(allowed) <= 12 and (setters or not hint) else ""
            # Set by another option (dropout_0.3_0.2): in a sweep that varies either group, only the points it
            # breaks fail. Given by hand (+model.dropuot): every point shares it, and the sweep stops at once.
            raise ConfigError(message, keys=(group, *(s.split("=")[0] for s in setters)) if setters else ())


def group_choices(cfg: Optional[DictConfig] = None) -> dict:
    """The option each config group picked, Hydra's own groups aside: from `cfg`'s hydra node where it has one
    (a Hydra callback's config), else from the Hydra job running now."""
    from hydra.core.hydra_config import HydraConfig
    hydra_cfg = cfg.hydra if cfg is not None and "hydra" in cfg else HydraConfig.get()
    return {k: v for k, v in hydra_cfg.runtime.choices.items() if not k.startswith("hydra")}


def check_config(cfg: DictConfig, choices: Optional[dict] = None) -> None:
    """Raise ConfigError naming the first value that cannot work, before anything is trained. `choices`: the
    option picked in each group (to say which option set a key), read from the Hydra job when not given."""
    if choices is None:
        from hydra.core.hydra_config import HydraConfig
        choices = group_choices() if HydraConfig.initialized() else {}  # {}: a config composed by hand
        for group in (*TYPED_GROUPS, *OPEN_GROUPS):
            if choices and group not in choices:  # Hydra records no choice for a list of options
                raise ConfigError(f"{group}: a list of options ({group}=[a,b]) merges them into one run; to compare "
                                  f"them, sweep: -m {group}=a,b", keys=(group,))
    _check_schema_keys(cfg)
    _require_number(cfg.model, "model", ("dropout", "dropout2"), none_ok=True)
    _require_number(cfg.model, "model", ("blocks_per_stage",))
    _require_number(cfg.optimizer, "optimizer", ("lr", "weight_decay", "momentum", "alpha"))
    _require_number(cfg.scheduler, "scheduler", ("gamma", "step_size", "eta_min", "base_lr", "max_lr",
                                                 "step_size_up", "pct_start"))
    _require_number(cfg.scheduler, "scheduler", ("T_max", "total_steps"), none_ok=True)  # null: from the trainer
    _require_number(cfg.trainer, "trainer", ("max_epochs", "limit_train_batches", "limit_val_batches",
                                             "limit_test_batches", "check_val_every_n_epoch", "gradient_clip_val"),
                    none_ok=True)
    _require_number(cfg.trainer, "trainer", ("max_steps", "num_nodes", "log_every_n_steps", "accumulate_grad_batches",
                                             "num_sanity_val_steps"))
    for key in ("max_epochs", "max_steps", "check_val_every_n_epoch", "log_every_n_steps", "accumulate_grad_batches",
                "num_sanity_val_steps"):  # counts: Lightning asserts on 1.5 with a traceback
        value = cfg.trainer.get(key)
        _require(value is None or isinstance(value, int), f"trainer.{key}", value, "must be a whole number")
    _require(0 <= cfg.seed < 2**32, "seed", cfg.seed, "must be in [0, 2**32)")
    _require(0 <= cfg.data.split_seed < 2**32, "data.split_seed", cfg.data.split_seed, "must be in [0, 2**32)")
    _require(cfg.compile_mode in COMPILE_MODES, "compile_mode", cfg.compile_mode,
             f"must be one of {', '.join(COMPILE_MODES)}")
    model = cfg.model
    for key in ("dropout", "dropout2"):
        p = model.get(key)
        _require(p is None or 0 <= p < 1, f"model.{key}", p, "must be in [0, 1) (0 turns dropout off)")

    opt = cfg.optimizer
    _require(opt.get("lr", 1) > 0, "optimizer.lr", opt.get("lr"), "must be > 0")
    _require(opt.get("weight_decay", 0) >= 0, "optimizer.weight_decay", opt.get("weight_decay"), "must be >= 0")
    _require(0 <= opt.get("momentum", 0) < 1, "optimizer.momentum", opt.get("momentum"), "must be in [0, 1)")
    _require(cfg.scheduler.get("interval", "epoch") in ("epoch", "step"), "scheduler.interval",
             cfg.scheduler.get("interval"), "must be epoch or step")
    monitor = cfg.scheduler.get("monitor")
    _require(monitor is None or monitor in MONITORED, "scheduler.monitor", monitor,
             f"must be one of {', '.join(MONITORED)}")
    _require(monitor is None or cfg.scheduler.get("mode", "min") == MONITORED[monitor], "scheduler.mode",
             cfg.scheduler.get("mode"), f"must be {MONITORED.get(monitor)} for scheduler.monitor={monitor}")
    # A monitored metric is new only after a validation, which runs at the end of an epoch.
    _require(monitor is None or cfg.scheduler.get("interval", "epoch") == "epoch", "scheduler.interval",
             cfg.scheduler.get("interval"), f"must be epoch for scheduler.monitor={monitor} (it steps after each "
             "validation, at an epoch's end)")
    _require(monitor is None or cfg.trainer.get("limit_val_batches") != 0, "trainer.limit_val_batches",
             cfg.trainer.get("limit_val_batches"), f"must be > 0 for scheduler.monitor={monitor}: without "
             "validation there is no metric to step on")
    _require(cfg.scheduler.get("gamma", 1) > 0, "scheduler.gamma", cfg.scheduler.get("gamma"), "must be > 0")
    for key in ("step_size", "step_size_up", "T_max", "total_steps"):  # lengths in epochs or steps
        value = cfg.scheduler.get(key)
        _require(value is None or value >= 1, f"scheduler.{key}", value, "must be >= 1")
    _require(0 < cfg.scheduler.get("pct_start", 0.5) < 1, "scheduler.pct_start", cfg.scheduler.get("pct_start"),
             "must be in (0, 1)")
    for key in ("base_lr", "max_lr"):
        _require(cfg.scheduler.get(key, 1) > 0, f"scheduler.{key}", cfg.scheduler.get(key), "must be > 0")

    data = cfg.data
    _require(data.batch_size >= 1, "data.batch_size", data.batch_size, "must be >= 1")
    _require(data.eval_batch_size >= 1, "data.eval_batch_size", data.eval_batch_size, "must be >= 1")
    _require(data.val_size >= 0, "data.val_size", data.val_size, "must be >= 0 (0 validates on the test set)")
    _require(0 < data.train_fraction <= 1, "data.train_fraction", data.train_fraction, "must be in (0, 1]")
    _require(len(data.mean) == 3, "data.mean", list(data.mean), "needs 3 values, one per channel")
    _require(len(data.std) == 3 and min(data.std) > 0, "data.std", list(data.std), "needs 3 values, all > 0")
    _require(data.num_workers >= 0, "data.num_workers", data.num_workers, "must be >= 0")
    _require(data.num_workers == 0 or data.loader == Loader.torch, "data.num_workers", data.num_workers,
             "applies to data.loader=torch only (the default tensor loader has no worker processes)")

    aug = cfg.augment
    _require(0 <= aug.crop_padding <= 16, "augment.crop_padding", aug.crop_padding, "must be in [0, 16]")
    _require(0 <= aug.rotation <= 180, "augment.rotation", aug.rotation, "must be in [0, 180] degrees")
    for key in ("brightness", "contrast", "saturation"):
        _require(0 <= aug[key] <= 1, f"augment.{key}", aug[key], "must be in [0, 1]")

    reg = cfg.regularization
    _require(reg.l1 >= 0, "regularization.l1", reg.l1, "must be >= 0")
    _require(reg.l2 >= 0, "regularization.l2", reg.l2, "must be >= 0")

    for key in ("limit_train_batches", "limit_test_batches"):  # 0 would train, or test, nothing
        value = cfg.trainer.get(key)
        _require(value is None or value > 0, f"trainer.{key}", value, "must be > 0 (a fraction or a batch count)")
    every = cfg.trainer.get("check_val_every_n_epoch")
    _require(every is None or every >= 1, "trainer.check_val_every_n_epoch", every, "must be >= 1")
    every = cfg.trainer.get("log_every_n_steps", 50)
    _require(every >= 0, "trainer.log_every_n_steps", every, "must be >= 0 (0 logs no step values)")
    max_epochs = cfg.trainer.get("max_epochs")
    _require(max_epochs is None or max_epochs >= 1 or cfg.trainer.get("max_steps", -1) > 0,
             "trainer.max_epochs", max_epochs, "must be >= 1")

    # Last, the checks whose names live with torch code: the imports then cost nothing extra.
    from cifar_ablate.models.activation import ACTIVATIONS
    from cifar_ablate.weight_init import SCHEMES
    _require(model.get("activation", "relu") in ACTIVATIONS, "model.activation", model.get("activation"),
             f"must be one of {', '.join(ACTIVATIONS)}")
    _require(cfg.init.scheme in SCHEMES, "init.scheme", cfg.init.scheme, f"must be one of {', '.join(SCHEMES)}")
    _check_class_keys(cfg, choices)
    _require(not cfg.trainer.get("fast_dev_run"), "trainer.fast_dev_run", cfg.trainer.get("fast_dev_run"),
             "not supported: it turns off logging and checkpoints and trains a batch, so its run would look like a "
             "result; for a quick check use trainer.max_epochs=1 trainer.limit_train_batches=2 "
             "trainer.limit_val_batches=2 trainer.limit_test_batches=2")

    devices, strategy = cfg.trainer.get("devices", 1), cfg.trainer.get("strategy", "auto")
    several = (isinstance(devices, int) and (devices > 1 or devices == -1)) or cfg.trainer.get("num_nodes", 1) > 1
    if several:
        from lightning.fabric.plugins.environments import SLURMEnvironment
        # Lightning's default DDP runs this command line again for every further process: a sweep once per
        # process. Not under SLURM, whose tasks are the processes.
        if not (SLURMEnvironment.detect() or strategy not in ("auto", "ddp", "ddp_find_unused_parameters_false",
                                                               "ddp_find_unused_parameters_true")):
            raise ConfigError(f"trainer.devices={devices} with trainer.strategy={strategy}: Lightning's DDP re-runs "
                              "the whole command in each further process; for several devices use trainer=ddp "
                              "(ddp_spawn: workers for fit only)", keys=("trainer.devices", "trainer.strategy"))
