"""Guidance, inpainting and shared noise against closed-form truth from Gaussian mixtures.

The mixture's component is its class, so the exact conditional denoiser E[x0 | x_t, k] and
the exact noisy classifier p(k | x_t) are known: guidance must reproduce them exactly.
"""

import itertools
import math

import pytest
import torch

import rediff
from rediff import guidance, schedules, thresholding
from rediff.data import GaussianMixture
from rediff.parametrization import Target, convert

F64 = torch.float64
SCHEDULES = {
    "discrete_vp": schedules.DiscreteVP.linear(1000),
    "linear_vp": schedules.LinearVP(),
    "ve": schedules.VE(0.01, 50.0),
    "edm": schedules.EDM(0.002, 80.0),
}


@pytest.fixture(scope="module")
def mixture():
    means = torch.tensor([[-2.0, 0.0], [2.0, 1.0], [0.0, -2.5]], dtype=F64)
    covs = torch.stack(
        [
            torch.tensor([[0.3, 0.1], [0.1, 0.2]], dtype=F64),
            torch.tensor([[0.2, -0.05], [-0.05, 0.4]], dtype=F64),
            torch.tensor([[0.25, 0.0], [0.0, 0.15]], dtype=F64),
        ]
    )
    return GaussianMixture(means, covs, torch.tensor([0.3, 0.5, 0.2], dtype=F64))


def noised(mixture, schedule, n=64, seed=0):
    """x_t from the noised mixture at times spread over the schedule's range: (x_t, t)."""
    g = torch.Generator().manual_seed(seed)
    x0 = mixture.sample(n, generator=g)
    u = torch.linspace(0.02, 0.98, n, dtype=F64)
    t = schedule.t_min + (schedule.t_max - schedule.t_min) * u
    return schedule.marginal(x0, t, torch.randn(x0.shape, generator=g, dtype=F64)), t


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_classifier_guidance_with_exact_classifier_is_the_conditional_denoiser(mixture, name):
    den = mixture.denoiser(SCHEDULES[name])
    x_t, t = noised(mixture, den.schedule)
    labels = torch.arange(x_t.shape[0]) % 3
    guided = guidance.classifier(den, den.log_classifier, labels, scale=1.0)
    truth = den(x_t, t, labels=labels)
    torch.testing.assert_close(guided(x_t, t), truth, rtol=1e-9, atol=1e-9)
    assert not torch.allclose(den(x_t, t), truth, atol=1e-3)  # guidance did something


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_classifier_free_scales_zero_and_one_are_exact(mixture, name):
    den = mixture.denoiser(SCHEDULES[name])
    x_t, t = noised(mixture, den.schedule)
    labels = torch.arange(x_t.shape[0]) % 3
    # the one doubled evaluation that classifier_free makes (a batch of 2B may round
    # differently from two batches of B: exactness is about the combination, not the batch)
    null = torch.full_like(labels, rediff.NULL_LABEL)
    both = den(torch.cat([x_t, x_t]), torch.cat([t, t]), labels=torch.cat([labels, null]))
    conditional, unconditional = both.chunk(2)
    assert torch.equal(guidance.classifier_free(den, labels, 0.0)(x_t, t), unconditional)
    assert torch.equal(guidance.classifier_free(den, labels, 1.0)(x_t, t), conditional)
    torch.testing.assert_close(unconditional, den(x_t, t), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("scale", [0.5, 2.0, 4.0])
def test_classifier_free_in_eps_space_equals_x0_space(mixture, scale):
    den = mixture.denoiser(SCHEDULES["linear_vp"])
    x_t, t = noised(mixture, den.schedule)
    s = den.schedule
    eps = [
        convert(den(x_t, t, labels=labels), x_t, s.alpha(t), s.sigma(t), Target.X0, Target.EPS)
        for labels in (torch.full((64,), 1), torch.full((64,), rediff.NULL_LABEL))
    ]
    eps_guided = eps[1] + scale * (eps[0] - eps[1])  # Ho & Salimans 2022, eq. 6
    guided = guidance.classifier_free(den, 1, scale).predict(x_t, t)
    torch.testing.assert_close(guided.eps, eps_guided, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("scale", [0.0, 1.0, 3.0])
def test_classifier_free_equals_classifier_guidance_of_the_unconditional_model(mixture, scale):
    """x0_c - x0_u = sigma^2 / alpha grad log p(y | x_t) (Bayes' rule on scores), so CFG at
    any scale equals classifier guidance of x0_u with the exact classifier at that scale."""
    den = mixture.denoiser(SCHEDULES["edm"])
    x_t, t = noised(mixture, den.schedule)
    cfg = guidance.classifier_free(den, 2, scale)(x_t, t)
    cg = guidance.classifier(den, den.log_classifier, 2, scale)(x_t, t)
    torch.testing.assert_close(cfg, cg, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm++2m", "heun", "euler_maruyama"])
@pytest.mark.parametrize("kind", ["classifier", "classifier_free"])
def test_guided_samples_land_in_the_component(mixture, sampler, kind):
    den = mixture.denoiser(SCHEDULES["linear_vp"])
    k = 2  # the lightest component (weight 0.2)
    guided = (
        guidance.classifier(den, den.log_classifier, k)
        if kind == "classifier"
        else guidance.classifier_free(den, k, 1.0)
    )
    g, n = torch.Generator().manual_seed(0), 2000
    x = rediff.sample(guided, (n, 2), sampler=sampler, steps=200, generator=g, dtype=F64).x
    assert float((mixture.component_probs(x).argmax(1) == k).double().mean()) > 0.995
    # the component's mean and covariance within 4.5 standard errors of n samples (Var of a
    # sample covariance: (S_ii S_jj + S_ij^2) / n); 200 steps keep the samplers' bias below
    # that (at 50 steps DDIM's covariance was 4.2 standard errors off)
    cov = mixture.covariances[k]
    var = torch.diagonal(cov)
    assert ((x.mean(0) - mixture.means[k]).abs() < 4.5 * torch.sqrt(var / n)).all()
    cov_se = torch.sqrt((var[:, None] * var[None, :] + cov**2) / n)
    assert ((torch.cov(x.T) - cov).abs() < 4.5 * cov_se).all()


def test_guidance_composes_with_learned_variance_models():
    class Learned(rediff.Denoiser):
        schedule = SCHEDULES["discrete_vp"]

        def __call__(self, x_t, t, labels=None):
            return self.with_variance(x_t, t, labels=labels)[0]

        def with_variance(self, x_t, t, labels=None):
            shift = 0.0 if labels is None else (labels.to(x_t) + 2.0)[:, None]
            return 0.5 * x_t + shift, torch.full_like(x_t, 0.25) + 0.01 * shift

    den, x = Learned(), torch.randn(4, 2, dtype=F64)
    labels = torch.tensor([0, 1, 2, 1])
    x0, f = guidance.classifier_free(den, labels, 2.0).with_variance(x, 0.5)
    conditional, unconditional = den(x, 0.5, labels=labels), den(x, 0.5, labels=-torch.ones(4))
    torch.testing.assert_close(x0, unconditional + 2.0 * (conditional - unconditional))
    torch.testing.assert_close(f, den.with_variance(x, 0.5, labels=labels)[1])


@pytest.fixture(scope="module")
def gaussian():
    """A correlated 4-D Gaussian, coordinates 0, 1 known, and the closed-form conditional of
    coordinates 2, 3 given them: (denoiser, known values, mask, mean, covariance)."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4, 4, generator=g, dtype=F64)
    cov = a @ a.T / 4 + 0.2 * torch.eye(4, dtype=F64)
    mu = torch.tensor([0.5, -0.3, 0.2, 0.0], dtype=F64)
    mix = GaussianMixture(mu[None], cov[None], torch.ones(1, dtype=F64))
    mask = torch.tensor([True, True, False, False])
    y = torch.tensor([1.0, -1.0, 0.0, 0.0], dtype=F64)
    k, u = mask, ~mask
    gain = cov[u][:, k] @ torch.linalg.inv(cov[k][:, k])
    mean = mu[u] + gain @ (y[k] - mu[k])
    cond_cov = cov[u][:, u] - gain @ cov[k][:, u]
    return mix.denoiser(SCHEDULES["linear_vp"]), y, mask, mean, cond_cov


def imputation_error(gaussian, sampler, steps, times, n=10000):
    den, y, mask, mean, cov = gaussian
    g = torch.Generator().manual_seed(1)
    out = guidance.inpaint(
        den,
        y.expand(n, 4),
        mask,
        sampler=sampler,
        steps=steps,
        generator=g,
        progress=False,
        resampling=rediff.Resampling(times),
    )
    assert torch.equal(out.x[:, mask], y[mask].expand(n, 2))  # the known part is kept
    x = out.x[:, ~mask]
    return float((x.mean(0) - mean).abs().max()), float((torch.cov(x.T) - cov).abs().max())


@pytest.mark.parametrize("sampler,steps", [("ddpm", 50), ("dpm++2m", 20), ("heun", 20)])
def test_inpainting_approaches_the_gaussian_conditional(gaussian, sampler, steps):
    """Replacement alone is biased (the unknown part only sees a noised known part); the
    resampling schedule removes the bias as it repeats (measured: mean error 0.67 -> 0.05 for
    DDPM with 1 -> 30 passes; see benchmarks/results/guidance.md)."""
    once = imputation_error(gaussian, sampler, steps, 1)
    repeated = imputation_error(gaussian, sampler, steps, 30)
    assert once[0] > 0.3  # the replacement method's known bias, so the test can tell
    assert repeated[0] < 0.25 * once[0] and repeated[0] < 0.12
    assert repeated[1] < 0.2


def test_inpainting_mask_may_be_per_sample(gaussian):
    den, y, _, _, _ = gaussian
    mask = torch.zeros(6, 4, dtype=torch.bool)
    mask[:3, 0] = True  # first three samples know coordinate 0, the rest nothing
    values = y.expand(6, 4).clone()
    g = torch.Generator().manual_seed(0)
    out = guidance.inpaint(den, values, mask, sampler="ddim", steps=10, generator=g)
    assert torch.equal(out.x[:3, 0], values[:3, 0])
    assert not torch.equal(out.x[3:, 0], values[3:, 0])


@pytest.mark.parametrize("sampler", ["ddpm", "euler_maruyama", "dpm++2m-sde"])
def test_shared_noise_agreement_grows_with_the_shared_steps(mixture, sampler):
    den = mixture.denoiser(SCHEDULES["linear_vp"])
    steps = 40
    spread = []
    for until in (0, 10, 20, 30, steps):
        g = torch.Generator().manual_seed(0)
        shared = rediff.SharedNoise(until, groups=50)
        x = rediff.sample(den, (400, 2), sampler=sampler, steps=steps, generator=g, shared=shared)
        members = x.x.reshape(50, 8, 2)  # 50 groups of 8 consecutive samples
        spread.append(float((members - members.mean(1, keepdim=True)).norm(dim=2).mean()))
    assert all(a > b for a, b in itertools.pairwise(spread)), spread
    assert spread[-1] == 0.0  # sharing every step: identical samples
    assert spread[0] > 0.5  # sharing x_T only: different samples


def test_shared_noise_groups_draw_their_own_noise(mixture):
    den = mixture.denoiser(SCHEDULES["linear_vp"])
    g = torch.Generator().manual_seed(0)
    x = rediff.sample(
        den, (6, 2), sampler="ddpm", steps=10, generator=g, shared=rediff.SharedNoise(10, 3)
    )
    assert torch.equal(x.x[0], x.x[1]) and not torch.equal(x.x[1], x.x[2])


def test_resampling_once_is_plain_sampling(mixture):
    den = mixture.denoiser(SCHEDULES["linear_vp"])
    a = rediff.sample(
        den, (8, 2), sampler="ddpm", steps=10, generator=torch.Generator().manual_seed(3)
    )
    b = rediff.sample(
        den,
        (8, 2),
        sampler="ddpm",
        steps=10,
        generator=torch.Generator().manual_seed(3),
        resampling=rediff.Resampling(1, 4),
    )
    assert torch.equal(a.x, b.x)


def test_renoise_is_the_forward_transition():
    """Pushing x_t to s by renoise leaves the marginal of the noised data intact: for x0 = 0,
    x_s has std sigma(s) exactly (in law)."""
    den = rediff.data.GaussianMixture(
        torch.zeros(1, 1, dtype=F64),
        torch.ones(1, 1, 1, dtype=F64) * 1e-12,
        torch.ones(1, dtype=F64),
    ).denoiser(SCHEDULES["linear_vp"])
    s = den.schedule
    g = torch.Generator().manual_seed(0)
    x_t = s.sigma(torch.tensor(0.3, dtype=F64)) * torch.randn(200000, 1, generator=g, dtype=F64)
    x_s = rediff.sampling.renoise(den, x_t, 0.3, 0.7, g)
    assert float(x_s.std()) == pytest.approx(float(s.sigma(0.7)), rel=0.01)
    x_from_data = rediff.sampling.renoise(den, torch.zeros(200000, 1, dtype=F64), 0.0, 0.7, g)
    assert float(x_from_data.std()) == pytest.approx(float(s.sigma(0.7)), rel=0.01)


def test_bad_guidance_input_is_refused(mixture):
    den = mixture.denoiser(SCHEDULES["linear_vp"])
    x = torch.zeros(4, 2, dtype=F64)
    for scale in (math.nan, math.inf, "big"):
        with pytest.raises(ValueError, match="guidance scale must be a finite number"):
            guidance.classifier_free(den, 1, scale)
        with pytest.raises(ValueError, match="guidance scale must be a finite number"):
            guidance.classifier(den, den.log_classifier, 1, scale)
    with pytest.raises(ValueError, match=r"components in \[0, 2\]"):
        guidance.classifier_free(den, 5, 2.0)(x, 0.5)
    with pytest.raises(ValueError, match=r"components in \[0, 2\]"):
        guidance.classifier(den, den.log_classifier, 3)(x, 0.5)
    with pytest.raises(ValueError, match=r"shape \[B\] = \[4\]"):
        guidance.classifier_free(den, torch.tensor([0, 1]), 2.0)(x, 0.5)
    with pytest.raises(ValueError, match="does not broadcast"):
        guidance.Inpainting(den, torch.zeros(4, 2, dtype=F64), torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="do not broadcast to the samples"):
        guidance.Inpainting(den, torch.zeros(2, dtype=F64), torch.ones(2))(torch.zeros(3, 4), 0.5)
    with pytest.raises(ValueError, match="only 0/False"):
        guidance.Inpainting(den, torch.zeros(2, dtype=F64), torch.full((2,), 0.5))
    with pytest.raises(ValueError, match="NaN"):
        guidance.Inpainting(den, torch.full((2,), math.nan), torch.ones(2))
    other = mixture.denoiser(SCHEDULES["ve"])
    with pytest.raises(ValueError, match="train the classifier on the denoiser's schedule"):
        guidance.classifier(den, rediff.NoisyClassifier(torch.nn.Identity(), other.schedule), 1)
    with pytest.raises(ValueError, match="groups = 3 must divide"):
        rediff.sample(den, (4, 2), steps=2, shared=rediff.SharedNoise(1, 3))
    with pytest.raises(ValueError, match="until must be an int >= 0"):
        rediff.SharedNoise(-1)
    with pytest.raises(ValueError, match="times must be an int >= 1"):
        rediff.Resampling(0)


@pytest.mark.parametrize("sampler", sorted(rediff.samplers.REGISTRY))
def test_every_sampler_takes_guided_and_inpainting_denoisers(mixture, sampler):
    """Guidance and inpainting are Denoisers: each registered sampler runs them unchanged."""
    den = mixture.denoiser(SCHEDULES["linear_vp"])
    labels = torch.arange(6) % 3
    g = torch.Generator().manual_seed(0)
    for guided in (
        guidance.classifier_free(den, labels, 2.0),
        guidance.classifier(den, den.log_classifier, labels, 2.0),
    ):
        x = rediff.sample(guided, (6, 2), sampler=sampler, steps=6, generator=g, dtype=F64).x
        assert torch.isfinite(x).all()
    values, mask = torch.full((6, 2), 1.5, dtype=F64), torch.tensor([True, False])
    out = guidance.inpaint(den, values, mask, sampler=sampler, steps=6, generator=g)
    assert torch.isfinite(out.x).all() and torch.equal(out.x[:, 0], values[:, 0])
    for limited in (thresholding.clip_x0(den, -1.0, 1.0), thresholding.dynamic_threshold(den)):
        x = rediff.sample(limited, (6, 2), sampler=sampler, steps=6, generator=g, dtype=F64).x
        assert torch.isfinite(x).all()
        if not rediff.samplers.get(sampler).adaptive:  # the last step returns x0_hat
            assert float(x.abs().max()) <= 1.0 + 1e-12


def test_known_noise_fixed_is_smooth_in_t_and_fresh_is_not(mixture):
    den = mixture.denoiser(SCHEDULES["linear_vp"])
    x, values, mask = (
        torch.zeros(4, 2, dtype=F64),
        torch.ones(4, 2, dtype=F64),
        torch.tensor([True, False]),
    )
    g = torch.Generator().manual_seed(0)
    fixed = guidance.Inpainting(den, values, mask, g, noise="fixed")
    fresh = guidance.Inpainting(den, values, mask, g)
    assert torch.equal(fixed(x, 0.5), fixed(x, 0.5))
    assert not torch.equal(fresh(x, 0.5), fresh(x, 0.5))
    # the fixed noise belongs to one run: another Inpainting (another run) draws its own
    other = guidance.Inpainting(den, values, mask, g, noise="fixed")
    assert not torch.equal(other(x, 0.5), fixed(x, 0.5))
    broadcast = guidance.Inpainting(den, torch.ones(2, dtype=F64), mask, g, noise="fixed")
    with pytest.raises(ValueError, match="give values of the samples' shape"):
        broadcast(x, 0.5)
    # the adaptive solver gets the fixed noise by default, and takes few steps with it
    out = guidance.inpaint(den, values, mask, sampler="ode", steps=4, generator=g)
    assert out.nfe < 500, out.nfe
    with pytest.raises(ValueError, match="unknown known-part noise 'stale'"):
        guidance.Inpainting(den, values, mask, g, noise="stale")


# ---- x0 clipping and dynamic thresholding ------------------------------------------------------


def test_clipping_and_dynamic_thresholding_follow_their_definitions(mixture):
    """clip_x0 is a clamp; dynamic thresholding is Imagen's s = max(quantile_p |x0|, bound),
    x0 <- clamp(x0, -s, s) bound / s per sample (checked against numpy's quantile), and the
    identity on samples that lie inside the bound."""
    import numpy as np

    den = mixture.denoiser(SCHEDULES["edm"])
    x_t, t = noised(mixture, den.schedule)
    x0 = den(x_t, t)
    torch.testing.assert_close(thresholding.clip_x0(den, -0.5, 2.0)(x_t, t), x0.clamp(-0.5, 2.0))
    a = x0.numpy()
    quantiles = np.quantile(np.abs(a), 0.6, axis=1)
    bound = float(np.median(quantiles))  # half the samples inside, half beyond
    out = thresholding.dynamic_threshold(den, percentile=0.6, bound=bound)(x_t, t)
    s = np.maximum(quantiles, bound)[:, None]
    torch.testing.assert_close(out, torch.from_numpy(np.clip(a, -s, s) * bound / s))
    inside = np.abs(a).max(axis=1) <= bound  # nothing to threshold: x0_hat itself
    assert inside.any() and (~inside).any()  # both cases occur
    torch.testing.assert_close(out[inside], x0[inside], rtol=0, atol=0)
    with pytest.raises(ValueError, match="low < high"):
        thresholding.clip_x0(den, 1.0, -1.0)
    with pytest.raises(ValueError, match=r"percentile must lie in \(0, 1\]"):
        thresholding.dynamic_threshold(den, percentile=1.5)
