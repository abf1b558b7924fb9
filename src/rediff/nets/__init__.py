"""Networks: ``MLP`` (low-dimensional data), ``UNet`` (images; DDPM architecture, presets
``UNet.digits()`` and ``UNet.cifar10()``), ``EnergyScore`` (score = -grad E),
``NoiseClassifier`` (logits of noised images, for classifier guidance); ``accelerate`` (bf16
autocast, channels-last, torch.compile on the same parameters); for discrete diffusion
``LevelsNet`` (an image net over category levels, K logits or a discretised logistic per
pixel) and ``Transformer`` (tokens, bidirectional or causal).

Every network is called as ``net(x, time, labels=None)`` with ``time`` from
``DiffusionModel.time_feature``.
"""

from rediff.nets.categorical import Head, LevelsNet, Transformer
from rediff.nets.classifier import NoiseClassifier
from rediff.nets.embedding import TimeEmbedding, sinusoidal
from rediff.nets.energy import EnergyScore
from rediff.nets.fast import Precision, accelerate
from rediff.nets.mlp import MLP
from rediff.nets.unet import UNet

__all__ = [
    "MLP",
    "EnergyScore",
    "Head",
    "LevelsNet",
    "NoiseClassifier",
    "Precision",
    "TimeEmbedding",
    "Transformer",
    "UNet",
    "accelerate",
    "sinusoidal",
]
