"""Init schemes, weight penalties, optimizers and schedulers do what their formulas say."""
import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from cifar_ablate.errors import ConfigError
from cifar_ablate.penalty import WeightPenalty
from cifar_ablate.training import build_classifier, build_model
from cifar_ablate.weight_init import init_weights


class Wide(nn.Module):
    """Layers large enough for sample statistics to be close to their formulas."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(64, 128, 3)   # fan_in 576, fan_out 1152
        self.bn = nn.BatchNorm2d(128)
        self.fc = nn.Linear(1000, 400)     # fan_in 1000, fan_out 400


FANS = {"conv": (576, 1152), "fc": (1000, 400)}
STD = {  # the std each scheme's formula gives, from (fan_in, fan_out)
    "xavier_normal": lambda fi, fo: math.sqrt(2 / (fi + fo)),
    "kaiming_normal": lambda fi, fo: math.sqrt(2 / fi),
}
BOUND = {
    "xavier_uniform": lambda fi, fo: math.sqrt(6 / (fi + fo)),
    "kaiming_uniform": lambda fi, fo: math.sqrt(6 / fi),
}


@pytest.mark.parametrize("scheme", sorted(STD))
def test_normal_schemes_draw_with_the_formula_std(scheme):
    torch.manual_seed(0)
    model = init_weights(Wide(), scheme)
    for name, (fan_in, fan_out) in FANS.items():
        w = getattr(model, name).weight
        assert abs(w.mean().item()) < 0.05 * STD[scheme](fan_in, fan_out)
        assert w.std().item() == pytest.approx(STD[scheme](fan_in, fan_out), rel=0.03)
        assert torch.all(getattr(model, name).bias == 0)


@pytest.mark.parametrize("scheme", sorted(BOUND))
def test_uniform_schemes_fill_the_formula_bound(scheme):
    torch.manual_seed(0)
    model = init_weights(Wide(), scheme)
    for name, (fan_in, fan_out) in FANS.items():
        w, bound = getattr(model, name).weight, BOUND[scheme](fan_in, fan_out)
        assert w.abs().max().item() <= bound
        assert w.abs().max().item() > 0.99 * bound
        assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.03)  # std of U(-b, b)
        assert torch.all(getattr(model, name).bias == 0)


def test_orthogonal_rows_are_orthonormal():
    model = init_weights(Wide(), "orthogonal")
    w = model.fc.weight  # 400 x 1000: rows orthonormal
    assert torch.allclose(w @ w.T, torch.eye(400), atol=1e-4)
    assert torch.all(model.fc.bias == 0)


def test_schemes_leave_batchnorm_alone_and_default_changes_nothing():
    torch.manual_seed(0)
    model = Wide()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    init_weights(model, "default")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    init_weights(model, "kaiming_normal")
    assert torch.all(model.bn.weight == 1) and torch.all(model.bn.bias == 0)
    assert not torch.equal(before["fc.weight"], model.fc.weight)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(2, 2)
        self.fc2 = nn.Linear(2, 1)
        with torch.no_grad():
            self.fc1.weight.copy_(torch.tensor([[1.0, -2.0], [3.0, -4.0]]))
            self.fc2.weight.copy_(torch.tensor([[0.5, -0.5]]))
            self.fc1.bias.fill_(100.0)  # biases are never penalized


def test_penalties_equal_their_formulas():
    m = Tiny()
    l1_all = (1 + 2 + 3 + 4) + (0.5 + 0.5)
    sq_all = (1 + 4 + 9 + 16) + (0.25 + 0.25)
    assert WeightPenalty(m, l1=0.1)().item() == pytest.approx(0.1 * l1_all)
    assert WeightPenalty(m, l2=0.01)().item() == pytest.approx(0.01 * sq_all)
    assert WeightPenalty(m, l1=0.1, l2=0.01)().item() == pytest.approx(0.1 * l1_all + 0.01 * sq_all)


def test_penalty_limited_to_fc1_with_the_unsquared_norm_as_the_homework():
    m = Tiny()
    assert WeightPenalty(m, l2=0.5, squared=False, layers=["fc1"])().item() == pytest.approx(0.5 * math.sqrt(30))
    assert WeightPenalty(m, l1=0.5, layers=["fc1"])().item() == pytest.approx(0.5 * 10)


def test_penalty_on_an_unknown_layer_names_the_layers_there_are():
    with pytest.raises(ConfigError, match=r"no layer fc9; its layers are fc1, fc2"):
        WeightPenalty(Tiny(), l1=1.0, layers=["fc9"])


@pytest.mark.parametrize("option, cls", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam),
                                         ("adamw", torch.optim.AdamW), ("rmsprop", torch.optim.RMSprop)])
def test_optimizer_options_build_with_lr_and_weight_decay(compose_config, option, cls):
    cfg = compose_config([f"optimizer={option}", "optimizer.lr=0.123", "optimizer.weight_decay=0.004"])
    opt = instantiate(cfg.optimizer)(nn.Linear(2, 2).parameters())
    assert type(opt) is cls
    assert opt.param_groups[0]["lr"] == 0.123 and opt.param_groups[0]["weight_decay"] == 0.004


def test_weight_decay_regularization_reaches_the_optimizer(compose_config):
    cfg = compose_config(["regularization=weight_decay"])
    opt = instantiate(cfg.optimizer)(nn.Linear(2, 2).parameters())
    assert opt.param_groups[0]["weight_decay"] == 5e-4
    assert cfg.regularization.l1 == 0 and cfg.regularization.l2 == 0


def test_dropout_regularization_sets_the_model_dropout(compose_config):
    cfg = compose_config(["model=lenet", "regularization=dropout"])
    assert instantiate(cfg.model).drop1.p == 0.5


def lr_trace(compose_config, tmp_path, cifar_root, scheduler, epochs=2, extra=(), validate_every=1):
    """Train a few tiny epochs and return the learning rate seen at every optimizer step."""
    import lightning as L

    from cifar_ablate.training import build_datamodule

    cfg = compose_config(["data.root=" + str(cifar_root), "data.val_size=50", "data.batch_size=50",
                          f"scheduler={scheduler}", f"trainer.max_epochs={epochs}", *extra])
    classifier, datamodule = build_classifier(cfg), build_datamodule(cfg)
    seen = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, *args):
            seen.append(trainer.optimizers[0].param_groups[0]["lr"])

    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[Record()],
                        check_val_every_n_epoch=validate_every)
    trainer.fit(classifier, datamodule=datamodule)
    return seen, classifier.scheduler_interval


def test_step_scheduler_changes_lr_only_between_epochs(compose_config, tmp_path, cifar_root):
    # 250 training images / 50 = 5 batches per epoch.
    seen, interval = lr_trace(compose_config, tmp_path, cifar_root, "step", epochs=3,
                              extra=["scheduler.step_size=1", "scheduler.gamma=0.5"])
    assert interval == "epoch"
    assert seen == pytest.approx([0.01] * 5 + [0.005] * 5 + [0.0025] * 5)


def test_cyclic_scheduler_moves_within_an_epoch(compose_config, tmp_path, cifar_root):
    seen, interval = lr_trace(compose_config, tmp_path, cifar_root, "cyclic", epochs=1,
                              extra=["scheduler.step_size_up=2", "scheduler.base_lr=0.001", "scheduler.max_lr=0.005"])
    assert interval == "step"
    assert seen == pytest.approx([0.001, 0.003, 0.005, 0.003, 0.001])


def test_plateau_steps_after_each_validation_on_its_fresh_value(compose_config, tmp_path, cifar_root):
    """Validating every 2 epochs: stepped at epochs 2, 4 and 6, never in between (until session 14 it stepped every
    epoch and failed at the first, before any validation). A threshold no loss can meet: the first step sets the
    best, every later one reduces the LR."""
    seen, _ = lr_trace(compose_config, tmp_path, cifar_root, "plateau", epochs=6, validate_every=2,
                       extra=["scheduler.patience=0", "scheduler.factor=0.5", "+scheduler.threshold=10",
                              "+scheduler.threshold_mode=abs"])
    assert seen == pytest.approx([0.01] * 20 + [0.005] * 10)


def test_onecycle_fills_its_length_from_the_trainer(compose_config, tmp_path, cifar_root):
    seen, interval = lr_trace(compose_config, tmp_path, cifar_root, "onecycle", epochs=2)
    assert interval == "step" and len(seen) == 10
    assert max(seen) == pytest.approx(0.1, rel=0.05) and seen[-1] < seen[0]


def test_cosine_decays_over_max_epochs(compose_config, tmp_path, cifar_root):
    seen, _ = lr_trace(compose_config, tmp_path, cifar_root, "cosine", epochs=2)
    assert seen[:5] == pytest.approx([0.01] * 5) and seen[5:] == pytest.approx([0.005] * 5)


def test_compile_mode_is_checked_then_handed_to_torch_compile(compose_config, monkeypatch):
    from cifar_ablate.config import check_config
    with pytest.raises(ConfigError, match=r"^compile_mode=fast: must be one of default, reduce-overhead, "):
        check_config(compose_config(["compile_mode=fast"]))
    modes = []

    def fake_compile(model, mode):
        modes.append(mode)
        return model
    monkeypatch.setattr(torch, "compile", fake_compile)
    cfg = compose_config(["compile=true", "compile_mode=reduce-overhead"])
    check_config(cfg)
    build_classifier(cfg)
    build_classifier(compose_config(["compile=false", "compile_mode=reduce-overhead"]))
    assert modes == ["reduce-overhead"]


def _classifier_outside_a_trainer(compose_config, overrides=()):
    """A Classifier whose training_step runs without a Trainer: never a logging step."""
    from types import SimpleNamespace
    classifier = build_classifier(compose_config(["model=lenet", *overrides]))
    classifier._trainer = SimpleNamespace(global_step=0, log_every_n_steps=10**9)
    return classifier


def test_epoch_training_loss_and_accuracy_are_means_over_images_not_over_batches(compose_config):
    classifier = _classifier_outside_a_trainer(compose_config, ["regularization=l2", "regularization.l2=0.01"])
    torch.manual_seed(0)
    sizes, data_losses, penalties, hits = (48, 2), [], [], 0
    for n in sizes:
        x, y = torch.randn(n, 3, 32, 32), torch.randint(0, 10, (n,))
        with torch.no_grad():  # LeNet has no dropout or batch norm: the step sees these logits
            hits += classifier(x).argmax(1).eq(y).sum().item()
        total = classifier.training_step((x, y), 0)
        penalties.append(classifier.penalty().item())
        data_losses.append(total.item() - penalties[-1])
        with torch.no_grad():  # as an optimizer step would, so the second batch's penalty differs
            for p in classifier.parameters():
                p.mul_(1.5)

    def weighted(values):
        return (sizes[0] * values[0] + sizes[1] * values[1]) / sum(sizes)
    # Else the weighting would not show.
    assert data_losses[0] != pytest.approx(data_losses[1], abs=1e-3) and penalties[0] != pytest.approx(penalties[1])
    assert classifier.train_means.compute()["loss"].item() == pytest.approx(weighted(data_losses), rel=1e-5)
    assert classifier.train_means.compute()["penalty"].item() == pytest.approx(weighted(penalties), rel=1e-5)
    assert classifier.train_means.compute()["acc"].item() == pytest.approx(hits / sum(sizes))


@pytest.mark.parametrize("precision, dtype", [("16-true", torch.float16), ("bf16-true", torch.bfloat16)])
def test_metric_states_stay_float32_when_the_trainer_casts_the_module(compose_config, precision, dtype):
    """A float16 sum of an epoch's losses overflows (a healthy run would end as diverged); a bfloat16 one drops
    terms, and a bfloat16 best accuracy rounds to steps of 0.004."""
    from lightning.pytorch.plugins.precision import HalfPrecision
    classifier = HalfPrecision(precision).convert_module(build_classifier(compose_config(["model=lenet"])))
    assert next(classifier.model.parameters()).dtype == dtype  # the cast Lightning makes did happen
    means = classifier.train_means
    means.reset()  # as every epoch starts: the states are rebuilt from their defaults
    for _ in range(703):  # one epoch of 45,000 images at batch 64: the data loss sums to about 103,000
        means.update(torch.tensor(2.3, dtype=dtype), torch.zeros(64, 10, dtype=dtype), torch.zeros(64, dtype=torch.long),
                     torch.tensor(0.01, dtype=dtype))
    assert means.loss_sum.dtype == torch.float32
    result = means.compute()
    assert result["loss"].item() == pytest.approx(torch.tensor(2.3, dtype=dtype).item(), rel=1e-5)
    assert result["penalty"].item() == pytest.approx(torch.tensor(0.01, dtype=dtype).item(), rel=1e-4)
    assert result["acc"].item() == 1.0
    classifier.val_acc_best.reset()
    classifier.val_acc_best.update(torch.tensor(0.8123))
    assert classifier.val_acc_best.compute().item() == torch.tensor(0.8123).item()  # not 0.8125


def test_training_step_moves_no_value_between_host_and_device(compose_config):
    """No .item() and no tensor built from Python data in the step: on CUDA either one blocks the host."""
    from torch.overrides import TorchFunctionMode
    calls = []

    class Watch(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            name = getattr(func, "__name__", str(func))
            from_python = name in ("tensor", "as_tensor", "scalar_tensor") and not isinstance(args[0], torch.Tensor)
            if from_python or name in ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__"):
                calls.append(name)
            return func(*args, **(kwargs or {}))

    classifier = _classifier_outside_a_trainer(compose_config, ["regularization=l1", "regularization.l1=0.001"])
    batch = (torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)))
    with Watch():
        for _ in range(3):
            classifier.training_step(batch, 0).backward()
    assert calls == []


@pytest.mark.parametrize("every, steps", [(3, list(range(2, 26, 3))), (0, [])])
def test_step_values_are_logged_on_the_steps_the_logger_writes(compose_config, tmp_path, cifar_root, monkeypatch,
                                                               every, steps):
    """The step's own loss reaches the logger every log_every_n_steps steps, and no other step pays for self.log;
    0 logs no step values (Lightning's meaning; the step divided by it before session 9)."""
    import csv

    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from cifar_ablate.classifier import Classifier
    from cifar_ablate.training import build_datamodule

    cfg = compose_config(["data.root=" + str(cifar_root), "data.val_size=50", "data.batch_size=20"])
    classifier, datamodule = build_classifier(cfg), build_datamodule(cfg)
    logged = {}  # global step -> the loss handed to self.log on it
    real_log = Classifier.log

    def spy(self, name, value, *args, **kwargs):
        if name == "train/loss_step":
            logged[self.global_step] = float(value.detach())
        return real_log(self, name, value, *args, **kwargs)
    monkeypatch.setattr(Classifier, "log", spy)
    # 250 training images / 20 = 13 steps per epoch, 26 in all: every 3, steps 2, 5, ..., 23 are written.
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=CSVLogger(tmp_path), log_every_n_steps=every,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0)
    trainer.fit(classifier, datamodule=datamodule)
    with open(Path(trainer.logger.log_dir) / "metrics.csv") as f:
        written = {int(row["step"]): float(row["train/loss_step"]) for row in csv.DictReader(f)
                   if row.get("train/loss_step")}
    assert sorted(written) == steps
    assert logged == pytest.approx(written)


def test_the_model_summary_counts_flops_with_an_image_in_the_weights_dtype(compose_config, monkeypatch):
    """Lightning's summary runs example_input_array through the model (else it shows 0 FLOPs). Under bf16-true a
    float32 image stopped the run before its first step; a compiled model gets none (it would compile for it)."""
    from lightning.pytorch.plugins.precision import HalfPrecision
    from lightning.pytorch.utilities.model_summary import ModelSummary
    flops = {}
    for precision in ("32-true", "bf16-true"):
        classifier = build_classifier(compose_config(["model=lenet"]))
        if precision != "32-true":
            classifier = HalfPrecision(precision).convert_module(classifier)
        flops[precision] = ModelSummary(classifier).total_flops
    # LeNet on one image: conv1 6x28x28 outputs of 3x5x5 and conv2 16x10x10 of 6x5x5 multiply-adds, then the
    # three linear layers; 2 FLOPs per multiply-add.
    assert flops["32-true"] == flops["bf16-true"] == 2 * (6 * 28 * 28 * 75 + 16 * 10 * 10 * 150
                                                          + 400 * 120 + 120 * 84 + 84 * 10)
    monkeypatch.setattr(torch, "compile", lambda model, mode: model)
    assert build_classifier(compose_config(["model=lenet", "compile=true"])).example_input_array is None


@pytest.mark.parametrize("model, message", [
    ({"_target_": "cifar_ablate.models.CifarResNet", "blocks_per_stage": 0},
     r"model: cifar_ablate.models.CifarResNet refused its values \(blocks_per_stage=0: must be >= 1\)$"),
    # A custom model: sizes that do not fit a 3x32x32 image, or an output that is no (N, 10) of logits.
    ({"_target_": "torch.nn.Linear", "in_features": 10, "out_features": 10},
     r"model: torch.nn.Linear \(in_features=10, out_features=10\) fails on a batch of 3x32x32 images "
     r"\(mat1 and mat2 shapes cannot be multiplied .*\)$"),
    ({"_target_": "torch.nn.Flatten"},
     r"model: torch.nn.Flatten returns \(2, 3072\) for 2 images; a CIFAR-10 classifier returns \(N, 10\) logits$"),
])
def test_a_model_that_cannot_classify_cifar_images_is_refused_in_one_line(compose_config, model, message):
    cfg = compose_config()
    cfg.model = OmegaConf.create(model)
    with pytest.raises(ConfigError, match=message) as refused:
        build_model(cfg)
    assert "model" in refused.value.keys  # in a sweep over models it fails that run only


@pytest.mark.parametrize("model", ["lenet_bn", "lenet_dropout"])
def test_trying_the_model_before_training_leaves_its_weights_and_the_rng_as_seeded(compose_config, model):
    """BatchNorm would move its running statistics and dropout draw masks if the try ran in training mode."""
    cfg = compose_config([f"model={model}", "init=kaiming_normal"])
    torch.manual_seed(0)
    tried = build_model(cfg)
    rng_after = torch.get_rng_state()
    torch.manual_seed(0)
    untried = init_weights(instantiate(cfg.model), cfg.init.scheme)
    assert torch.equal(rng_after, torch.get_rng_state()) and tried.training
    assert tried.state_dict().keys() == untried.state_dict().keys()
    assert all(torch.equal(v, untried.state_dict()[k]) for k, v in tried.state_dict().items())
