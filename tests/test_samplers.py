"""Sampler steps: log-probs against scipy densities, re-scoring, limits, the windowed loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import norm

from pipeline.errors import ConfigError
from rollouts import samplers as S

SHAPE = (3, 2, 3, 4, 4)


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)


def _scipy_mean_logpdf(sample, mean, std) -> np.ndarray:
    std = np.broadcast_to(std.numpy(), sample.shape)
    dens = norm.logpdf(sample.numpy().astype(np.float64), loc=mean.numpy(), scale=std)
    return dens.reshape(sample.shape[0], -1).mean(axis=1)


@pytest.mark.parametrize("kind,level,level_next,a", [
    ("sde", 0.8, 0.6, 0.7), ("sde", 1.0, 0.9, 0.5), ("sde", 0.1, 0.0, 0.7), ("cps", 0.7, 0.5, 0.7),
    ("ddim", 0.3, 0.6, 1.0),
])
def test_log_prob_is_gaussian_density(kind, level, level_next, a):
    model_out, x = _inputs()
    out = S.stochastic_step(kind, model_out, level, x, level_next=level_next, noise_level=a,
                            generator=torch.Generator().manual_seed(1))
    expected = _scipy_mean_logpdf(out.prev_sample, out.mean, out.std)
    np.testing.assert_allclose(out.log_prob.numpy(), expected, rtol=1e-5)
    assert out.log_prob.dtype == torch.float32


def test_sde_mean_and_std_closed_form():
    """Mean/std against the Flow-GRPO formula written out by hand for a scalar state."""
    v, x, s, s_next, a = 0.3, -0.5, 0.6, 0.4, 0.7
    sig_t = a * np.sqrt(s / (1 - s))
    dt = s_next - s
    mean = x + (v + sig_t**2 / (2 * s) * (x + (1 - s) * v)) * dt
    out = S.flow_sde_step(torch.full((1, 1), v), s, torch.full((1, 1), x), sigma_next=s_next, noise_level=a)
    assert out.mean.item() == pytest.approx(mean, rel=1e-6)
    assert out.std.item() == pytest.approx(sig_t * np.sqrt(-dt), rel=1e-6)


@pytest.mark.parametrize("kind", ["sde", "cps", "ddim"])
def test_rescoring_reproduces_log_prob(kind):
    model_out, x = _inputs(2)
    level, level_next = (0.5, 0.7) if kind == "ddim" else (0.7, 0.5)
    first = S.stochastic_step(kind, model_out, level, x, level_next=level_next, noise_level=0.7)
    again = S.stochastic_step(kind, model_out, level, x, level_next=level_next, noise_level=0.7,
                              prev_sample=first.prev_sample)
    torch.testing.assert_close(again.log_prob, first.log_prob, rtol=0, atol=0)
    other = S.stochastic_step(kind, model_out + 0.1, level, x, level_next=level_next, noise_level=0.7,
                              prev_sample=first.prev_sample)
    assert not torch.allclose(other.log_prob, first.log_prob)


def test_per_sample_levels_match_scalar_levels():
    model_out, x = _inputs(3)
    levels = torch.tensor([0.9, 0.5, 0.2])
    batched = S.flow_sde_step(model_out, levels, x, sigma_next=levels - 0.1)
    for b in range(3):
        single = S.flow_sde_step(model_out[b:b + 1], float(levels[b]), x[b:b + 1], sigma_next=float(levels[b]) - 0.1,
                                 prev_sample=batched.prev_sample[b:b + 1])
        torch.testing.assert_close(single.log_prob, batched.log_prob[b:b + 1])


def test_sde_with_vanishing_noise_is_euler():
    model_out, x = _inputs(4)
    out = S.flow_sde_step(model_out, 0.6, x, sigma_next=0.45, noise_level=1e-6)
    torch.testing.assert_close(out.prev_sample, x + model_out * (0.45 - 0.6), atol=1e-5, rtol=0)


def test_cps_with_vanishing_noise_is_euler():
    model_out, x = _inputs(5)
    out = S.flow_cps_step(model_out, 0.6, x, sigma_next=0.45, noise_level=1e-6)
    torch.testing.assert_close(out.prev_sample, x + model_out * (0.45 - 0.6), atol=1e-5, rtol=0)


def test_ddim_eta_zero_is_deterministic_ddim():
    eps, x = _inputs(6)
    ab, ab_prev = 0.4, 0.7
    x0 = (x - np.sqrt(1 - ab) * eps) / np.sqrt(ab)
    expected = np.sqrt(ab_prev) * x0 + np.sqrt(1 - ab_prev) * eps
    torch.testing.assert_close(S.deterministic_step("ddim", eps, ab, x, level_next=ab_prev), expected)


def _gaussian_target_velocity(m: float, c: float):
    """Exact flow-matching velocity E[eps - x0 | x_sigma] for x0 ~ N(m, c^2), eps ~ N(0, 1)."""
    def velocity(x, sigma, _i):
        s = sigma.reshape(-1, 1)
        var = (1 - s) ** 2 * c**2 + s**2
        centred = x - (1 - s) * m
        return s / var * centred - (m + (1 - s) * c**2 / var * centred)
    return velocity


@pytest.mark.parametrize("kind,window", [("sde", None), ("sde", (0, 1))])
def test_exact_velocity_transports_noise_to_gaussian_target(kind, window):
    """ODE and SDE sampling with the exact velocity reproduce the target mean and std (CPS is not
    marginal-preserving for many small steps: it replaces a fixed noise fraction per step)."""
    m, c = 0.5, 0.3
    noise = torch.randn(4000, 1, generator=torch.Generator().manual_seed(0))
    traj = S.sample_with_window(_gaussian_target_velocity(m, c), noise, S.flow_sigmas(100), kind=kind,
                                window=window, noise_level=0.7, generator=torch.Generator().manual_seed(1))
    assert traj.final.mean().item() == pytest.approx(m, abs=0.02)
    assert traj.final.std().item() == pytest.approx(c, abs=0.02)


def test_window_records_only_window_steps_and_rescores():
    model = torch.nn.Linear(4, 4)

    def fn(x, sigma, _i):
        return model(x) * sigma[:, None]

    levels = S.flow_sigmas(6)
    traj = S.sample_with_window(fn, torch.randn(2, 4), levels, window=(2, 4), generator=torch.Generator())
    assert traj.latents.shape == (2, 3, 4) and traj.log_probs.shape == (2, 2)
    torch.testing.assert_close(traj.levels, levels[2:5])
    for j in range(2):
        x, lv = traj.latents[:, j], traj.levels[j]
        again = S.flow_sde_step(fn(x, lv.expand(2), 0), lv, x, sigma_next=traj.levels[j + 1],
                                prev_sample=traj.latents[:, j + 1])
        torch.testing.assert_close(again.log_prob, traj.log_probs[:, j])


def test_bad_window_and_kind_raise_config_error():
    with pytest.raises(ConfigError, match="sde_window"):
        S.check_window((0, 6), 6, "cps")
    with pytest.raises(ConfigError, match="sampler.kind"):
        S.stochastic_step("euler", torch.zeros(1, 1), 0.5, torch.zeros(1, 1), level_next=0.4, noise_level=0.7)


def test_ddim_grid_ends_at_one():
    steps, levels = S.ddim_alpha_bars(torch.linspace(0.99, 0.01, 1000), 10)
    assert steps[0] == 999 and steps[-1] == 0 and levels[-1] == 1.0 and len(levels) == 11


def test_deterministic_sampling_matches_manual_euler():
    def fn(x, sigma, _i):
        return torch.sin(x) * sigma[:, None]

    x0 = torch.randn(3, 5)
    levels = S.flow_sigmas(4, shift=3.0)
    x = x0.clone()
    for i in range(4):
        x = x + torch.sin(x) * levels[i] * (levels[i + 1] - levels[i])
    torch.testing.assert_close(S.sample_deterministic(fn, x0, levels), x)
    assert levels[0] == 1.0 and levels[-1] == 0.0 and levels[1] > 0.75  # shift > 1 keeps more steps at high noise
