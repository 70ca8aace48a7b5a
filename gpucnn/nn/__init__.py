"""The layer graph: layers own forward and backward; arrays stay on the backend."""
from .layers import (AvgPool2d, Conv2d, Dropout, Flatten, Linear, LocalResponseNorm,
                     LPPool2d, MaxPool2d, ReLU, SoftmaxCrossEntropy)
from .flat import FlatParameters
from .module import Module, Parameter, Sequential
from .dense import fully_convolutional

__all__ = ["Module", "Parameter", "Sequential", "FlatParameters", "Conv2d", "Linear", "MaxPool2d", "AvgPool2d",
           "LPPool2d", "ReLU", "Flatten", "Dropout", "LocalResponseNorm", "SoftmaxCrossEntropy",
           "fully_convolutional"]
