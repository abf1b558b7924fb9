"""diffusers folders read by rediff (offline, small models built here): the schedules equal
diffusers' own, the loaded UNet predicts what diffusers' does, and bad folders are refused
with one clear error each."""

from __future__ import annotations

import json
import warnings

import diffusers
import pytest
import torch

from rediff import interop
from rediff.model import TimeInput
from rediff.parametrization import Target

F64 = torch.float64


@pytest.mark.parametrize(
    "settings",
    [
        {"beta_schedule": "linear"},
        {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
        {"beta_schedule": "squaredcos_cap_v2"},
        {"beta_schedule": "sigmoid"},
        {"trained_betas": torch.linspace(1e-3, 0.05, 1000).tolist()},
    ],
    ids=["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid", "trained_betas"],
)
def test_alpha_bar_equals_diffusers(settings):
    reference = diffusers.DDPMScheduler(num_train_timesteps=1000, **settings)
    schedule = interop.schedule(dict(reference.config))
    k = torch.arange(1, 1001, dtype=F64)
    alpha_bar = schedule.alpha(k / 1000).square()
    # diffusers keeps its tables in float32: agreement to float32's precision
    torch.testing.assert_close(alpha_bar, reference.alphas_cumprod.double(), rtol=2e-6, atol=1e-9)


def test_zero_terminal_snr_equals_diffusers_but_its_last_step_is_reported():
    reference = diffusers.DDPMScheduler(rescale_betas_zero_snr=True, beta_schedule="scaled_linear")
    with pytest.warns(UserWarning, match="infinite noise level"):
        schedule = interop.schedule(dict(reference.config))
    alpha_bar = schedule.alpha(torch.arange(1, 1001, dtype=F64) / 1000).square()
    torch.testing.assert_close(
        alpha_bar[:-1], reference.alphas_cumprod[:-1].double(), rtol=2e-5, atol=1e-8
    )
    assert float(reference.alphas_cumprod[-1]) == 0.0 and float(alpha_bar[-1]) == pytest.approx(
        2.0**-24
    )


def _folder(tmp_path, prediction_type="epsilon", **scheduler):
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    )
    unet.save_pretrained(tmp_path / "unet")
    settings = {"clip_sample": False, **scheduler}  # diffusers clips x0 by default
    diffusers.DDPMScheduler(prediction_type=prediction_type, **settings).save_pretrained(
        tmp_path / "scheduler"
    )
    return unet.eval()


@pytest.mark.parametrize(
    ("prediction_type", "target"),
    [("epsilon", Target.EPS), ("sample", Target.X0), ("v_prediction", Target.V)],
)
def test_a_loaded_unet_predicts_what_diffusers_predicts(tmp_path, prediction_type, target):
    unet = _folder(tmp_path, prediction_type)
    model = interop.load_diffusers(tmp_path)
    assert model.target is target and model.time_input is TimeInput.STEP
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 1, 8, 8, generator=g)
    for index in (0.0, 17.0, 500.5, 999.0):  # integer and fractional timestep indices
        t = torch.full((3,), (index + 1) / 1000, dtype=F64)
        with torch.no_grad():
            ours = model.target_prediction(x, t)
            theirs = unet(x, torch.full((3,), index)).sample
            x0 = model(x, t)
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
        # x0_hat is that prediction converted (rediff.convert, float64 coefficients)
        alpha, sigma = model.schedule.alpha(t[0]), model.schedule.sigma(t[0])
        a, b = {Target.EPS: (1 / sigma, -alpha / sigma), Target.X0: (0.0, 1.0)}.get(
            target, (alpha / sigma, -(alpha**2 + sigma**2) / sigma)
        )
        expected = ((theirs.double() - a * x.double()) / b).float()
        torch.testing.assert_close(x0, expected, rtol=1e-4, atol=1e-4 * float(1 / alpha))


def test_clip_sample_is_reported(tmp_path):
    _folder(tmp_path, clip_sample=True)
    with pytest.warns(UserWarning, match="clip_sample"):
        interop.load_diffusers(tmp_path)


def test_bad_folders_are_refused_with_one_clear_error(tmp_path):
    _folder(tmp_path)
    with pytest.raises(FileNotFoundError, match="has no unet/ or scheduler/"):
        interop.load_diffusers(tmp_path / "unet")
    config = tmp_path / "scheduler" / "scheduler_config.json"
    values = json.loads(config.read_text())
    config.unlink()
    with pytest.raises(FileNotFoundError, match=r"scheduler_config\.json is missing"):
        interop.load_diffusers(tmp_path)
    config.write_text(json.dumps({**values, "beta_schedule": "quadratic"}))
    with pytest.raises(ValueError, match="unknown beta_schedule 'quadratic'"):
        interop.load_diffusers(tmp_path)
    config.write_text(json.dumps(values))
    unet_config = tmp_path / "unet" / "config.json"
    unet_values = json.loads(unet_config.read_text())
    unet_config.write_text(json.dumps({**unet_values, "_class_name": "UNet2DConditionModel"}))
    with pytest.raises(ValueError, match="holds a UNet2DConditionModel"):
        interop.load_diffusers(tmp_path)
    unet_config.write_text(json.dumps({**unet_values, "block_out_channels": [8, 32]}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="does not fit"):
            interop.load_diffusers(tmp_path)


def test_without_diffusers_the_error_names_the_extra(tmp_path, monkeypatch):
    _folder(tmp_path)
    monkeypatch.setitem(__import__("sys").modules, "diffusers", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install 'rediff\[diffusers\]'"):
        interop.load_diffusers(tmp_path)


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_ddim_equals_diffusers_ddim_loop_on_a_loaded_model(tmp_path, spacing):
    """rediff's DDIM (eta = 0) on diffusers' own timesteps (index i is t = (i + 1) / T, then
    the final jump to clean data, which is diffusers' step to alpha_bar = 1) equals
    DDIMScheduler's loop on the same loaded UNet and noise, sample for sample. (Not
    "linspace": there diffusers' step goes to t - T / N, not to the next of its timesteps,
    so its loop is no DDIM on one grid.)"""
    from rediff import samplers

    _folder(tmp_path, "epsilon", beta_schedule="squaredcos_cap_v2")
    model = interop.load_diffusers(tmp_path).double()
    scheduler = diffusers.DDIMScheduler.from_pretrained(
        tmp_path / "scheduler", timestep_spacing=spacing
    )
    scheduler.set_timesteps(10)
    x_T = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=F64)
    x = x_T.clone()
    unet = model.net.unet
    with torch.no_grad():
        for step in scheduler.timesteps:
            eps = unet(x, step).sample
            x = scheduler.step(eps, step, x).prev_sample
    T = scheduler.config.num_train_timesteps
    ts = torch.cat([(scheduler.timesteps.double() + 1) / T, torch.zeros(1, dtype=F64)])
    with torch.no_grad():
        ours = samplers.ddim(model, x_T, ts)
    torch.testing.assert_close(ours, x.double(), rtol=1e-6, atol=1e-6)


def test_diffusers_linspace_ddim_is_rediffs_ddim_step_by_step_on_shifted_pairs(tmp_path):
    """With timestep_spacing = "linspace" diffusers' DDIM evaluates at its listed timesteps
    (999, 888, ...) but steps to t - T / N (899, 788, ...): its loop is rediff's DDIM applied
    one step at a time on the pairs (t_i, t_i - T / N), never one grid."""
    from rediff import samplers

    _folder(tmp_path, "epsilon", beta_schedule="squaredcos_cap_v2")
    model = interop.load_diffusers(tmp_path).double()
    scheduler = diffusers.DDIMScheduler.from_pretrained(
        tmp_path / "scheduler", timestep_spacing="linspace"
    )
    scheduler.set_timesteps(10)
    x_T = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=F64)
    theirs, ours = x_T.clone(), x_T.clone()
    with torch.no_grad():
        for step in scheduler.timesteps:
            theirs = scheduler.step(model.net.unet(theirs, step).sample, step, theirs).prev_sample
            p, q = (int(step) + 1) / 1000, max(int(step) - 100 + 1, 0) / 1000
            ours = samplers.ddim(model, ours, torch.tensor([p, q], dtype=F64))
    assert scheduler.timesteps.tolist()[:2] == [999, 888]
    torch.testing.assert_close(ours, theirs.double(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("steps", [5, 20])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_dpm_solver_pp_2m_equals_diffusers_multistep_scheduler(tmp_path, spacing, steps):
    """rediff's DPM-Solver++(2M) on DPMSolverMultistepScheduler's timesteps (all integer
    steps, so the grids coincide; its last step, into sigma = 0, is first order as rediff's)
    equals its loop on the same UNet and noise. diffusers computes in float32 (its sigma
    table and the sample), so the tolerance is float32's rounding of the same algorithm:
    4 x the gap between rediff's own float32 and float64 runs on that grid."""
    from rediff import samplers

    _folder(tmp_path, "epsilon", beta_schedule="linear")
    model = interop.load_diffusers(tmp_path).double()
    scheduler = diffusers.DPMSolverMultistepScheduler.from_pretrained(
        tmp_path / "scheduler", timestep_spacing=spacing, algorithm_type="dpmsolver++"
    )
    scheduler.set_timesteps(steps)
    x_T = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=F64)
    x = x_T.clone()
    with torch.no_grad():
        for step in scheduler.timesteps:
            x = scheduler.step(model.net.unet(x, step).sample, step, x).prev_sample
        ts = torch.cat([(scheduler.timesteps.double() + 1) / 1000, torch.zeros(1, dtype=F64)])
        ours = samplers.dpm_solver_pp(model, x_T, ts, order=2)
        rounded = samplers.dpm_solver_pp(model.float(), x_T.float(), ts, order=2).double()
    floor = float((rounded - ours).abs().max())
    assert float((ours - x.double()).abs().max()) <= 4 * floor
    # a different method is far outside that: DPM-Solver++(1) = DDIM on the same grid
    with torch.no_grad():
        first_order = samplers.dpm_solver_pp(model.double(), x_T, ts, order=1)
    assert float((first_order - x.double()).abs().max()) > 100 * floor


class _StepNoise:
    """The same N(0, I) draw for step k, for rediff (a NoiseSource) and for diffusers
    (``variance_noise``)."""

    def __init__(self, shape) -> None:
        gen = torch.Generator().manual_seed(5)
        self.draws = [torch.randn(shape, generator=gen, dtype=F64) for _ in range(64)]

    def source(self):
        from rediff.noise import NoiseSource

        draws = self.draws

        class Source(NoiseSource):
            def noise(self, shape, dtype, device, *, step, t, t_next):
                return draws[step].to(dtype)

        return Source()


def _mixture_denoiser():
    """The exact denoiser of a 2-D, two-component Gaussian mixture under diffusers' default
    schedule (linear betas, T = 1000)."""
    from rediff import data, schedules

    mix = data.GaussianMixture(
        torch.tensor([[-1.0, 0.5], [2.0, -1.0]], dtype=F64),
        torch.tensor([[[0.3, 0.1], [0.1, 0.2]], [[0.5, 0.0], [0.0, 0.1]]], dtype=F64),
        torch.tensor([0.3, 0.7], dtype=F64),
    )
    return mix.denoiser(schedules.DiscreteVP.linear(1000))


def _run_diffusers(scheduler, den, x, noise=None):
    """diffusers' sampling loop with ``scheduler`` on ``den``'s eps (timestep k is rediff's
    t = (k + 1) / T); returns its sample and rediff's grid of the same timesteps, ending at
    its final sigma (0, or sigma_min: t = 1 / T)."""
    for i, step in enumerate(scheduler.timesteps):
        time = torch.full((x.shape[0],), (float(step) + 1) / 1000, dtype=F64)
        eps = den.predict(x, time).eps
        draw = {} if noise is None else {"variance_noise": noise.draws[i]}
        x = scheduler.step(eps, step, x, **draw).prev_sample
    end = 0.0 if scheduler.config.final_sigmas_type == "zero" else 1 / 1000
    ts = torch.cat([(scheduler.timesteps.double() + 1) / 1000, torch.tensor([end], dtype=F64)])
    return x, ts


MULTISTEP_PEERS = [
    ("dpm++2m", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}, 2),
    ("dpm++3m", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}, 3),
    ("unipc", "UniPCMultistepScheduler", {}, 2),
    ("unipc3", "UniPCMultistepScheduler", {}, 3),
]


@pytest.mark.parametrize("final_sigma", ["zero", "sigma_min"])
@pytest.mark.parametrize(
    ("name", "scheduler_class", "settings", "order"),
    MULTISTEP_PEERS,
    ids=[m[0] for m in MULTISTEP_PEERS],
)
def test_lower_order_final_equals_diffusers_on_short_grids(
    name, scheduler_class, settings, order, final_sigma
):
    """On 8 trailing steps (a short grid: fewer than diffusers' and rediff's threshold of 15)
    rediff's multistep sampler with ``lower_order_final`` counting the final jump among its
    steps (``count_jump=True``, diffusers' counting: the last step first order, the one before
    at most second; and 3M's halved D2) is diffusers' scheduler with its default
    lower_order_final, ending at sigma = 0 or at sigma_min, on an exact mixture's eps; so is
    rediff's default, which counts a jump that leaves from above t_min (here t = 125/1000)
    among the steps (``samplers._common.reads_out``). Tolerance: 4 x rediff's own
    float32-vs-float64 gap (diffusers steps in float32). Without lower_order_final rediff is
    far off wherever the rule changes a step (a grid ending at sigma_min, or order 3)."""
    from rediff import samplers

    den = _mixture_denoiser()
    scheduler = getattr(diffusers, scheduler_class)(
        timestep_spacing="trailing", final_sigmas_type=final_sigma, solver_order=order, **settings
    )
    scheduler.set_timesteps(8)
    x_T = torch.randn(256, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    theirs, ts = _run_diffusers(scheduler, den, x_T.clone())
    sampler = samplers.get(name)

    def ours(x, **options):
        options = {**sampler.options, "count_jump": True, **options}
        return sampler.function(den, x, ts, **options).double()

    def gap(x):
        return float((x - theirs.double()).abs().max())

    floor = float((ours(x_T.float()) - ours(x_T)).abs().max())
    assert gap(ours(x_T)) <= 4 * floor
    if final_sigma == "sigma_min" or order == 3:
        assert gap(ours(x_T, lower_order_final=False)) > 100 * floor
    assert gap(ours(x_T, count_jump=None)) <= 4 * floor


def test_3m_halves_its_second_difference_below_20_steps_as_diffusers_does():
    """On 16 trailing steps ending at sigma = 0 (no lower_order_final in either library,
    16 >= 15) rediff's default dpm++3m is diffusers' 3M, whose D2 is half the second
    difference (rediff's default below samplers.dpm_solver.EXACT_D2_FROM = 20 steps); the
    exact D2 (third order) is far off. Tolerance: 4 x rediff's float32-vs-float64 gap."""
    from rediff import samplers
    from rediff.samplers.dpm_solver import EXACT_D2_FROM

    den = _mixture_denoiser()
    scheduler = diffusers.DPMSolverMultistepScheduler(
        timestep_spacing="trailing", final_sigmas_type="zero", solver_order=3
    )
    scheduler.set_timesteps(16)
    x_T = torch.randn(256, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    theirs, ts = _run_diffusers(scheduler, den, x_T.clone())
    assert len(ts) - 1 < EXACT_D2_FROM

    def ours(x, **options):
        return samplers.dpm_solver_pp(den, x, ts, order=3, **options).double()

    floor = float((ours(x_T.float()) - ours(x_T)).abs().max())
    assert float((ours(x_T) - theirs.double()).abs().max()) <= 4 * floor
    assert float((ours(x_T, exact_d2=True) - theirs.double()).abs().max()) > 100 * floor


@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
def test_sde_dpm_solver_pp_equals_diffusers_given_the_same_noise(solver_type):
    """rediff's dpm++2m-sde (either solver_type) = DPMSolverMultistepScheduler's
    sde-dpmsolver++ on its trailing timesteps, with the same noise handed to each step
    (``variance_noise``), on an exact mixture's eps; the tolerance is 4 x rediff's own
    float32-vs-float64 gap (diffusers computes in float32), and the other solver_type is far
    outside it."""
    from rediff import samplers

    scheduler = diffusers.DPMSolverMultistepScheduler(
        algorithm_type="sde-dpmsolver++", solver_type=solver_type, timestep_spacing="trailing"
    )
    scheduler.set_timesteps(10)
    den = _mixture_denoiser()
    noise = _StepNoise((256, 2))
    x_T = torch.randn(256, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    x, ts = _run_diffusers(scheduler, den, x_T.clone(), noise)

    def ours(x_T, kind=solver_type):
        options = {"order": 2, "sde": True, "solver_type": kind}
        return samplers.dpm_solver_pp(den, x_T, ts, generator=noise.source(), **options)

    floor = float((ours(x_T.float()).double() - ours(x_T)).abs().max())
    assert float((ours(x_T) - x.double()).abs().max()) <= 4 * floor
    other = "heun" if solver_type == "midpoint" else "midpoint"
    assert float((ours(x_T, other) - x.double()).abs().max()) > 100 * floor


def test_rediff_sample_draws_from_a_diffusers_folder(tmp_path, capsys):
    from rediff import cli

    _folder(tmp_path / "model")
    picture, arrays = tmp_path / "x.png", tmp_path / "x.npy"
    args = ["sample", "--diffusers", str(tmp_path / "model"), "--n", "4", "--steps", "3"]
    assert cli.main([*args, "--out", str(picture)]) == 0 and picture.is_file()
    assert cli.main([*args, "--out", str(arrays), "--sampler", "ddim"]) == 0
    import numpy as np

    assert np.load(arrays).shape == (4, 1, 8, 8)
    capsys.readouterr()
    assert cli.main(["sample"]) == 2
    assert "a run directory or --diffusers PATH" in capsys.readouterr().err
    assert cli.main(["sample", "--diffusers", str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def _flow_folder(tmp_path, **scheduler):
    unet = _folder(tmp_path)
    diffusers.FlowMatchEulerDiscreteScheduler(**scheduler).save_pretrained(tmp_path / "scheduler")
    return unet


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_euler_equals_flow_match_euler_scheduler(tmp_path, shift):
    """rediff's Euler on a loaded flow-matching folder, on the grid of
    ``interop.sampling_options`` (from sigma = 1, pure noise), equals
    FlowMatchEulerDiscreteScheduler's loop step for step (diffusers steps in float32)."""
    from rediff import grids, samplers

    _flow_folder(tmp_path, shift=shift)
    model = interop.load_diffusers(tmp_path).double()
    assert model.target is Target.VELOCITY and model.schedule.reaches_pure_noise
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_pretrained(tmp_path / "scheduler")
    scheduler.set_timesteps(8)
    options = interop.sampling_options(interop.scheduler_config(tmp_path), (1, 8, 8))
    assert options["sampler"] == "euler" and options["shift"] == shift
    ts = grids.make(
        model.schedule, 8, options["spacing"], t_min=options["t_min"], shift=options["shift"]
    )
    torch.testing.assert_close(ts, scheduler.sigmas.double(), rtol=1e-6, atol=1e-7)
    x_T = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=F64)
    theirs, ours = [x_T], [x_T]
    unet = model.net.unet
    with torch.no_grad():
        for step in scheduler.timesteps:
            velocity = unet(theirs[-1], step.double()).sample
            theirs.append(scheduler.step(velocity, step, theirs[-1]).prev_sample.double())
        samplers.euler(model, x_T, ts, callback=lambda s: ours.append(s.x))
    assert len(ours) == len(theirs) == len(ts)
    torch.testing.assert_close(torch.stack(ours), torch.stack(theirs), rtol=1e-5, atol=1e-5)


def test_flow_dynamic_shift_follows_the_sequence_length(tmp_path):
    """With use_dynamic_shifting the shift is exp(mu), mu linear in H W between the base and
    maximum sequence lengths (Flux); diffusers' own set_timesteps(mu=...) gives the grid."""
    settings = {"use_dynamic_shifting": True, "base_image_seq_len": 16, "max_image_seq_len": 256}
    _flow_folder(tmp_path, **settings)
    config = interop.scheduler_config(tmp_path)
    mu = 0.5 + (1.15 - 0.5) * (64 - 16) / (256 - 16)
    assert interop.flow_shift(config, (1, 8, 8)) == pytest.approx(torch.e**mu, rel=1e-12)
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_pretrained(tmp_path / "scheduler")
    scheduler.set_timesteps(6, mu=mu)
    model = interop.load_diffusers(tmp_path)
    options = interop.sampling_options(config, (1, 8, 8))
    from rediff import grids

    ts = grids.make(model.schedule, 6, "uniform", t_min=options["t_min"], shift=options["shift"])
    torch.testing.assert_close(ts, scheduler.sigmas.double(), rtol=1e-6, atol=1e-7)


def test_flow_folders_refuse_what_rediff_does_not_reproduce(tmp_path):
    _flow_folder(tmp_path, use_karras_sigmas=True)
    with pytest.raises(ValueError, match="sets use_karras_sigmas"):
        interop.load_diffusers(tmp_path)


def test_rediff_sample_uses_a_flow_folders_own_grid(tmp_path):
    """A flow folder sampled by the CLI without --sampler is diffusers' own loop (its grid and
    shift, rediff's Euler); with --sampler dpm++2m the log-SNR grid starts below sigma = 1."""
    import numpy as np

    from rediff import cli, grids, samplers

    _flow_folder(tmp_path / "model", shift=3.0)
    out = tmp_path / "x.npy"
    args = ["sample", "--diffusers", str(tmp_path / "model"), "--n", "2", "--steps", "4"]
    assert cli.main([*args, "--out", str(out), "--seed", "5"]) == 0
    model = interop.load_diffusers(tmp_path / "model")
    options = interop.sampling_options(interop.scheduler_config(tmp_path / "model"), (1, 8, 8))
    ts = grids.make(model.schedule, 4, "uniform", t_min=options["t_min"], shift=3.0)
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = samplers.euler(model, x_T, ts)
    torch.testing.assert_close(torch.from_numpy(np.load(out)), expected, rtol=1e-5, atol=1e-5)
    assert cli.main([*args, "--out", str(out), "--sampler", "dpm++2m"]) == 0


def test_rediff_nll_scores_data_under_a_diffusers_folder(tmp_path, capsys):
    import numpy as np

    from rediff import cli

    _folder(tmp_path / "model")
    pixels = np.random.default_rng(0).integers(0, 256, size=(3, 1, 8, 8), dtype=np.uint8)
    np.save(tmp_path / "x.npy", pixels)
    args = ["nll", "--diffusers", str(tmp_path / "model"), "--rtol", "1e-3"]
    assert cli.main([*args, "--data", str(tmp_path / "x.npy")]) == 0
    report = capsys.readouterr().out
    assert "| ode | bits/dim |" in report and "3 samples" in report
    np.save(tmp_path / "small.npy", pixels[:, :, :4, :4])
    assert cli.main([*args, "--data", str(tmp_path / "small.npy")]) == 2
    assert "the diffusers model takes [1, 8, 8]" in capsys.readouterr().err
    assert cli.main(args) == 2
    assert "needs --data" in capsys.readouterr().err


DIFFUSERS_UNET = [
    "--set",
    'model.net="diffusers_unet2d"',
    "--set",
    "model.block_out_channels=[16, 32]",
    "--set",
    'model.down_block_types=["DownBlock2D", "AttnDownBlock2D"]',
    "--set",
    'model.up_block_types=["AttnUpBlock2D", "UpBlock2D"]',
    "--set",
    "model.norm_num_groups=8",
    "--set",
    "train.steps=3",
    "--set",
    "train.sample_every=0",
]


@pytest.mark.parametrize("target", ["eps", "v"])
def test_an_exported_run_samples_in_ddpm_pipeline_as_in_rediff(tmp_path, target):
    """A diffusers_unet2d run (trained a few steps by rediff train) written by rediff export
    --diffusers loads in DDPMPipeline.from_pretrained, offline, and draws from the same
    generator the same images as rediff's DDPM (posterior variance, diffusers' fixed_small)
    on diffusers' leading grid; loaded back, it is the same model."""
    import rediff
    from rediff import cli
    from rediff.runs import load_run

    run, out = tmp_path / "run", tmp_path / "exported"
    settings = [*DIFFUSERS_UNET, "--set", f'model.target="{target}"']
    assert cli.main(["train", "configs/digits_ddpm.toml", "--run-dir", str(run), *settings]) == 0
    assert cli.main(["export", str(run), "--diffusers", str(out)]) == 0
    pipeline = diffusers.DDPMPipeline.from_pretrained(out)
    theirs = pipeline(
        batch_size=3,
        generator=torch.Generator().manual_seed(0),
        num_inference_steps=10,
        output_type="np",
    ).images
    model = load_run(run).model
    drawn = rediff.sample(
        model,
        (3, 1, 8, 8),
        sampler="ddpm",
        steps=10,
        spacing="leading",
        variance="beta_tilde",
        generator=torch.Generator().manual_seed(0),
        progress=False,
    )
    ours = (drawn.x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    torch.testing.assert_close(torch.from_numpy(ours), torch.from_numpy(theirs), atol=1e-4, rtol=0)
    loaded = interop.load_diffusers(out)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([0.3, 0.7], dtype=F64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t), model(x, t), rtol=1e-5, atol=1e-5)


def test_export_refuses_what_diffusers_cannot_run(tmp_path, capsys):
    from rediff import cli

    mlp = tmp_path / "mlp"
    short = ["--set", "train.steps=2", "--set", "train.sample_every=0"]
    assert cli.main(["train", "configs/toy_2d.toml", "--run-dir", str(mlp), *short]) == 0
    assert cli.main(["export", str(mlp), "--diffusers", str(tmp_path / "out")]) == 2
    assert "net is a MLP; only model.net = 'diffusers_unet2d' runs" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    continuous = tmp_path / "t"
    settings = [*DIFFUSERS_UNET, "--set", 'model.time_input="t"', "--set", "model.time_scale=1000"]
    train = ["train", "configs/digits_ddpm.toml", "--run-dir", str(continuous), *settings]
    assert cli.main(train) == 0
    assert cli.main(["export", str(continuous), "--diffusers", str(tmp_path / "out")]) == 2
    assert "model.time_input = 'step'" in capsys.readouterr().err
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("keep")
    assert cli.main(["export", str(continuous), "--diffusers", str(tmp_path / "taken")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "taken" / "file").read_text() == "keep"


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_dpm_solver_pp_on_the_linear_grid_is_diffusers_flow_dpm_solver(shift):
    """diffusers' flow-sigma DPMSolverMultistepScheduler (use_flow_sigmas, flow_prediction)
    steps on grids.make(..., "linear", t_max = 1 - 1/T, shift) and is rediff's dpm++2m there,
    on an exact mixture's velocity evaluated at its sigmas (the timesteps it would give a
    network are those rounded to integers); diffusers computes in float32, so the tolerance is
    4 x rediff's own float32-vs-float64 gap on that grid."""
    from rediff import data, grids, samplers, schedules

    scheduler = diffusers.DPMSolverMultistepScheduler(
        use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=shift
    )
    scheduler.set_timesteps(8)
    flow = schedules.FlowMatching(t_min=1e-4, t_max=1.0)
    ts = grids.make(flow, 8, "linear", t_max=1 - 1 / 1000, shift=shift)
    torch.testing.assert_close(ts, scheduler.sigmas.double(), rtol=1e-6, atol=1e-7)
    mix = data.GaussianMixture(
        torch.tensor([[-1.0, 0.5], [2.0, -1.0]], dtype=F64),
        torch.tensor([[[0.3, 0.1], [0.1, 0.2]], [[0.5, 0.0], [0.0, 0.1]]], dtype=F64),
        torch.tensor([0.3, 0.7], dtype=F64),
    )
    den = mix.denoiser(flow)
    x_T = torch.randn(256, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    x = x_T.clone()
    for i, t in enumerate(scheduler.timesteps):  # at its sigma (its timesteps are rounded)
        time = torch.full((256,), float(scheduler.sigmas[i]), dtype=F64)
        x = scheduler.step(den.predict(x, time).as_target("velocity"), t, x).prev_sample
    ours = samplers.dpm_solver_pp(den, x_T, ts, order=2)
    rounded = samplers.dpm_solver_pp(den, x_T.float(), ts, order=2).double()
    floor = float((rounded - ours).abs().max())
    assert float((ours - x.double()).abs().max()) <= 4 * floor


def test_hutchinson_probes_on_a_diffusers_unet_match_one_by_one(tmp_path):
    """diffusers' UNet2DModel cannot be batched by vmap in its backward pass; the divergence
    estimate then takes one pass per probe and gives what the probes give one at a time."""
    from rediff import divergence

    _folder(tmp_path)
    model = interop.load_diffusers(tmp_path).double()
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=F64)
    x.requires_grad_(True)
    out = model(x, 0.5)
    probes = divergence.draw_probes(x, 3, generator=torch.Generator().manual_seed(1))
    one_by_one = [
        (torch.autograd.grad(out, x, v, retain_graph=True)[0] * v).flatten(1).sum(1) for v in probes
    ]
    torch.testing.assert_close(
        divergence.hutchinson(out, x, probes), torch.stack(one_by_one).mean(0)
    )
