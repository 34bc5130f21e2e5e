"""Each study preset composes into the settings of its homework (issue table)."""
import pytest

PRESETS = {
    # name: (sweep params, {config key: value})
    "lenet_variants": ({"model": "lenet,lenet_dropout,lenet_bn"},
                       {"optimizer._target_": "torch.optim.SGD", "optimizer.lr": 0.01, "optimizer.momentum": 0.9,
                        "data.batch_size": 64, "trainer.max_epochs": 20, "data.normalize": True,
                        "augment.crop_padding": 0, "augment.flip": False}),
    "lenet5_variants": ({"model": "lenet5,lenet5_dropout,lenet5_bn"},
                        {"optimizer.lr": 0.01, "optimizer.momentum": 0.9, "data.batch_size": 128,
                         "trainer.max_epochs": 50}),
    "preprocessing": ({"data.normalize": "false,true", "augment": "none,flip_rotate_jitter"},
                      {"model._target_": "cifar_ablate.models.CNN3", "optimizer._target_": "torch.optim.Adam",
                       "optimizer.lr": 0.001, "data.batch_size": 128, "trainer.max_epochs": 10,
                       "data.train_fraction": 0.5}),
    "penalties": ({"regularization": "none,dropout_0.3_0.2,fc1_l1,fc1_l2"},
                  {"model._target_": "cifar_ablate.models.CNN3", "optimizer.lr": 0.001, "data.batch_size": 128,
                   "trainer.max_epochs": 10, "data.train_fraction": 0.5, "data.normalize": True}),
    "optimizers": ({"optimizer": "adam,sgd_plain", "optimizer.lr": "1e-2,1e-3,1e-4"},
                   {"model._target_": "cifar_ablate.models.CNN3", "data.batch_size": 128, "trainer.max_epochs": 10,
                    "data.train_fraction": 0.5, "baseline": "optimizer.lr=0.001,optimizer=adam"}),
    "regularization": ({"regularization": "none,weight_decay_3e-3,dropout_0.3"},
                       {"model._target_": "cifar_ablate.models.CNNWide", "optimizer._target_": "torch.optim.Adam",
                        "optimizer.lr": 0.001, "scheduler._target_": "torch.optim.lr_scheduler.StepLR",
                        "scheduler.step_size": 5, "scheduler.gamma": 0.1, "data.batch_size": 64,
                        "trainer.max_epochs": 2}),
    "initialization": ({"init": "default,xavier_normal,kaiming_normal"},
                       {"model._target_": "cifar_ablate.models.CNNWide", "optimizer.lr": 0.001,
                        "scheduler.step_size": 5, "data.batch_size": 64, "trainer.max_epochs": 2}),
    "lr_schedules": ({"scheduler": "step,exponential_0.1,cyclic"},
                     {"model._target_": "cifar_ablate.models.CNNWide", "optimizer.lr": 0.001, "data.batch_size": 64,
                      "trainer.max_epochs": 2}),
    "augmentation": ({"augment": "none,crop_flip"},
                     {"model._target_": "cifar_ablate.models.SimpleNN", "optimizer.lr": 0.01,
                      "optimizer.momentum": 0.9, "optimizer.weight_decay": 1e-4, "data.batch_size": 128,
                      "trainer.max_epochs": 30, "data.normalize": True}),
    "batchnorm": ({"model": "simple_nn,simple_nn_bn"},
                  {"optimizer.lr": 0.01, "optimizer.weight_decay": 1e-4, "data.batch_size": 128,
                   "trainer.max_epochs": 30, "augment.crop_padding": 4, "augment.flip": True}),
    "batchnorm_high_lr": ({"model": "simple_nn,simple_nn_bn"},
                          {"optimizer.lr": 0.1, "optimizer.weight_decay": 1e-4, "augment.crop_padding": 4}),
    "activation": ({"model.activation": "relu,swish"},
                   {"model._target_": "cifar_ablate.models.SimpleNN", "model.batch_norm": True,
                    "augment.flip": True, "trainer.max_epochs": 30}),
    "lr_range": ({"optimizer.lr": "1.0,0.1,0.05,0.01,0.005,0.001"},
                 {"model._target_": "cifar_ablate.models.SimpleNN", "augment.crop_padding": 4,
                  "baseline": "optimizer.lr=0.01"}),
    "l2_range": ({"optimizer.weight_decay": "1e-2,1e-3,1e-4,1e-5,0"},
                 {"model._target_": "cifar_ablate.models.SimpleNN", "augment.crop_padding": 4}),
    "resnet20": ({}, {"model._target_": "cifar_ablate.models.CifarResNet", "optimizer.lr": 0.1,
                      "optimizer.momentum": 0.9, "optimizer.weight_decay": 5e-4, "augment.crop_padding": 4,
                      "augment.flip": True, "scheduler._target_": "torch.optim.lr_scheduler.CosineAnnealingLR"}),
    "resnet20_fast": ({}, {"model._target_": "cifar_ablate.models.CifarResNet", "optimizer.nesterov": True,
                           "optimizer.weight_decay": 5e-4, "augment.crop_padding": 4, "augment.flip": True,
                           "scheduler._target_": "torch.optim.lr_scheduler.OneCycleLR", "scheduler.max_lr": 0.4,
                           "data.batch_size": 512, "trainer.max_epochs": 40}),
}


def test_every_preset_file_is_covered():
    from cifar_ablate.config import CONFIG_DIR
    from pathlib import Path
    assert sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml")) == sorted(PRESETS)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_composes_with_its_settings(compose_config, name):
    from omegaconf import OmegaConf
    sweep, settings = PRESETS[name]
    cfg = compose_config([f"+experiment={name}"], return_hydra_config=True)
    assert {k: str(v) for k, v in (cfg.hydra.sweeper.params or {}).items()} == sweep
    for key, value in settings.items():
        assert OmegaConf.select(cfg, key) == value, key
    if sweep:
        assert cfg.hydra.mode.name == "MULTIRUN"  # `python -m cifar_ablate +experiment=<name>` runs the study


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_variant_of_every_preset_builds(compose_config, name):
    """Each sweep point composes and builds its model, optimizer and scheduler."""
    import itertools

    from cifar_ablate.config import check_config
    from cifar_ablate.training import build_classifier
    sweep, _ = PRESETS[name]
    keys = list(sweep)
    for values in itertools.product(*(sweep[k].split(",") for k in keys)):
        cfg = compose_config([f"+experiment={name}"] + [f"{k}={v}" for k, v in zip(keys, values)])
        check_config(cfg)
        build_classifier(cfg)


def _options(group):
    from pathlib import Path

    from cifar_ablate.config import CONFIG_DIR
    return sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml"))


def _values_set_by(group, option):
    """The dotted keys and values a group option's YAML sets (after the options of its group it builds on),
    where its package puts them."""
    from pathlib import Path

    from omegaconf import OmegaConf

    from cifar_ablate.config import CONFIG_DIR
    text = (Path(CONFIG_DIR) / group / f"{option}.yaml").read_text()
    node = OmegaConf.to_container(OmegaConf.create(text))
    flat = {}
    for parent in node.pop("defaults", []):  # e.g. onecycle_0.4: [onecycle]
        flat.update(_values_set_by(group, parent))
    if "# @package _global_" not in text:
        node = {group: node}

    def walk(d, prefix):
        for k, v in d.items():
            (walk(v, f"{prefix}{k}.") if isinstance(v, dict) else flat.__setitem__(f"{prefix}{k}", v))
    walk(node, "")
    return flat


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_a_regularization_chosen_on_top_of_a_preset_is_the_one_that_trains(compose_config, name):
    """`+experiment=batchnorm regularization=weight_decay` once trained with the preset's weight decay (1e-4)
    while the run's name and choices said 5e-4: a preset's fixed settings are group options, so a choice
    given on the command line replaces them, and no preset value overrides it behind its name."""
    from omegaconf import OmegaConf
    swept = set(PRESETS[name][0])
    for option in _options("regularization"):
        cfg = compose_config([f"+experiment={name}", f"regularization={option}"])
        for key, value in _values_set_by("regularization", option).items():
            if key not in swept:
                assert OmegaConf.select(cfg, key) == value, (option, key)


@pytest.mark.parametrize("preset", [f"experiment={name}" for name in sorted(PRESETS)]
                         + [f"hparams_search={name}" for name in _options("hparams_search")])
def test_every_preset_builds_with_any_optimizer_or_scheduler_in_place_of_its_own(compose_config, preset):
    """A preset sets no keys that only its own optimizer or scheduler class takes (Adam has no momentum,
    ExponentialLR no step_size), so `+experiment=batchnorm optimizer=adam` builds Adam with Adam's settings: all
    of them, but for a learning rate the study fixes (batchnorm_high_lr, resnet20: 0.1) and the weight decay its
    regularization choice sets."""
    from cifar_ablate.config import check_config
    from cifar_ablate.training import build_classifier
    fixed_lr = {"experiment=batchnorm_high_lr", "experiment=resnet20"}
    for group in ("optimizer", "scheduler"):
        for option in _options(group):
            cfg = compose_config([f"+{preset}", f"{group}={option}"])
            own = {k.split(".", 1)[1]: v for k, v in _values_set_by(group, option).items()}
            assert set(cfg[group]) == set(own), option  # no keys of another class injected
            kept = {"weight_decay"} | ({"lr"} if preset in fixed_lr else set()) if group == "optimizer" else set()
            assert {k: v for k, v in cfg[group].items() if k not in kept} == {
                k: v for k, v in own.items() if k not in kept}, option
            check_config(cfg)
            classifier = build_classifier(cfg)
            classifier.optimizer_factory(classifier.parameters())  # torch checks an optimizer's keywords here
