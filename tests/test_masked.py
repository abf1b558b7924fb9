"""Masked diffusion in continuous time and the autoregressive baseline against closed-form
truth: the ELBO of the exact denoiser is the exact NLL (by enumeration and quadrature, and
by Monte Carlo within its standard error), D3PM's discrete-time bound approaches it from
above, samplers and infilling reproduce exact (conditional) distributions."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from conftest import exact_bound, mixture, total_variation
from torch import nn

from rediff import discrete
from rediff.discrete import (
    AutoregressiveModel,
    AutoregressiveObjective,
    ClassifierFree,
    DiscreteModel,
    DiscreteProcess,
    MaskedObjective,
    MaskedProcess,
)
from rediff.discrete.masked import stratified_times, token_nll
from rediff.nets import Transformer

SCHEDULES = [("linear", {}), ("cosine", {}), ("polynomial", {"exponent": 3.0})]


def masked(K: int, masking: str = "linear", **options) -> MaskedProcess:
    return MaskedProcess(K, masking, **options)


# ---- the schedule ----------------------------------------------------------------------------


@pytest.mark.parametrize("masking", ["linear", "cosine", "polynomial", "loglinear"])
def test_alpha_runs_from_one_to_alpha_1_and_the_weight_is_its_log_derivative(masking):
    """alpha(0) = 1, alpha(1) = 0 (eps for loglinear), decreasing; w(t) = -alpha' / (1 - alpha)
    against autograd's derivative."""
    process = masked(5, masking, exponent=2.5, eps=0.01)
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64, requires_grad=True)
    alpha = process.alpha(t)
    (slope,) = torch.autograd.grad(alpha.sum(), t)
    torch.testing.assert_close(process.weight(t.detach()), -slope / (1 - alpha.detach()))
    assert float(process.alpha(0.0)) == 1.0
    assert float(process.alpha(1.0)) == pytest.approx(0.01 if masking == "loglinear" else 0.0)
    assert bool((alpha[1:] < alpha[:-1]).all())


def test_the_marginal_masks_each_token_with_probability_one_minus_alpha():
    process = masked(3, "cosine")
    x0 = torch.tensor([[0, 2, 1]])
    for t in (0.0, 0.3, 1.0):
        q = process.marginal(x0, t)[0]
        a = float(process.alpha(t))
        expected = torch.zeros(3, 4, dtype=torch.float64)
        expected[torch.arange(3), x0[0]] = a
        expected[:, 3] += 1 - a
        torch.testing.assert_close(q, expected)
    # Q_{s->t} composes: Qbar_s Q_{s->t} = Qbar_t
    torch.testing.assert_close(
        process.cumulative(0.2) @ process.transition(0.2, 0.7), process.cumulative(0.7)
    )


def test_stratified_times_cover_the_unit_interval_evenly():
    g = torch.Generator().manual_seed(0)
    t = stratified_times(8, g).sort().values
    assert bool((t > 0).all()) and bool((t <= 1).all())
    torch.testing.assert_close(t.diff(), torch.full((7,), 1 / 8, dtype=torch.float64))
    firsts = torch.stack([stratified_times(4, g)[0] for _ in range(4000)])
    # each time is uniform: the mean of 4000 draws within 4 standard errors of 1/2
    assert abs(float(firsts.mean()) - 0.5) < 4 * math.sqrt(1 / 12 / 4000)


# ---- the ELBO --------------------------------------------------------------------------------


def enumerated_elbo(den, x0: torch.Tensor, nodes: int) -> float:
    """L_1 + int_0^1 w(t) E_{q(x_t | x0)}[masked cross-entropy at (x_t, t)] dt with the
    expectation summed over all 2^L mask patterns and the integral by Gauss-Legendre on
    [0, 1] (the denoiser called at every node, so it may depend on t)."""
    process, L = den.process, x0.shape[0]
    patterns = torch.tensor(list(itertools.product([False, True], repeat=L)))
    x_t = torch.where(patterns, process.mask, x0)
    count = patterns.sum(1).double()
    points, weights = np.polynomial.legendre.leggauss(nodes)
    integral = 0.0
    for node, weight in zip((points + 1) / 2, weights / 2, strict=True):
        ce = token_nll(x0.expand(len(patterns), L), den(x_t, float(node)), patterns)
        a = process.alpha(float(node))
        integrand = process.weight(float(node)) * (1 - a) ** count * a ** (L - count) * ce
        integral += weight * float(integrand.sum())
    return float(process.prior_kl(x0[None])) + integral


@pytest.mark.parametrize("masking", ["linear", "cosine", "polynomial", "loglinear"])
def test_the_count_weights_are_the_time_integral_for_each_number_masked(masking):
    """c_k = C(L, k) int w(t) (1 - alpha)^k alpha^(L - k) dt, by quadrature."""
    process, L = masked(3, masking, exponent=3.0, eps=0.05), 5
    points, weights = np.polynomial.legendre.leggauss(60)
    t = torch.tensor((points + 1) / 2, dtype=torch.float64)
    a = process.alpha(t)
    for k in range(1, L + 1):
        integrand = process.weight(t) * (1 - a) ** k * a ** (L - k) * math.comb(L, k)
        expected = float((torch.tensor(weights / 2) * integrand).sum())
        assert float(discrete.masked.count_weights(process, L)[k - 1]) == pytest.approx(
            expected, abs=1e-10
        )


@pytest.mark.parametrize(("masking", "options"), SCHEDULES)
def test_the_elbo_of_the_exact_denoiser_is_the_exact_nll(masking, options):
    """Six tokens over four symbols: enumeration over masks and quadrature in t give
    -log p(x0) to 1e-10 (the integrand is a polynomial for linear and polynomial masking,
    smooth for cosine), for every x0 tried."""
    mix = mixture(6, 4, seed=1)
    den = mix.denoiser(masked(4, masking, **options))
    for x0 in mix.sample(5, torch.Generator().manual_seed(0)):
        nll = -float(mix.log_prob(x0[None]))
        assert enumerated_elbo(den, x0, nodes=40) == pytest.approx(nll, abs=1e-10)


def test_the_loglinear_bound_averaged_over_the_data_lies_above_the_entropy():
    """With alpha_1 = eps > 0 the prior leaves a few random tokens unmasked, so the bound is
    one of a slightly different model: averaged over the data it lies above the entropy
    (a bound of the model's cross-entropy), and within L eps log K of it (the prior's cost;
    the integral loses the part below alpha = eps)."""
    mix = mixture(4, 3, seed=2)
    eps = 0.05
    den = mix.denoiser(masked(3, "loglinear", eps=eps))
    support = mix.support()
    p = mix.log_prob(support).exp()
    entropy = float(-(p * p.log()).sum())
    bounds = torch.tensor([enumerated_elbo(den, x0, nodes=40) for x0 in support])
    averaged = float((p * bounds).sum())
    assert entropy < averaged < entropy + 4 * eps * math.log(3), (entropy, averaged)


class TimeTilted:
    """A denoiser that depends on t: the exact logits scaled by 1 + t."""

    def __init__(self, den) -> None:
        self.den, self.process = den, den.process

    def __call__(self, x_t, t):
        t = torch.as_tensor(t, dtype=torch.float64)
        scale = 1.0 + (t if t.ndim == 0 else t.reshape(-1, *[1] * x_t.ndim))
        return self.den(x_t, t) * scale


@pytest.mark.parametrize(("masking", "tilted"), [("cosine", False), ("linear", True)])
def test_the_monte_carlo_elbo_is_unbiased_with_an_honest_error(masking, tilted):
    """discrete.elbo with 4 draws on 4000 copies of one x0: the mean within 4 standard errors
    of the enumerated ELBO (the NLL for the exact denoiser; for a denoiser that depends on t
    the draws of t given the number masked must follow q for this to hold), and the
    standard errors it reports match the spread of the estimates."""
    mix = mixture(5, 3, seed=3)
    den = mix.denoiser(masked(3, masking))
    den = TimeTilted(den) if tilted else den
    x0 = mix.sample(1, torch.Generator().manual_seed(2))[0]
    bound = discrete.elbo(den, x0.expand(4000, 5), samples=4, generator=torch.Generator())
    total = bound.total
    exact = enumerated_elbo(den, x0, nodes=60)
    if not tilted:
        assert exact == pytest.approx(-float(mix.log_prob(x0[None])), abs=1e-10)
    assert abs(float(total.mean()) - exact) < 4 * float(total.std()) / math.sqrt(4000)
    # the reported error of each copy's estimate does not understate the spread of the
    # estimates over copies (stratified draws make it conservative); 0.9 leaves 9 standard
    # errors of the spread's own estimate from 4000 copies (about 1.1% each)
    assert float(bound.diffusion_se.square().mean().sqrt()) > 0.9 * float(total.std())
    assert bound.dims == 5 and bound.diffusion_se.shape == (4000,)


def test_d3pm_absorbing_bound_approaches_the_continuous_elbo_from_above():
    """D3PM's absorbing chain with beta_t = 1 / (T - t + 1) masks like alpha = 1 - t / T; its
    discrete-time bound, averaged over the data (every expectation enumerated), lies above
    the entropy and falls towards it as T grows, while the continuous-time ELBO of the same
    exact denoiser equals it."""
    mix = mixture(3, 3, seed=4)
    support = mix.support()
    p = mix.log_prob(support).exp()
    entropy = float(-(p * p.log()).sum())
    averaged = []
    for T in (2, 8, 32):
        den = mix.denoiser(DiscreteProcess.make("absorbing", 3, T=T, betas="mutual_info"))
        bounds = torch.tensor([exact_bound(den, x0, 3) for x0 in support], dtype=torch.float64)
        averaged.append(float((p * bounds).sum()))
    continuous = mix.denoiser(masked(3))
    elbo = sum(float(p[i]) * enumerated_elbo(continuous, x0, 20) for i, x0 in enumerate(support))
    assert averaged[0] > averaged[1] > averaged[2] > entropy, (averaged, entropy)
    assert elbo == pytest.approx(entropy, abs=1e-10)


class OracleNet(nn.Module):
    """A MixtureDenoiser as a network, so that DiscreteModel and the objectives can use it."""

    def __init__(self, den) -> None:
        super().__init__()
        self.den = den

    def forward(self, x_t, time, labels=None):
        return self.den(x_t, time).float()


@pytest.mark.parametrize("draws", ["count", "time"])
def test_the_training_loss_is_the_elbo_in_bits_per_token(draws):
    """MaskedObjective's batch loss with the exact denoiser as the net, averaged over 400
    batches of 64: within 4 standard errors of -log2 p(x0) / L (the loss is an unbiased
    estimate of the ELBO, which is the NLL), drawn by the number masked or by the time."""
    mix = mixture(4, 3, seed=5)
    process = masked(3, "cosine")
    model = DiscreteModel(OracleNet(mix.denoiser(process)), process)
    objective = MaskedObjective(draws)
    objective.check_model(model)
    x0 = mix.sample(1, torch.Generator().manual_seed(3)).expand(64, 4)
    g = torch.Generator().manual_seed(4)
    losses = torch.tensor(
        [float(objective(model, x0, objective.draw(process, x0, g))) for _ in range(400)]
    )
    expected = -float(mix.log_prob(x0[:1])) / (4 * math.log(2))
    assert abs(float(losses.mean()) - expected) < 4 * float(losses.std()) / math.sqrt(400)


def test_the_model_copies_unmasked_tokens_and_predicts_only_masked_ones():
    process = masked(5)
    torch.manual_seed(0)
    net = Transformer(5, 6, 7, width=16, depth=1, heads=2)
    model = DiscreteModel(net, process)
    x_t = torch.tensor([[0, 5, 3, 5, 4, 1, 5]])
    logits = model(x_t, 0.5)
    probs = torch.softmax(logits, -1)
    unmasked = x_t[0] != 5
    torch.testing.assert_close(
        probs[0, unmasked], nn.functional.one_hot(x_t[0, unmasked], 5).float()
    )
    torch.testing.assert_close(logits[0, ~unmasked], net(x_t, torch.tensor([0.5]))[0, ~unmasked])


# ---- samplers --------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", ["ancestral", "cached"])
def test_unmasking_reproduces_the_mixture(sampler):
    """200 steps from all-[MASK] with the exact denoiser, 20,000 samples in {0, 1, 2}^3: the
    empirical distribution is within sampling error of the mixture (tokens revealed together
    in one step are drawn independently, an error far below it at this step count)."""
    mix = mixture(3, 3, seed=6)
    den = mix.denoiser(masked(3, "cosine"))
    g = torch.Generator().manual_seed(5)
    out = discrete.sample(den, (20000, 3), sampler=sampler, steps=200, generator=g, progress=False)
    tv, allowed = total_variation(out.x, mix)
    assert tv < allowed, (tv, allowed)


def test_the_cached_sampler_gives_the_same_samples_with_fewer_evaluations():
    mix = mixture(4, 3, seed=7)
    den = mix.denoiser(masked(3))
    options = {"steps": 100, "progress": False}
    full = discrete.sample(den, (3, 4), generator=torch.Generator().manual_seed(6), **options)
    fast = discrete.sample(
        den, (3, 4), sampler="cached", generator=torch.Generator().manual_seed(6), **options
    )
    assert torch.equal(full.x, fast.x) and full.nfe == 100 and full.per_sample == 100
    # each sample is evaluated at the start and after each of its <= 4 unmasking steps
    assert fast.per_sample <= 4 + 1 and fast.nfe <= 3 * 4 + 1, (fast.nfe, fast.per_sample)


def conditional_tv(samples, mix, known: torch.Tensor) -> tuple[float, float]:
    """TV between samples and the mixture conditioned on the known tokens (>= 0), with 4
    standard errors' worth of TV, over the free tokens."""
    support = mix.support()
    fixed = known >= 0
    match = (support[:, fixed] == known[fixed]).all(1)
    p = mix.log_prob(support[match]).exp()
    p = p / p.sum()
    assert bool((samples[:, fixed] == known[fixed]).all())
    free = support[match]
    counts = torch.tensor(
        [float((samples == row).all(1).double().mean()) for row in free], dtype=torch.float64
    )
    n = samples.shape[0]
    return 0.5 * float((counts - p).abs().sum()), 0.5 * float(
        (4 * torch.sqrt(p * (1 - p) / n)).sum()
    )


@pytest.mark.parametrize("known", [[2, -1, -1, -1], [-1, -1, 0, 1], [-1, 1, -1, 0]])
def test_infilling_draws_the_exact_conditional_distribution(known):
    """A prefix, a suffix, scattered tokens: the free tokens follow p(x_free | x_known)."""
    mix = mixture(4, 3, seed=8)
    den = mix.denoiser(masked(3))
    known = torch.tensor(known)
    g = torch.Generator().manual_seed(7)
    out = discrete.sample(den, (20000, 4), steps=200, known=known, generator=g, progress=False)
    tv, allowed = conditional_tv(out.x, mix, known)
    assert tv < allowed, (tv, allowed)


def test_nucleus_keeps_the_smallest_set_that_reaches_top_p():
    probs = torch.tensor([[0.2, 0.5, 0.3]], dtype=torch.float64)
    torch.testing.assert_close(discrete.nucleus(probs, 1.0), probs)
    torch.testing.assert_close(
        discrete.nucleus(probs, 0.6), torch.tensor([[0.0, 0.625, 0.375]], dtype=torch.float64)
    )
    torch.testing.assert_close(
        discrete.nucleus(probs, 0.0), torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64)
    )


def test_greedy_unmasking_picks_the_most_probable_token():
    """top_p = 0 with one step from all-[MASK]: each token is its marginal's mode."""
    mix = mixture(3, 4, seed=9)
    den = mix.denoiser(masked(4))
    out = discrete.sample(den, (50, 3), steps=1, top_p=0.0, progress=False)
    modes = den(torch.full((1, 3), 4), 1.0)[0].argmax(-1)
    assert bool((out.x == modes).all())


class LabelledOracle:
    """Two mixtures as a class-conditional denoiser; NULL_LABEL (-1) is their average."""

    def __init__(self, process) -> None:
        self.process = process
        self.parts = [mixture(3, 3, seed=s).denoiser(process) for s in (10, 11)]
        both = [d.mixture for d in self.parts]
        weights = torch.cat([0.5 * m.weights for m in both])
        self.null = discrete.CategoricalMixture(weights, torch.cat([m.probs for m in both]))
        self.null = self.null.denoiser(process)

    def __call__(self, x_t, t, labels):
        out = torch.stack([self.null(x_t, t), self.parts[0](x_t, t), self.parts[1](x_t, t)])
        return out[labels + 1, torch.arange(x_t.shape[0])]


def test_classifier_free_guidance_interpolates_log_probabilities():
    """Scale 1 is the conditional model and 0 the unconditional one, exactly; scale 3 is
    the renormalised p_c^3 / p_u^2."""
    process = masked(3)
    den = LabelledOracle(process)
    x_t = torch.tensor([[3, 3, 3], [0, 3, 2], [3, 1, 3]])
    labels = torch.tensor([0, 1, 1])
    cond = torch.log_softmax(den(x_t, 0.5, labels), -1)
    uncond = torch.log_softmax(den(x_t, 0.5, torch.full_like(labels, -1)), -1)
    for scale, expected in [(1.0, cond), (0.0, uncond), (3.0, 3 * cond - 2 * uncond)]:
        got = torch.log_softmax(ClassifierFree(den, scale)(x_t, 0.5, labels=labels), -1)
        masked_positions = x_t == 3
        torch.testing.assert_close(
            got[masked_positions], torch.log_softmax(expected, -1)[masked_positions]
        )


# ---- the autoregressive baseline -------------------------------------------------------------


class PrefixOracle(nn.Module):
    """The exact p(x_i | x_<i) of a mixture, as a causal net over [BOS, x_1 .. x_{L-1}]."""

    def __init__(self, mix) -> None:
        super().__init__()
        self.mix = mix

    def forward(self, inputs, time, labels=None):
        B, n = inputs.shape
        K, probs = self.mix.categories, self.mix.probs  # [M, L, K]
        out = torch.empty(B, n, K, dtype=torch.float64)
        for i in range(n):  # position i sees inputs[:, 1 : i + 1] = x_1 .. x_i (0-based x_<i)
            seen = inputs[:, 1 : i + 1]
            logs = torch.log(self.mix.weights).expand(B, -1).clone()
            for j in range(seen.shape[1]):
                logs += torch.log(probs[:, j, :][:, seen[:, j]]).T
            out[:, i] = torch.softmax(logs, 1) @ probs[:, i, :]
        return torch.log(out).float()


def test_the_autoregressive_likelihood_and_samples_are_exact_with_the_exact_conditionals():
    mix = mixture(3, 3, seed=12)
    model = AutoregressiveModel(PrefixOracle(mix), 3)
    support = mix.support()
    torch.testing.assert_close(model.log_prob(support), mix.log_prob(support), atol=1e-6, rtol=0)
    objective = AutoregressiveObjective()
    loss = objective(model, support[:5], objective.draw(None, support[:5]))
    expected = -mix.log_prob(support[:5]).mean() / (3 * math.log(2))
    assert float(loss) == pytest.approx(float(expected), abs=1e-6)
    g = torch.Generator().manual_seed(8)
    out = model.sample((20000, 3), generator=g, progress=False)
    tv, allowed = total_variation(out.x, mix)
    assert out.nfe == 3 and tv < allowed, (tv, allowed)
    prefix = torch.tensor([1, -1, -1])
    out = model.sample((20000, 3), known=prefix, generator=g, progress=False)
    tv, allowed = conditional_tv(out.x, mix, prefix)
    assert tv < allowed, (tv, allowed)


def test_the_causal_transformer_does_not_look_ahead():
    torch.manual_seed(1)
    net = Transformer(4, 5, 6, width=16, depth=2, heads=2, causal=True)
    model = AutoregressiveModel(net, 4)
    x = torch.randint(0, 4, (2, 6))
    changed = x.clone()
    changed[:, 3] = (x[:, 3] + 1) % 4
    a, b = model(x), model(changed)
    torch.testing.assert_close(a[:, :4], b[:, :4])  # position i reads x_<i only
    assert not torch.allclose(a[:, 4:], b[:, 4:])


# ---- bad input -------------------------------------------------------------------------------


def test_bad_input_is_refused():
    mix = mixture(3, 3)
    den = mix.denoiser(masked(3))
    cases = [
        (lambda: MaskedProcess(1), "at least 2 tokens"),
        (lambda: MaskedProcess(3, "polynomial", exponent=0.0), "exponent must be > 0"),
        (lambda: MaskedProcess(3, "loglinear", eps=1.0), "eps must lie in"),
        (lambda: MaskedProcess(3, "quadratic"), "unknown masking schedule"),
        (lambda: discrete.elbo(den, torch.tensor([[0, 1, 2]]), samples=1), "samples must be"),
        (lambda: discrete.elbo(den, torch.tensor([[0, 1, 3]])), "outside"),
        (lambda: discrete.sample(den, (2, 3), top_p=1.5), "top_p must be"),
        (lambda: discrete.sample(den, (2, 3), known=torch.tensor([0, 3, -1])), "known tokens"),
        (lambda: discrete.sample(den, (2, 3), known=torch.tensor([0, 1])), "shaped like"),
        (
            lambda: discrete.sample(
                mix.denoiser(DiscreteProcess.make("uniform", 3, T=5)), (2, 3), known=torch.zeros(3)
            ),
            "absorbing",
        ),
        (
            lambda: AutoregressiveModel(PrefixOracle(mix), 3).sample(
                (2, 3), known=torch.tensor([-1, 1, -1]), progress=False
            ),
            "only continue a prefix",
        ),
        (
            lambda: AutoregressiveModel(PrefixOracle(mix), 3).log_prob(torch.tensor([[0, 3, 1]])),
            "tokens holds categories in",
        ),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
