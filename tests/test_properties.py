"""Property-based tests (hypothesis): random schedules, shapes, dtypes, step counts, grids and
configs never give a NaN or an unexplained exception from samplers, losses or likelihoods, and
invalid values give errors that name them.

The examples are derandomized (the same ones on every run, so CI is reproducible) and the
exact Gaussian-mixture denoiser stands in for a network, so every failure is rediff's.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

import rediff
from rediff import grids, likelihood, losses, samplers, schedules
from rediff.data import GaussianMixture
from rediff.nets import MLP
from rediff.parametrization import Target
from rediff.training import load_config

PROPERTY = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def _ordered(low: float, high: float, min_ratio: float) -> st.SearchStrategy:
    """(a, b) with low <= a and b = a * r <= high, r >= min_ratio (log-uniform-ish)."""
    return (
        st.floats(math.log(low), math.log(high / min_ratio))
        .flatmap(
            lambda la: st.tuples(st.just(la), st.floats(la + math.log(min_ratio), math.log(high)))
        )
        .map(lambda pair: (math.exp(pair[0]), math.exp(pair[1])))
    )


def _discrete_linear(T: int, betas: tuple[float, float]) -> schedules.DiscreteVP:
    """DDPM's linear betas, or (betas too large for T) the refusal naming the noise level."""
    log_alpha_bar = float(torch.log1p(-torch.linspace(*betas, T, dtype=torch.float64)).sum())
    if -log_alpha_bar > 2 * math.log(schedules.base.MAX_NOISE_LEVEL):  # s^2 = 1/alpha_bar - 1
        with pytest.raises(ValueError, match="the noise level sigma/alpha at t_max is"):
            schedules.DiscreteVP.linear(T, *betas)
        assume(False)
    return schedules.DiscreteVP.linear(T, *betas)


SCHEDULES = st.one_of(
    st.builds(_discrete_linear, st.integers(2, 2000), _ordered(1e-5, 0.5, 1.0)),
    st.builds(schedules.DiscreteVP.cosine, st.integers(2, 2000), st.floats(1e-4, 0.1)),
    st.builds(lambda b: schedules.LinearVP(*b), _ordered(0.01, 35.0, 1.0)),
    st.builds(lambda b: schedules.SubVP(*b), _ordered(0.01, 35.0, 1.0)),
    st.builds(lambda s: schedules.VE(*s), _ordered(1e-3, 1e7, 10.0)),
    st.builds(lambda s: schedules.EDM(*s), _ordered(1e-3, 1e7, 10.0)),
)
SHAPES = st.sampled_from([(1,), (2,), (3,), (1, 2, 2)])
DTYPES = st.sampled_from([torch.float32, torch.float64])


@st.composite
def mixtures(draw, dims: int) -> GaussianMixture:
    """1-3 components in ``dims`` dimensions, means in [-2, 2], diagonal scales in [0.05, 1]."""
    k = draw(st.integers(1, 3))
    coords = st.floats(-2.0, 2.0)
    means = torch.tensor(
        draw(st.lists(st.lists(coords, min_size=dims, max_size=dims), min_size=k, max_size=k))
    )
    scales = draw(st.lists(st.floats(0.05, 1.0), min_size=k, max_size=k))
    covariances = torch.stack([torch.eye(dims) * s**2 for s in scales])
    return GaussianMixture(means.double(), covariances.double())


def _continuous(schedule) -> bool:
    return not isinstance(schedule, schedules.DiscreteVP)


@given(
    schedule=SCHEDULES,
    shape=SHAPES,
    dtype=DTYPES,
    sampler=st.sampled_from(list(samplers.REGISTRY)),
    steps=st.integers(1, 25),
    spacing=st.sampled_from(list(grids.Spacing)),
    final_step=st.booleans(),
    batch=st.integers(1, 4),
    data=st.data(),
)
@PROPERTY
def test_every_sampler_gives_finite_samples(
    schedule, shape, dtype, sampler, steps, spacing, final_step, batch, data
):
    mixture = data.draw(mixtures(math.prod(shape)))
    integer = spacing in (grids.Spacing.LEADING, grids.Spacing.TRAILING)
    run = lambda: rediff.sample(  # noqa: E731
        mixture.denoiser(schedule),
        (batch, *shape),
        sampler=sampler,
        steps=steps,
        spacing=spacing,
        final_step=final_step,
        dtype=dtype,
        generator=torch.Generator().manual_seed(0),
        progress=False,
    )
    if integer and _continuous(schedule):
        with pytest.raises(ValueError, match=f"{spacing.value!r} spacing .* needs a DiscreteVP"):
            run()
        return
    if integer and steps + (not final_step) > schedule.num_steps:
        with pytest.raises(ValueError, match=f"at most T = {schedule.num_steps} grid points"):
            run()
        return
    if spacing is grids.Spacing.LINEAR and not final_step:
        with pytest.raises(ValueError, match="needs final_step=True"):
            run()
        return
    if spacing is grids.Spacing.LINEAR and schedule.t_max / steps < schedule.t_min:
        with pytest.raises(ValueError, match="lies below t_min"):
            run()
        return
    out = run()
    assert out.x.shape == (batch, *shape) and out.x.dtype == dtype
    assert torch.isfinite(out.x).all(), (sampler, schedule, out.x)


@given(
    schedule=SCHEDULES,
    shape=SHAPES,
    dtype=DTYPES,
    target=st.sampled_from([t for t in Target]),
    weighting=st.sampled_from(list(losses.Weighting)),
    time_sampler=st.sampled_from(list(losses.TimeSampler)),
    batch=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
@PROPERTY
def test_denoising_losses_and_their_gradients_are_finite(
    schedule, shape, dtype, target, weighting, time_sampler, batch, seed
):
    torch.manual_seed(seed)
    net = MLP(math.prod(shape), width=16, depth=2).to(dtype)
    model = rediff.DiffusionModel(net, schedule, target, "t")
    objective = losses.Objective(weighting=weighting, time_sampler=time_sampler)
    generator = torch.Generator().manual_seed(seed)
    x0 = torch.randn((batch, *shape), generator=generator, dtype=dtype)
    if time_sampler is losses.TimeSampler.STEPS and _continuous(schedule):
        with pytest.raises(ValueError, match="DiscreteVP"):
            objective.draw(schedule, x0, generator)
        return
    loss = objective(model, x0, objective.draw(schedule, x0, generator))
    loss.backward()
    assert torch.isfinite(loss), (target, weighting, time_sampler, schedule)
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())


@given(schedule=SCHEDULES, shape=SHAPES, dtype=DTYPES, batch=st.integers(1, 3), data=st.data())
@settings(PROPERTY, max_examples=30)
def test_likelihoods_are_finite(schedule, shape, dtype, batch, data):
    """The probability-flow ODE's log-likelihood of data drawn from the mixture itself."""
    mixture = data.draw(mixtures(math.prod(shape)))
    x = mixture.sample(batch, generator=torch.Generator().manual_seed(0)).reshape(batch, *shape)
    result = likelihood.log_likelihood(
        mixture.denoiser(schedule), x.to(dtype), solver=likelihood.Solver(rtol=1e-4, atol=1e-4)
    )
    assert torch.isfinite(result.nll).all() and torch.isfinite(result.latent).all()


# ---- invalid values give errors that name them -----------------------------------------------

NOT_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])


@given(steps=st.one_of(st.integers(max_value=0), st.floats(0.5, 100.0), st.booleans()))
@PROPERTY
def test_bad_step_counts_are_named(steps):
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        grids.make(schedules.EDM(), steps)


@given(name=st.text(min_size=1, max_size=12).filter(lambda s: s not in samplers.REGISTRY))
@PROPERTY
def test_unknown_sampler_names_are_named(name):
    with pytest.raises(ValueError, match=r"unknown sampler .* valid samplers: ddpm"):
        samplers.get(name)


@given(
    low=st.one_of(st.floats(max_value=0.0), NOT_FINITE),
    high=st.one_of(st.floats(0.001, 100.0), NOT_FINITE),
    kind=st.sampled_from(["VE", "EDM"]),
)
@PROPERTY
def test_bad_noise_levels_are_named(low, high, kind):
    with pytest.raises(ValueError, match="sigma_min"):
        getattr(schedules, kind)(low, high)


@pytest.mark.parametrize(
    "build",
    [
        lambda: schedules.VE(0.01, 2e8),
        lambda: schedules.EDM(0.002, 1e9),
        lambda: schedules.LinearVP(0.1, 80.0),
        lambda: schedules.SubVP(1.0, 100.0),
        lambda: schedules.DiscreteVP.linear(1000, 0.02, 0.08),
    ],
)
def test_noise_levels_beyond_float32_are_refused(build):
    """A schedule whose noise level at t_max passes MAX_NOISE_LEVEL (1e8: s^4 fits float32)."""
    with pytest.raises(
        ValueError, match=r"the noise level sigma/alpha at t_max is .* above 1e\+08"
    ):
        build()


@given(
    low=st.one_of(st.floats(max_value=0.0), NOT_FINITE),
    high=st.floats(0.1, 30.0),
    kind=st.sampled_from(["LinearVP", "SubVP"]),
)
@PROPERTY
def test_bad_betas_are_named(low, high, kind):
    with pytest.raises(ValueError, match="beta_min"):
        getattr(schedules, kind)(low, high)


@given(
    shape=SHAPES, where=st.integers(0, 3), bad=NOT_FINITE, sampler=st.sampled_from(["ddim", "heun"])
)
@PROPERTY
def test_non_finite_data_are_named(shape, where, bad, sampler):
    """A NaN or Inf in the data or the starting point is an error naming it, not a NaN out."""
    dims = math.prod(shape)
    mixture = GaussianMixture(torch.zeros(1, dims), torch.eye(dims)[None])
    x = torch.zeros(4, *shape, dtype=torch.float64)
    x.view(4, -1)[where, 0] = bad
    with pytest.raises(ValueError, match=r"x contains NaN or Inf"):
        likelihood.log_likelihood(mixture.denoiser(schedules.LinearVP()), x)
    den = mixture.denoiser(schedules.EDM())
    with pytest.raises(ValueError, match=r"x \(the sampler's starting point\) contains NaN"):
        samplers.get(sampler).function(den, x * 80.0, grids.make(den.schedule, 5))


NUMERIC_OPTIONS = {
    "train.steps": "int",
    "train.batch_size": "int",
    "train.accumulate": "int",
    "train.lr": "float",
    "train.warmup": "int",
    "train.grad_clip": "float",
    "train.ema_half_life": "float",
    "train.label_dropout": "float",
    "train.keep_checkpoints": "int",
    "model.width": "int",
    "model.depth": "int",
    "model.dropout": "float",
    "model.sigma_data": "float",
    "sample.steps": "int",
}


@given(
    key=st.sampled_from(list(NUMERIC_OPTIONS)),
    value=st.one_of(st.integers(-(10**6), 10**6), st.floats(allow_nan=True, allow_infinity=True)),
)
@PROPERTY
def test_config_values_are_checked_and_named(key, value):
    """Any number for any numeric option: a config holding it, or an error naming the option
    (wrong type, not finite, out of range)."""
    text = _toml(value) if isinstance(value, float) and not math.isfinite(value) else repr(value)
    try:
        config = load_config(None, [f"{key}={text}"])
    except ValueError as error:
        assert key in str(error), error
        return
    section, name = key.split(".")
    assert getattr(getattr(config, section), name) == value


def _toml(value: float) -> str:
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


CHOICES = {
    "data.name": st.sampled_from(
        ["moons", "swiss_roll", "eight_gaussians", "checkerboard", "ring"]
    ),
    "schedule.kind": st.sampled_from(["discrete_vp", "linear_vp", "subvp", "ve", "edm"]),
    "schedule.betas": st.sampled_from(["linear", "cosine"]),
    "model.target": st.sampled_from([t.value for t in Target]),
    "model.time_input": st.sampled_from(["t", "step", "c_noise"]),
    "model.learned_variance": st.booleans(),
    "loss.kind": st.sampled_from(["denoising", "vlb", "hybrid", "sliced_sm", "exact_sm"]),
    "loss.weighting": st.sampled_from([w.value for w in losses.Weighting]),
    "loss.time_sampler": st.sampled_from([s.value for s in losses.TimeSampler]),
    "loss.variance": st.sampled_from(["beta", "beta_tilde", "learned"]),
    "train.precision": st.sampled_from(["fp32", "bf16"]),
    "train.accumulate": st.sampled_from([1, 2]),
    "sample.sampler": st.sampled_from(list(samplers.REGISTRY)),
}
SMALL_RUN = [
    "data.n=256",
    "model.width=16",
    "model.depth=1",
    "train.steps=2",
    "train.batch_size=32",
    "train.warmup=1",
    "train.log_every=1",
    "train.checkpoint_every=2",
]


@given(choices=st.fixed_dictionaries(CHOICES))
@settings(PROPERTY, max_examples=60)
def test_any_combination_of_config_choices_trains_or_is_refused_cleanly(choices, tmp_path_factory):
    """Every combination of the config's choices either trains (finite losses and weights)
    or is refused with a ValueError before the run directory exists: never a NaN, a crash
    mid-run or another exception type."""
    from rediff.training import train

    overrides = [
        *SMALL_RUN,
        *(
            f"{k}={v!r}".replace("True", "true").replace("False", "false")
            for k, v in choices.items()
        ),
    ]
    run = tmp_path_factory.mktemp("run") / "run"
    try:
        model = train(load_config(None, overrides), run, progress=False)
    except ValueError as error:
        event("refused")
        assert not run.exists(), f"refused after writing files: {error}"
        return
    event("trained")
    rows = (run / "metrics.csv").read_text().splitlines()[1:]
    assert all(math.isfinite(float(row.split(",")[1])) for row in rows), rows
    assert all(torch.isfinite(p).all() for p in model.parameters())


@given(
    schedule=SCHEDULES,
    sampler=st.sampled_from(list(samplers.REGISTRY)),
    steps=st.integers(1, 15),
    scale=st.floats(0.0, 20.0),
    kind=st.sampled_from(["classifier_free", "classifier"]),
    dtype=DTYPES,
    data=st.data(),
)
@settings(PROPERTY, max_examples=100)
def test_guided_sampling_is_finite_at_any_scale(schedule, sampler, steps, scale, kind, dtype, data):
    """Classifier-free and classifier guidance of the exact mixture (component = class) at
    any scale in [0, 20], with every sampler: finite samples."""
    mixture = data.draw(mixtures(2))
    den = mixture.denoiser(schedule)
    labels = torch.arange(4) % mixture.num_components
    guided = (
        rediff.guidance.classifier_free(den, labels, scale)
        if kind == "classifier_free"
        else rediff.guidance.classifier(den, den.log_classifier, labels, scale)
    )
    out = rediff.sample(
        guided,
        (4, 2),
        sampler=sampler,
        steps=steps,
        dtype=dtype,
        generator=torch.Generator().manual_seed(0),
        progress=False,
    )
    assert torch.isfinite(out.x).all(), (kind, scale, sampler, schedule)


@given(
    T=st.integers(2, 300),
    betas=_ordered(1e-4, 0.3, 1.0),
    cosine=st.booleans(),
    shape=SHAPES,
    variance=st.sampled_from(["beta", "beta_tilde"]),
    levels=st.integers(2, 256),
    trace=st.sampled_from(["exact", "hutchinson"]),
    data=st.data(),
)
@settings(PROPERTY, max_examples=15)
def test_the_bound_and_the_hutchinson_likelihood_are_finite(
    T, betas, cosine, shape, variance, levels, trace, data
):
    """DDPM's discrete bound (any T, betas, decoder levels, fixed variance) and the ODE
    likelihood with either divergence, on data in [-1, 1] from a mixture."""
    schedule = schedules.DiscreteVP.cosine(T) if cosine else _discrete_linear(T, betas)
    mixture = data.draw(mixtures(math.prod(shape)))
    x0 = mixture.sample(3, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    x0 = x0.reshape(3, *shape)
    den = mixture.denoiser(schedule)
    bound = rediff.vlb(den, x0, variance=variance, levels=levels)
    assert torch.isfinite(bound.bits_per_dim).all(), (schedule, variance, levels)
    result = likelihood.log_likelihood(
        den,
        x0,
        trace=trace,
        generator=torch.Generator().manual_seed(0),
        solver=likelihood.Solver(rtol=1e-4, atol=1e-4),
    )
    assert torch.isfinite(result.nll).all()
