"""Discrete diffusion against closed-form truth: transition products, posteriors by Bayes'
rule, the categorical-mixture oracle, the exact bound, and samplers in distribution."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from conftest import exact_bound, mixture, states, total_variation

from rediff import discrete
from rediff.discrete import DiscreteProcess

KINDS = ["uniform", "absorbing", "gaussian", "banded"]
SCHEDULES = ["linear", "cosine", "mutual_info"]


# ---- the forward process ---------------------------------------------------------------------


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("kind", KINDS)
def test_products_are_the_explicit_matrix_products(kind, schedule):
    process = DiscreteProcess.make(kind, 5, T=12, betas=schedule)
    product = torch.eye(process.num_states, dtype=torch.float64)
    for t in range(1, 13):
        Q = process.step_matrix(t)
        assert (Q >= 0).all() and torch.allclose(Q.sum(1), torch.ones_like(Q[0]), atol=1e-14)
        product = product @ Q
        torch.testing.assert_close(process.cumulative(t), product, rtol=0, atol=1e-14)
    skipped = process.step_matrix(4) @ process.step_matrix(5) @ process.step_matrix(6)
    torch.testing.assert_close(process.transition(3, 6), skipped, rtol=0, atol=1e-15)
    if kind in ("gaussian", "banded"):  # symmetric, hence doubly stochastic
        torch.testing.assert_close(process.step_matrix(7), process.step_matrix(7).T)


@pytest.mark.parametrize(("kind", "categories"), [(k, 17) for k in KINDS[:3]] + [("banded", 4)])
def test_the_chain_ends_in_its_stationary_distribution(kind, categories):
    """With each kind's default schedule over T = 1000 steps, every row of Qbar_T is within
    1e-5 in total variation of the prior (uniform, or all mass on [MASK]; the
    nearest-neighbour walk mixes slowly, so it is checked with few levels)."""
    process = DiscreteProcess.make(kind, categories, T=1000)
    prior = process.prior()
    tv = 0.5 * (process.cumulative(1000)[:categories] - prior).abs().sum(1)
    assert float(tv.max()) < 1e-5
    assert torch.allclose(prior @ process.step_matrix(500), prior, atol=1e-14)  # stationary


def test_the_mutual_information_schedule_masks_everything_at_t():
    process = DiscreteProcess.make("absorbing", 3, T=7, betas="mutual_info")
    assert process.betas[-1] == 1.0 and process.betas[0] == pytest.approx(1 / 7)
    # 1 / (T - t + 1) masks each token at a uniformly distributed step
    alive = torch.stack([process.cumulative(t)[0, 0] for t in range(8)])
    expected = 1 - torch.arange(8, dtype=torch.float64) / 7
    torch.testing.assert_close(alive, expected, rtol=0, atol=1e-14)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("s", "t"), [(3, 4), (1, 6), (0, 5)])
def test_the_posterior_is_bayes_rule_by_enumeration(kind, s, t):
    """q(x_s | x_t, x0) for two coordinates, against the joint q(x_s, x_t | x0) enumerated
    over every x_s (K = 4), for every x0 and every x_t that x0 can reach."""
    process = DiscreteProcess.make(kind, 4, T=6)
    Qs, Qst, Qt = process.cumulative(s), process.transition(s, t), process.cumulative(t)
    pairs = torch.tensor(list(itertools.product(range(4), repeat=2)))
    targets = states(process, 2)
    for x0 in pairs:
        reach = Qt[x0[0], targets[:, 0]] * Qt[x0[1], targets[:, 1]]
        x_t = targets[reach > 0]
        got = discrete.posterior_probs(process, x_t, x0.expand(len(x_t), 2), s, t)
        for x, probs in zip(x_t, got, strict=True):
            joint = torch.zeros(process.num_states, process.num_states, dtype=torch.float64)
            for a, b in itertools.product(range(process.num_states), repeat=2):
                joint[a, b] = Qs[x0[0], a] * Qs[x0[1], b] * Qst[a, x[0]] * Qst[b, x[1]]
            bayes = joint / joint.sum()
            torch.testing.assert_close(torch.outer(probs[0], probs[1]), bayes, rtol=0, atol=1e-12)


# ---- the oracle ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_the_oracle_denoiser_is_bayes_rule_over_the_whole_space(kind):
    """p(x0_i | x_t) from the mixture's closed form equals the marginals of p(x0) q(x_t | x0)
    summed over all of {0..K-1}^2; the noised marginal sums to 1."""
    mix, process = mixture(2, 3), DiscreteProcess.make(kind, 3, T=8)
    den, support = mix.denoiser(process), mix.support()
    log_p0 = mix.log_prob(support)
    for t in (1, 4, 8):
        Qt = process.cumulative(t)
        x_t = states(process, 2)
        assert float(torch.logsumexp(mix.noised_log_prob(x_t, Qt), 0).exp()) == pytest.approx(
            1, abs=1e-12
        )
        joint = (
            log_p0.exp()[None]
            * Qt[support[:, 0]][:, x_t[:, 0]].T
            * Qt[support[:, 1]][:, x_t[:, 1]].T
        )
        possible = joint.sum(1) > 0
        bayes = joint[possible] / joint[possible].sum(1, keepdim=True)  # [X_t, K^2]
        got = den(x_t[possible], t).exp()
        for i in range(2):
            marginal = torch.stack([bayes[:, support[:, i] == a].sum(1) for a in range(3)], 1)
            torch.testing.assert_close(got[:, i], marginal, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_the_bound_of_the_exact_denoiser_in_one_dimension_is_closed_form(kind):
    """For one coordinate the x0-parameterised reverse step with the exact posterior is the
    exact reverse step, so -ELBO = -log p(x0) + E_{q(x_T | x0)} log(q_T(x_T) / prior(x_T))
    to rounding (every term summed exactly)."""
    mix, process = mixture(1, 4), DiscreteProcess.make(kind, 4, T=10)
    den = mix.denoiser(process)
    everything = states(process, 1)
    log_qT = mix.noised_log_prob(everything, process.cumulative(10))
    log_prior = torch.log(process.prior())
    for x0 in range(4):
        qT = process.marginal(torch.tensor([[x0]]), 10)[0, 0]
        mismatch = torch.where(qT > 0, qT * (log_qT - log_prior[everything[:, 0]]), 0.0).sum()
        expected = float(-mix.log_prob(torch.tensor([[x0]]))) + float(mismatch)
        assert exact_bound(den, torch.tensor([x0]), 1) == pytest.approx(expected, abs=1e-10)


@pytest.mark.parametrize("kind", ["uniform", "absorbing"])
def test_the_bound_lies_above_the_entropy_and_its_gap_shrinks_with_t(kind):
    """In two dimensions the reverse step factorises over coordinates, so even the exact
    denoiser models a slightly different distribution than the data's: the bound averaged
    over the data lies above the data's entropy (E[-log p_model] >= E[-log p_data]; at a single
    x0 it may lie below -log p_data(x0)), and smaller steps shrink the gap."""
    mix = mixture(2, 3)
    support = mix.support()
    p = mix.log_prob(support).exp()
    entropy = float(-(p * p.log()).sum())
    gaps = []
    for T in (4, 16, 64):
        den = mix.denoiser(DiscreteProcess.make(kind, 3, T=T))
        bounds = torch.tensor([exact_bound(den, x0, 2) for x0 in support], dtype=torch.float64)
        gaps.append(float((p * bounds).sum()) - entropy)
    assert gaps[0] > gaps[1] > gaps[2] > 0, gaps


def test_the_monte_carlo_bound_is_unbiased_with_an_honest_error():
    """rediff's vlb draws one x_t per term: over 4000 copies of one x0 its mean lies within
    4 standard errors of the exact bound, for the full sum and for 2 subsampled steps."""
    mix = mixture(2, 3)
    den = mix.denoiser(DiscreteProcess.make("uniform", 3, T=8))
    x0 = mix.support()[4]
    exact = exact_bound(den, x0, 2)
    g = torch.Generator().manual_seed(0)
    for num_steps in (None, 2):
        bound = discrete.vlb(den, x0.expand(4000, 2), num_steps=num_steps, generator=g)
        total = bound.total
        se = float(total.std() / math.sqrt(len(total)))
        assert abs(float(total.mean()) - exact) < 4 * se, (num_steps, float(total.mean()), exact)
    assert bound.diffusion_se.shape == (4000,) and bool((bound.diffusion_se > 0).any())


# ---- samplers --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_ancestral_sampling_reproduces_the_mixture(kind):
    """All T = 100 steps with the exact denoiser, 20,000 samples in {0, 1, 2}^2: the
    empirical distribution is within sampling error of the mixture (the factorised step's
    own error at this T is far below it)."""
    mix = mixture(2, 3)
    den = mix.denoiser(DiscreteProcess.make(kind, 3, T=100))
    g = torch.Generator().manual_seed(1)
    out = discrete.sample(den, (20000, 2), generator=g, progress=False)
    assert out.nfe == 100 and out.x.dtype == torch.long
    tv, allowed = total_variation(out.x, mix)
    assert tv < allowed, (tv, allowed)


@pytest.mark.parametrize("kind", KINDS)
def test_one_step_from_t_is_exact_for_one_coordinate(kind):
    """Skipping every step: x0 ~ p(x0 | x_T) with the exact posterior is exact in one
    dimension (what theory promises); with two coordinates the one step ignores their
    correlation and the test can tell."""
    g = torch.Generator().manual_seed(2)
    one = mixture(1, 4)
    out = discrete.sample(
        one.denoiser(DiscreteProcess.make(kind, 4, T=50)),
        (20000, 1),
        steps=1,
        generator=g,
        progress=False,
    )
    tv, allowed = total_variation(out.x, one)
    assert out.nfe == 1 and tv < allowed, (tv, allowed)
    two = mixture(2, 3)
    if kind != "banded":  # the banded walk has not mixed by T = 50
        den = two.denoiser(DiscreteProcess.make(kind, 3, T=50))
        tv, allowed = total_variation(
            discrete.sample(den, (20000, 2), steps=1, generator=g, progress=False).x, two
        )
        assert tv > 2 * allowed, (tv, allowed)


def test_the_cached_sampler_skips_evaluations_and_changes_nothing():
    """For the absorbing kind p(x0 | x_t) depends on x_t only: evaluating it only after a
    step changed the batch gives the very same samples from the same generator; with 5
    samples of 2 tokens at most 10 steps change anything (plus the first evaluation)."""
    mix = mixture(2, 3)
    den = mix.denoiser(DiscreteProcess.make("absorbing", 3, T=100))
    options = {"progress": False}
    full = discrete.sample(den, (5, 2), generator=torch.Generator().manual_seed(3), **options)
    fast = discrete.sample(
        den, (5, 2), sampler="cached", generator=torch.Generator().manual_seed(3), **options
    )
    assert torch.equal(full.x, fast.x) and full.nfe == 100 and fast.nfe <= 11, fast.nfe
    uniform = mix.denoiser(DiscreteProcess.make("uniform", 3, T=10))
    with pytest.raises(ValueError, match="the cached sampler needs the absorbing kind"):
        discrete.sample(uniform, (4, 2), sampler="cached", **options)


def test_argmax_picks_the_most_probable_value():
    mix = mixture(1, 4)
    den = mix.denoiser(DiscreteProcess.make("absorbing", 4, T=10))
    out = discrete.sample(den, (200, 1), steps=1, final="argmax", progress=False)
    assert set(out.x.flatten().tolist()) == {int(mix.log_prob(mix.support()).argmax())}


# ---- bad input -------------------------------------------------------------------------------


def test_bad_input_is_refused():
    process = DiscreteProcess.make("uniform", 4, T=10)
    with pytest.raises(ValueError, match=r"categories in \[0, 5\], outside \{0, ..., 3\}"):
        process.check_data(torch.tensor([[0, 5]]))
    with pytest.raises(
        ValueError, match=r"got torch.float32 values: a discrete model takes categories"
    ):
        process.check_data(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="at least 2 categories"):
        DiscreteProcess.make("uniform", 1)
    with pytest.raises(ValueError, match="unknown discrete process 'gaussian2'"):
        DiscreteProcess.make("gaussian2", 4)
    with pytest.raises(ValueError, match="unknown beta schedule 'sqrt'"):
        DiscreteProcess.make("uniform", 4, betas="sqrt")
    with pytest.raises(ValueError, match="bands must lie in"):
        DiscreteProcess.make("banded", 4, bands=4)
    with pytest.raises(ValueError, match=r"steps must be integers in 0..10"):
        process.marginal(torch.zeros(2, 1, dtype=torch.long), 11)
    with pytest.raises(ValueError, match="unknown discrete sampler 'ddpm'"):
        discrete.sample(mixture(1, 4).denoiser(process), (2, 1), sampler="ddpm")
    with pytest.raises(ValueError, match=r"steps must be an integer in 1..T = 10"):
        discrete.sample(mixture(1, 4).denoiser(process), (2, 1), steps=20)
