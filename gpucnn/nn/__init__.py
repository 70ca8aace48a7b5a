"""The layer graph: layers own forward and backward; arrays stay on the backend."""
from .layers import (Conv2d, Dropout, Flatten, Linear, LocalResponseNorm, ReLU,
                     SoftmaxCrossEntropy)
from .pooling import AvgPool2d, LPPool2d, MaxPool2d
from .flat import FlatParameters
from .module import Module, Parameter, Sequential
from .dense import fully_convolutional

__all__ = ["Module", "Parameter", "Sequential", "FlatParameters", "Conv2d", "Linear", "MaxPool2d", "AvgPool2d",
           "LPPool2d", "ReLU", "Flatten", "Dropout", "LocalResponseNorm", "SoftmaxCrossEntropy",
           "fully_convolutional"]
