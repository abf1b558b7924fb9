"""The Denoiser interface, and ``DiffusionModel``: any network wrapped into a Denoiser.

A Denoiser maps (x_t, t, **cond) to x0_hat, the estimate of E[x0 | x_t], and carries the
``schedule`` whose times it takes. Samplers, guidance and likelihood code consume Denoisers
only, so a trained network and the exact Gaussian-mixture denoiser are interchangeable.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import nn

from rediff._choices import Choice
from rediff._tensor import Tensor, batch_time, expand_to
from rediff.parametrization import Prediction, Target, convert, input_scale
from rediff.schedules import DiscreteVP, Schedule
from rediff.transitions import Point, point_at

#: the label meaning "no class" (classifier-free guidance's unconditional model, label
#: dropout): conditional denoisers take ``labels`` [B] in [0, num_classes - 1] or NULL_LABEL
NULL_LABEL = -1


class Denoiser(ABC):
    """x0_hat = D(x_t, t, **cond) for x_t: [B, *D], t a scalar or [B] in the schedule's domain."""

    schedule: Schedule

    @abstractmethod
    def __call__(self, x_t: Tensor, t: Tensor | float, **cond: Any) -> Tensor:
        """Return x0_hat, shaped and typed like ``x_t``."""

    def at(self, x_t: Tensor, point: Point, **cond: Any) -> Tensor:
        """x0_hat at a grid point whose coefficients the caller already holds (samplers get
        them once per grid from ``transitions.points``, which validates the times): the same
        as ``self(x_t, point.t, **cond)``. ``DiffusionModel`` uses the point's alpha and sigma
        instead of evaluating the schedule again; wrappers pass the point through."""
        return self(x_t, point.t, **cond)

    def predict(self, x_t: Tensor, t: Tensor | float, **cond: Any) -> Prediction:
        """Evaluate once and return every target (``.x0``, ``.eps``, ``.score``, ``.v``)."""
        t = batch_time(t, x_t)
        x0 = self(x_t, t, **cond)
        return Prediction(x_t, x0, self.schedule.alpha(t), self.schedule.sigma(t))

    def with_variance(self, x_t: Tensor, t: Tensor | float, **cond: Any) -> tuple[Tensor, Tensor]:
        """x0_hat and the learned reverse-variance fraction f (one evaluation), for models
        that learn their variance: the reverse step's variance is exp(f log beta +
        (1 - f) log beta_tilde) (Nichol & Dhariwal 2021, eq. 15)."""
        raise TypeError(
            f"{type(self).__name__} does not learn its reverse variance; use a DiffusionModel "
            "built with learned_variance=True, or a fixed variance (beta, beta_tilde)"
        )


class Conditioned(Denoiser):
    """A Denoiser with its conditioning bound: ``Conditioned(model, labels=y)(x_t, t)`` is
    ``model(x_t, t, labels=y)``, so samplers, which never pass conditioning, can use it."""

    def __init__(self, denoiser: Denoiser, **cond: Any) -> None:
        self.denoiser, self.schedule, self.cond = denoiser, denoiser.schedule, cond

    def __call__(self, x_t: Tensor, t: Tensor | float, **cond: Any) -> Tensor:
        return self.denoiser(x_t, t, **{**self.cond, **cond})

    def at(self, x_t: Tensor, point: Point, **cond: Any) -> Tensor:
        return self.denoiser.at(x_t, point, **{**self.cond, **cond})

    def with_variance(self, x_t: Tensor, t: Tensor | float, **cond: Any) -> tuple[Tensor, Tensor]:
        return self.denoiser.with_variance(x_t, t, **{**self.cond, **cond})


class TimeInput(Choice):
    """What the network receives as its time input.

    - ``t``: the schedule's own time t (for EDM, the noise level);
    - ``step``: DDPM's step index T t - 1, in [0, T - 1] at the integer steps (the
      convention of DDPM code and diffusers' ``timesteps``; DiscreteVP only);
    - ``c_noise``: EDM's log(noise_level) / 4 (Karras et al. 2022, table 1).
    """

    T = "t"
    STEP = "step"
    C_NOISE = "c_noise"


def time_feature(
    time_input: TimeInput, schedule: Schedule, t: Tensor | float, lam: Tensor | float | None = None
) -> Tensor | float:
    """A network's time input for float64 times t: [B], or one float time (see
    ``TimeInput``). ``lam`` = log(alpha / sigma) at t, if the caller has it: c_noise =
    log(sigma / alpha) / 4 = -lam / 4."""
    if time_input is TimeInput.STEP:
        return t * schedule.num_steps - 1.0
    if time_input is TimeInput.C_NOISE:
        return -0.25 * (0.5 * schedule.log_snr(t) if lam is None else lam)
    return t


def _check_time_input(time_input: TimeInput | str, schedule: Schedule) -> TimeInput:
    time_input = TimeInput.parse(time_input)
    if time_input is TimeInput.STEP and not isinstance(schedule, DiscreteVP):
        raise ValueError(
            "time_input='step' needs a DiscreteVP schedule (it has integer steps); "
            f"got {type(schedule).__name__}: use time_input='t' or 'c_noise'"
        )
    return time_input


def _check_schedule(schedule: Schedule) -> Schedule:
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a rediff Schedule, got {type(schedule).__name__}")
    return schedule


class DiffusionModel(nn.Module, Denoiser):
    """Wrap ``net(x, time, **cond) -> prediction`` into a Denoiser.

    The network predicts ``target`` (eps, x0, score, v or EDM's F); the wrapper scales its
    input (EDM's c_in, 1 otherwise), feeds it the chosen time input, and converts its
    output to x0_hat with ``rediff.parametrization.convert``.

    Args:
        net: any module called as ``net(x [B, *D], time [B], **cond)``, returning [B, *D].
        schedule: the forward process the model was (or will be) trained on.
        target: ``"eps"`` (default), ``"x0"``, ``"score"``, ``"v"`` or ``"edm"``.
        time_input: ``"t"`` (default), ``"step"`` (DiscreteVP only) or ``"c_noise"``.
        sigma_data: data standard deviation for the ``edm`` target.
        learned_variance: the net also outputs v (stacked after the prediction on dim 1),
            the reverse variance's interpolation fraction f = (v + 1) / 2 (Nichol & Dhariwal
            2021, eq. 15); build the net with ``outputs=2``.
    """

    def __init__(
        self,
        net: nn.Module,
        schedule: Schedule,
        target: Target | str = Target.EPS,
        time_input: TimeInput | str = TimeInput.T,
        sigma_data: float = 0.5,
        learned_variance: bool = False,
    ) -> None:
        super().__init__()
        self.learned_variance = bool(learned_variance)
        self.net = net
        self.schedule = _check_schedule(schedule)
        self.target = Target.parse(target)
        self.time_input = _check_time_input(time_input, schedule)
        if not sigma_data > 0:
            raise ValueError(f"sigma_data must be positive, got {sigma_data}")
        self.sigma_data = float(sigma_data)

    def time_feature(self, t: Tensor) -> Tensor:
        """The network's time input for float64 times t: [B] (see ``TimeInput``)."""
        return time_feature(self.time_input, self.schedule, t)

    def with_net(self, net: nn.Module) -> DiffusionModel:
        """The same model around another module holding these parameters (compiled, DDP)."""
        return DiffusionModel(
            net, self.schedule, self.target, self.time_input, self.sigma_data, self.learned_variance
        )

    def outputs(self, x_t: Tensor, t: Tensor | float, **cond: Any) -> tuple[Tensor, Tensor | None]:
        """One network evaluation: its prediction of ``self.target`` at (x_t, t), and the
        variance fraction f (None unless ``learned_variance``)."""
        t = self.schedule.check_t(batch_time(t, x_t), allow_zero=False)
        alpha, sigma = self.schedule.alpha(t), self.schedule.sigma(t)
        scale = input_scale(self.target, alpha, sigma, self.sigma_data)
        feature_dtype = torch.promote_types(x_t.dtype, torch.float32)
        out = self.net(expand_to(scale, x_t) * x_t, self.time_feature(t).to(feature_dtype), **cond)
        return self._split(out, x_t) if self.learned_variance else (out, None)

    def _split(self, out: Tensor, x_t: Tensor) -> tuple[Tensor, Tensor]:
        """A learned-variance net's output: the prediction and the fraction f = (v + 1) / 2."""
        if out.shape[1] != 2 * x_t.shape[1]:
            raise ValueError(
                f"learned_variance needs the net to output [B, 2 x {x_t.shape[1]}, ...] (build it "
                f"with outputs=2), got {tuple(out.shape)}"
            )
        prediction, v = out.chunk(2, dim=1)
        return prediction, (v + 1.0) / 2.0

    def target_prediction(self, x_t: Tensor, t: Tensor | float, **cond: Any) -> Tensor:
        """The network's prediction of ``self.target`` at (x_t, t)."""
        return self.outputs(x_t, t, **cond)[0]

    def _x0(self, prediction: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        alpha, sigma = self.schedule.alpha(t), self.schedule.sigma(t)
        return convert(
            prediction, x_t, alpha, sigma, self.target, Target.X0, sigma_data=self.sigma_data
        )

    def forward(self, x_t: Tensor, t: Tensor | float, **cond: Any) -> Tensor:
        """x0_hat for x_t: [B, *D], t a scalar or [B] in [t_min, t_max]."""
        if isinstance(t, float):  # one time for the batch
            self.schedule.check_t(torch.tensor([t], dtype=torch.float64), allow_zero=False)
            return self.at(x_t, point_at(self.schedule, t), **cond)
        t = self.schedule.check_t(batch_time(t, x_t), allow_zero=False)
        return self._x0(self.target_prediction(x_t, t, **cond), x_t, t)

    def at(self, x_t: Tensor, point: Point, **cond: Any) -> Tensor:
        """``forward`` at one grid point for the whole batch, from the point's float
        coefficients: no schedule evaluation, no per-sample coefficient tensors, no input
        scaling when the scale is 1 (every target but edm)."""
        scale = float(input_scale(self.target, point.alpha, point.sigma, self.sigma_data))
        feature = torch.full(
            (x_t.shape[0],),
            time_feature(self.time_input, self.schedule, point.t, point.lam),
            dtype=torch.promote_types(x_t.dtype, torch.float32),
            device=x_t.device,
        )
        out = self.net(x_t if scale == 1.0 else scale * x_t, feature, **cond)
        prediction = self._split(out, x_t)[0] if self.learned_variance else out
        return convert(
            prediction,
            x_t,
            point.alpha,
            point.sigma,
            self.target,
            Target.X0,
            sigma_data=self.sigma_data,
        )

    def with_variance(self, x_t: Tensor, t: Tensor | float, **cond: Any) -> tuple[Tensor, Tensor]:
        if not self.learned_variance:
            return super().with_variance(x_t, t, **cond)
        t = self.schedule.check_t(batch_time(t, x_t), allow_zero=False)
        prediction, fraction = self.outputs(x_t, t, **cond)
        return self._x0(prediction, x_t, t), fraction


class NoisyClassifier(nn.Module):
    """A classifier of noised data: log p(y | x_t) for the forward process ``schedule``, the
    ingredient of classifier guidance (Dhariwal & Nichol 2021, section 4; Song et al. 2021,
    appendix I).

    ``net(x, time) -> logits [B, num_classes]`` receives x_t scaled to unit variance by EDM's
    c_in / alpha = 1 / sqrt(sigma^2 + alpha^2 sigma_data^2) (whatever the schedule, so VE's
    large noise levels reach the net at a sane scale) and the chosen time input.
    """

    def __init__(
        self,
        net: nn.Module,
        schedule: Schedule,
        time_input: TimeInput | str = TimeInput.T,
        sigma_data: float = 0.5,
    ) -> None:
        super().__init__()
        self.net = net
        self.schedule = _check_schedule(schedule)
        self.time_input = _check_time_input(time_input, schedule)
        if not sigma_data > 0:
            raise ValueError(f"sigma_data must be positive, got {sigma_data}")
        self.sigma_data = float(sigma_data)

    def logits(self, x_t: Tensor, t: Tensor | float) -> Tensor:
        """Unnormalised log p(y | x_t) for every class: [B, num_classes]."""
        t = self.schedule.check_t(batch_time(t, x_t), allow_zero=False)
        alpha, sigma = self.schedule.alpha(t), self.schedule.sigma(t)
        scale = input_scale(Target.EDM, alpha, sigma, self.sigma_data)
        feature = time_feature(self.time_input, self.schedule, t)
        return self.net(expand_to(scale, x_t) * x_t, feature.to(torch.float32))

    def forward(self, x_t: Tensor, t: Tensor | float, labels: Tensor) -> Tensor:
        """log p(labels | x_t) [B] for labels: [B] in [0, num_classes - 1]."""
        log_probs = torch.log_softmax(self.logits(x_t, t).float(), dim=1)
        labels = torch.as_tensor(labels, device=x_t.device).long()
        if labels.shape != (x_t.shape[0],):
            raise ValueError(
                f"labels must have shape [B] = [{x_t.shape[0]}], got {tuple(labels.shape)}"
            )
        if bool(((labels < 0) | (labels >= log_probs.shape[1])).any()):
            raise ValueError(
                f"labels must lie in [0, {log_probs.shape[1] - 1}], got values "
                f"{sorted(set(labels.tolist()))[:10]}"
            )
        return log_probs.gather(1, labels[:, None])[:, 0]

    def with_net(self, net: nn.Module) -> NoisyClassifier:
        """The same classifier around another module holding these parameters."""
        return NoisyClassifier(net, self.schedule, self.time_input, self.sigma_data)
