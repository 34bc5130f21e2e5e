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
