"""Discrete-state diffusion (D3PM; Austin et al. 2021): forward processes over categories,
the x0-parameterised reverse step, the exact categorical-mixture oracle, the variational
bound and losses, and samplers.

    process = DiscreteProcess.make("absorbing", categories=17, T=1000)
    mix = CategoricalMixture(weights, probs)          # exact p(x0) over {0..K-1}^D
    den = mix.denoiser(process)                       # exact logits of p(x0 | x_t)
    x0 = discrete.sample(den, (n, D), steps=50).x     # ancestral sampling (skipping steps)
    bound = discrete.vlb(den, x0)                     # L_T + sum L_{t-1} + L_0

    masked = MaskedProcess(categories=K, masking="cosine")     # MDLM / MD4, t in [0, 1]
    bound = discrete.elbo(mix.denoiser(masked), x0, samples=16)  # the masked ELBO

    process = InsDelProcess.make(K, T=32)              # insertion and deletion (Johnson 2021)
    model = InsDelModel(insdel_net(process, 64), process, max_length=64)  # varying length
    texts = model.sample(16).sequences
"""

from rediff.discrete.autoregressive import AutoregressiveModel, AutoregressiveObjective
from rediff.discrete.bound import DiscreteObjective, cross_entropy, step_terms, vlb
from rediff.discrete.denoiser import ClassifierFree, DiscreteDenoiser, DiscreteModel
from rediff.discrete.insdel import InsDelProcess, Survival
from rediff.discrete.insdel_model import InsDelModel, InsDelObjective, InsDelSamples, insdel_net
from rediff.discrete.masked import MaskDraws, MaskedObjective, MaskedProcess, Masking, elbo
from rediff.discrete.oracle import CategoricalMixture, MixtureDenoiser
from rediff.discrete.process import BetaSchedule, DiscreteProcess, Kind, default_betas, make_betas
from rediff.discrete.reverse import posterior_probs, reverse_probs
from rediff.discrete.sampling import DiscreteSamples, Final, nucleus, sample

__all__ = [
    "AutoregressiveModel",
    "AutoregressiveObjective",
    "BetaSchedule",
    "CategoricalMixture",
    "ClassifierFree",
    "DiscreteDenoiser",
    "DiscreteModel",
    "DiscreteObjective",
    "DiscreteProcess",
    "DiscreteSamples",
    "Final",
    "InsDelModel",
    "InsDelObjective",
    "InsDelProcess",
    "InsDelSamples",
    "Kind",
    "MaskDraws",
    "MaskedObjective",
    "MaskedProcess",
    "Masking",
    "MixtureDenoiser",
    "Survival",
    "cross_entropy",
    "default_betas",
    "elbo",
    "insdel_net",
    "make_betas",
    "nucleus",
    "posterior_probs",
    "reverse_probs",
    "sample",
    "step_terms",
    "vlb",
]
