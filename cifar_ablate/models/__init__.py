"""Model families, one module each. A model config (conf/model/*.yaml) names a class here by `_target_`."""
from cifar_ablate.models.cnn3 import CNN3
from cifar_ablate.models.cnn_wide import CNNWide
from cifar_ablate.models.lenet import LeNet
from cifar_ablate.models.lenet5 import LeNet5
from cifar_ablate.models.resnet import CifarResNet
from cifar_ablate.models.simple_nn import SimpleNN

__all__ = ["CNN3", "CNNWide", "CifarResNet", "LeNet", "LeNet5", "SimpleNN"]
