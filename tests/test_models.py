"""Every homework model: output shape, parameter count (by hand), and a sane loss at init."""
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import nn

from cifar_ablate.models.activation import ACTIVATIONS


def conv(cin, cout, k):
    return cout * cin * k * k + cout


def fc(fin, fout):
    return fin * fout + fout


def bn(c):
    return 2 * c


# Parameter counts worked out by hand from the layer tables (3x32x32 input, 10 classes).
LENET = conv(3, 6, 5) + conv(6, 16, 5) + fc(16 * 5 * 5, 120) + fc(120, 84) + fc(84, 10)
LENET5 = conv(3, 6, 5) + conv(6, 16, 5) + conv(16, 120, 5) + fc(120, 84) + fc(84, 10)
# cnn3: 32 -conv5-> 28 -pool-> 14 -conv5-> 10 -conv5-> 6 -pool-> 3, so fc1 sees 60*3*3.
CNN3 = conv(3, 10, 5) + conv(10, 30, 5) + conv(30, 60, 5) + fc(60 * 3 * 3, 270) + fc(270, 130) + fc(130, 10)
# cnn_wide: 32 -conv3 pad1-> 32 -pool-> 16 -conv3-> 14 -pool-> 7 -conv3-> 5 -pool-> 2, so fc1 sees 32*2*2.
CNN_WIDE = conv(3, 64, 3) + conv(64, 64, 3) + conv(64, 32, 3) + fc(32 * 2 * 2, 512) + fc(512, 10)
SIMPLE_NN = conv(3, 8, 5) + conv(8, 16, 3) + fc(16 * 6 * 6, 120) + fc(120, 84) + fc(84, 10)
# resnet20: bias-free convs with BN; 1x1 projection + BN where the shape changes (stages 2 and 3).
RESNET20 = (3 * 16 * 9 + bn(16)
            + 3 * 2 * (16 * 16 * 9 + bn(16))
            + (16 * 32 * 9 + bn(32)) + (32 * 32 * 9 + bn(32)) + (16 * 32 + bn(32)) + 2 * 2 * (32 * 32 * 9 + bn(32))
            + (32 * 64 * 9 + bn(64)) + (64 * 64 * 9 + bn(64)) + (32 * 64 + bn(64)) + 2 * 2 * (64 * 64 * 9 + bn(64))
            + fc(64, 10))

EXPECTED_PARAMS = {
    "lenet": 62_006, "lenet_dropout": 62_006, "lenet_bn": 62_038,
    "lenet5": 62_006, "lenet5_dropout": 62_006, "lenet5_bn": 62_018,
    "cnn3": CNN3, "cnn3_dropout": CNN3,
    "cnn_wide": CNN_WIDE, "cnn_wide_dropout": CNN_WIDE,
    "simple_nn": 82_030, "simple_nn_bn": SIMPLE_NN + bn(8) + bn(16),
    "resnet20": RESNET20,
}


def test_every_model_option_has_a_hand_count_here():
    """A model added under conf/model/ is tested here once its parameter count, worked out by hand, is added."""
    from cifar_ablate.config import CONFIG_DIR
    assert sorted(p.stem for p in (Path(CONFIG_DIR) / "model").glob("*.yaml")) == sorted(EXPECTED_PARAMS)


def test_hand_counts_match_the_issue_table():
    assert (LENET, LENET5, SIMPLE_NN) == (62_006, 62_006, 82_030)
    assert 260_000 < RESNET20 < 280_000  # "~0.27M"


def build(compose_config, name, **overrides):
    cfg = compose_config([f"model={name}"] + [f"model.{k}={v}" for k, v in overrides.items()])
    return instantiate(cfg.model)


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_model_shape_and_parameter_count(compose_config, name):
    model = build(compose_config, name)
    assert model(torch.zeros(4, 3, 32, 32)).shape == (4, 10)
    assert sum(p.numel() for p in model.parameters()) == EXPECTED_PARAMS[name]


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_first_batch_loss_is_near_ln10_with_default_init(compose_config, name):
    torch.manual_seed(0)
    model = build(compose_config, name)
    x, y = torch.randn(256, 3, 32, 32), torch.randint(0, 10, (256,))
    assert abs(F.cross_entropy(model(x), y).item() - math.log(10)) < 0.2


@pytest.mark.parametrize("name, dropout_layers, bn_layers", [
    ("lenet", 0, 0), ("lenet_dropout", 1, 0), ("lenet_bn", 1, 1),
    ("lenet5", 0, 0), ("lenet5_dropout", 1, 0), ("lenet5_bn", 1, 1),
    ("cnn3", 0, 0), ("cnn3_dropout", 2, 0), ("cnn_wide", 0, 0), ("cnn_wide_dropout", 2, 0),
    ("simple_nn", 0, 0), ("simple_nn_bn", 0, 2),
])
def test_variants_differ_only_in_dropout_and_batchnorm(compose_config, name, dropout_layers, bn_layers):
    model = build(compose_config, name)
    assert sum(isinstance(m, (nn.Dropout, nn.Dropout2d)) for m in model.modules()) == dropout_layers
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == bn_layers


def test_dropout_probabilities_follow_the_table(compose_config):
    probs = [m.p for m in build(compose_config, "cnn3_dropout").modules() if isinstance(m, nn.Dropout)]
    assert probs == [0.3, 0.2]
    wide = build(compose_config, "cnn_wide_dropout")
    assert isinstance(wide.drop2, nn.Dropout2d) and wide.drop2.p == 0.3 and wide.drop_fc1.p == 0.3


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_every_model_takes_each_activation(compose_config, activation):
    for name in ("lenet", "lenet5", "cnn3", "cnn_wide", "simple_nn", "resnet20"):
        model = build(compose_config, name, activation=activation)
        assert any(type(m) is type(ACTIVATIONS[activation]()) for m in model.modules())
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
