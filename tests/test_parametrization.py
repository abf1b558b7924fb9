"""Prediction targets: definitions and the one exact conversion, for any (alpha, sigma)."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import target_definitions

from rediff.parametrization import Prediction, Target, coefficients, convert, input_scale

F64 = torch.float64
SIGMA_DATA = 0.7


@pytest.fixture
def state():
    """Random non-VP (alpha, sigma) per sample, and x_t built from known (x0, eps)."""
    gen = torch.Generator().manual_seed(11)
    B = 16
    alpha = 0.1 + 2.9 * torch.rand(B, generator=gen, dtype=F64)
    sigma = 0.05 + 4.95 * torch.rand(B, generator=gen, dtype=F64)
    x0 = torch.randn(B, 3, 5, generator=gen, dtype=F64)
    eps = torch.randn(B, 3, 5, generator=gen, dtype=F64)
    x_t = alpha[:, None, None] * x0 + sigma[:, None, None] * eps
    return alpha, sigma, x0, eps, x_t


def definitions(alpha, sigma, x0, eps, x_t):
    return target_definitions(x0, eps, x_t, alpha, sigma, SIGMA_DATA)


def test_convert_from_x0_matches_each_definition(state):
    alpha, sigma, x0, _, x_t = state
    for target, expected in definitions(*state).items():
        got = convert(x0, x_t, alpha, sigma, "x0", target, sigma_data=SIGMA_DATA)
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10, msg=str(target))


@pytest.mark.parametrize(("source", "dest"), list(itertools.permutations(list(Target), 2)), ids=str)
def test_convert_between_every_pair(state, source, dest):
    alpha, sigma, _, _, x_t = state
    truth = definitions(*state)
    forward = convert(truth[source], x_t, alpha, sigma, source, dest, sigma_data=SIGMA_DATA)
    torch.testing.assert_close(forward, truth[dest], rtol=1e-10, atol=1e-10)
    back = convert(forward, x_t, alpha, sigma, dest, source, sigma_data=SIGMA_DATA)
    torch.testing.assert_close(back, truth[source], rtol=1e-10, atol=1e-10)


def test_tweedie_score_relation(state):
    """x0 = (x_t + sigma^2 score) / alpha for any (alpha, sigma)."""
    alpha, sigma, x0, _, x_t = state
    score = convert(x0, x_t, alpha, sigma, "x0", "score")
    a, s = alpha[:, None, None], sigma[:, None, None]
    torch.testing.assert_close((x_t + s**2 * score) / a, x0, rtol=1e-10, atol=1e-10)


def test_scalar_coefficients_and_same_target_is_identity(state):
    _, _, x0, _, x_t = state
    a, b = coefficients("eps", 0.6, 0.8)
    assert float(a) == pytest.approx(1 / 0.8) and float(b) == pytest.approx(-0.6 / 0.8)
    assert convert(x0, x_t, 0.6, 0.8, "v", "v") is x0


def test_edm_input_scale_is_c_in():
    """c_in = 1/sqrt(s^2 + sd^2) on x_t / alpha, i.e. 1/sqrt(sigma^2 + alpha^2 sd^2) on x_t."""
    alpha, sigma = torch.tensor([1.0, 0.5], dtype=F64), torch.tensor([2.0, 0.3], dtype=F64)
    s = sigma / alpha
    c_in = 1 / torch.sqrt(s**2 + 0.5**2)
    torch.testing.assert_close(input_scale("edm", alpha, sigma, 0.5), c_in / alpha)
    torch.testing.assert_close(input_scale("eps", alpha, sigma), torch.ones(2, dtype=F64))


def test_prediction_views_agree(state):
    alpha, sigma, x0, eps, x_t = state
    pred = Prediction(x_t, x0, alpha, sigma)
    torch.testing.assert_close(pred.eps, eps, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(pred.score, -eps / sigma[:, None, None], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(pred.v, definitions(*state)[Target.V], rtol=1e-10, atol=1e-10)


def test_low_precision_values_keep_their_dtype(state):
    alpha, sigma, x0, _, x_t = state
    for dtype in (torch.float32, torch.bfloat16):
        out = convert(x0.to(dtype), x_t.to(dtype), alpha, sigma, "x0", "eps")
        assert out.dtype == dtype


def test_unknown_target_lists_valid_names(state):
    alpha, sigma, x0, _, x_t = state
    with pytest.raises(ValueError, match=r"unknown prediction target 'noise'.*'eps'.*'v'"):
        convert(x0, x_t, alpha, sigma, "noise", "x0")
    with pytest.raises(ValueError, match="unknown prediction target"):
        Target.parse("epsilon")


def test_shape_mismatch_is_refused(state):
    alpha, sigma, x0, _, x_t = state
    with pytest.raises(ValueError, match="shaped like its input"):
        convert(x0[:, :2], x_t, alpha, sigma, "x0", "eps")
    with pytest.raises(ValueError, match=r"shape \[B\]"):
        convert(x0, x_t, alpha[:3], sigma[:3], "x0", "eps")


def test_combination_is_the_linear_combination_it_writes():
    """Lazy sums, differences, scalings and divisions give the eager result; a tensor used in
    several terms is merged (one kernel), zero coefficients are skipped, dtypes promote."""
    from rediff._tensor import Combination, lazy

    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 3, generator=gen), torch.randn(4, 3, generator=gen)
    z = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    a, b, c = lazy(x, y, z)
    value = (2.0 * a - b / 4.0 + a * 0.5 - (a - b) + 0.0 * c).value()
    torch.testing.assert_close(value, (1.5 * x + 0.75 * y).double())
    assert value.dtype == torch.float64
    assert len((a + a - b).terms) == 3  # merged only when evaluated
    torch.testing.assert_close((a + a - b).value(), 2 * x - y)
    assert (Combination.of(x) * 0.0).value().abs().max() == 0
