"""rediff: diffusion and score-based generative models, checked against closed-form truth.

from rediff import schedules, data
sched = schedules.DiscreteVP.linear(1000, beta_start=1e-4, beta_end=0.02)
den = data.eight_gaussians_mixture().denoiser(sched)     # the exact x0_hat
model = rediff.DiffusionModel(net, sched, target="eps")  # a network as a Denoiser
process = rediff.discrete.DiscreteProcess.make("absorbing", categories=17)  # D3PM
model = rediff.interop.load_diffusers("ddpm-folder")    # a diffusers folder, offline
"""

from rediff import (
    data,
    discrete,
    grids,
    guidance,
    interop,
    metrics,
    parametrization,
    samplers,
    schedules,
    tuning,
    variational,
)
from rediff.likelihood import (
    Multistep,
    Solver,
    decode,
    dequantized_nll,
    encode,
    log_likelihood,
)
from rediff.model import (
    NULL_LABEL,
    Conditioned,
    Denoiser,
    DiffusionModel,
    NoisyClassifier,
    TimeInput,
)
from rediff.parametrization import Prediction, Target, convert
from rediff.sampling import Resampling, Samples, SharedNoise, sample
from rediff.variational import vlb

__version__ = "0.1.0"

__all__ = [
    "NULL_LABEL",
    "Conditioned",
    "Denoiser",
    "DiffusionModel",
    "Multistep",
    "NoisyClassifier",
    "Prediction",
    "Resampling",
    "Samples",
    "SharedNoise",
    "Solver",
    "Target",
    "TimeInput",
    "convert",
    "data",
    "decode",
    "dequantized_nll",
    "discrete",
    "encode",
    "grids",
    "guidance",
    "interop",
    "log_likelihood",
    "metrics",
    "parametrization",
    "sample",
    "samplers",
    "schedules",
    "tuning",
    "variational",
    "vlb",
]
