"""Stochastic sampler steps with exact Gaussian log-probabilities, and a windowed sampling loop.

Every step is a pure function ``(model_out, level, x, *, ..., prev_sample=None, generator=None) -> StepOutput``:
without ``prev_sample`` it draws ``x_prev = mean + std * eps``; with ``prev_sample`` it re-scores that stored
transition under the current ``model_out`` (no hidden step counter, so any transition can be re-scored in any
order). All log-prob math runs in float32.

Conventions (flow matching, as in Flow-GRPO): ``x_sigma = (1 - sigma) x0 + sigma eps``, the model predicts the
velocity ``v = eps - x0``, sampling runs ``sigma`` from 1 to 0, so ``dt = sigma_next - sigma < 0``.

``log_prob`` is the Gaussian log-density of ``prev_sample`` averaged over the non-batch dimensions (nats per
element; ddpo-pytorch and Flow-GRPO use the same mean so that ratios stay well-scaled for large videos).
Multiply by the element count for the full log-density.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from pipeline.errors import ConfigError

LOG_2PI = math.log(2.0 * math.pi)
StepKind = Literal["sde", "cps", "ddim"]
STEP_KINDS = ("sde", "cps", "ddim")


@dataclass
class StepOutput:
    """One stochastic transition. ``prev_sample``/``mean``: like ``x``; ``std``: broadcastable to ``x``;
    ``log_prob``: (B,) mean log-density per element."""

    prev_sample: Tensor
    log_prob: Tensor
    mean: Tensor
    std: Tensor


def _per_sample(value: float | Tensor, like: Tensor) -> Tensor:
    """Scalar or (B,) noise level -> float32 tensor of shape (B, 1, ..., 1) broadcastable to ``like``."""
    value = torch.as_tensor(value, dtype=torch.float32, device=like.device)
    if value.ndim == 0:
        value = value.expand(like.shape[0])
    return value.reshape(-1, *([1] * (like.ndim - 1)))


def gaussian_log_prob(sample: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """Mean over non-batch dims of log N(sample; mean, std^2), float32. Shapes: like (B, ...) -> (B,)."""
    sample, mean, std = sample.float(), mean.float(), std.float()
    log_density = -((sample - mean) ** 2) / (2 * std**2) - torch.log(std) - 0.5 * LOG_2PI
    return log_density.flatten(1).mean(dim=1)


def _finish(mean: Tensor, std: Tensor, x: Tensor, prev_sample: Tensor | None, generator) -> StepOutput:
    std = std.expand_as(mean) if std.ndim < mean.ndim else std
    if prev_sample is None:
        noise = torch.randn(mean.shape, generator=generator, dtype=torch.float32, device=mean.device)
        prev_sample = mean + std * noise
    log_prob = gaussian_log_prob(prev_sample, mean, std)
    return StepOutput(prev_sample=prev_sample.to(x.dtype), log_prob=log_prob, mean=mean, std=std)


def flow_sde_step(
    model_out: Tensor,
    sigma: float | Tensor,
    x: Tensor,
    *,
    sigma_next: float | Tensor,
    noise_level: float = 0.7,
    sigma_max: float = 0.95,
    prev_sample: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> StepOutput:
    """Flow-GRPO SDE step (Euler-Maruyama of the reverse SDE with the same marginals as the flow ODE).

    ``sigma_t = a sqrt(sigma / (1 - min(sigma, sigma_max)))`` (``a`` = ``noise_level``; the cap keeps the
    first step at sigma = 1 finite, Flow-GRPO caps at the second grid value),
    ``mean = x + [v + sigma_t^2 / (2 sigma) (x + (1 - sigma) v)] dt``, ``std = sigma_t sqrt(-dt)``.
    Shapes: ``model_out``/``x`` (B, ...); ``sigma``/``sigma_next`` scalars or (B,), 0 <= sigma_next < sigma <= 1.
    """
    v, xf = model_out.float(), x.float()
    s, s_next = _per_sample(sigma, xf), _per_sample(sigma_next, xf)
    dt = s_next - s
    sigma_t = noise_level * torch.sqrt(s / (1 - s.clamp(max=sigma_max)))
    mean = xf + (v + sigma_t**2 / (2 * s) * (xf + (1 - s) * v)) * dt
    std = sigma_t * torch.sqrt(-dt)
    return _finish(mean, std, x, prev_sample, generator)


def flow_cps_step(
    model_out: Tensor,
    sigma: float | Tensor,
    x: Tensor,
    *,
    sigma_next: float | Tensor,
    noise_level: float = 0.7,
    prev_sample: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> StepOutput:
    """Coefficient-preserving (CPS) step: ``std = sigma_next sin(a pi / 2)``,
    ``mean = x0hat (1 - sigma_next) + x1hat sqrt(sigma_next^2 - std^2)`` with ``x0hat = x - sigma v`` and
    ``x1hat = x + (1 - sigma) v``. Needs ``sigma_next > 0`` (std is 0 at the last step: use an ODE step there).
    """
    v, xf = model_out.float(), x.float()
    s, s_next = _per_sample(sigma, xf), _per_sample(sigma_next, xf)
    std = s_next * math.sin(noise_level * math.pi / 2)
    x0_hat, x1_hat = xf - s * v, xf + (1 - s) * v
    mean = x0_hat * (1 - s_next) + x1_hat * torch.sqrt((s_next**2 - std**2).clamp(min=0))
    return _finish(mean, std, x, prev_sample, generator)


def ddim_step(
    model_out: Tensor,
    alpha_bar: float | Tensor,
    x: Tensor,
    *,
    alpha_bar_prev: float | Tensor,
    eta: float = 1.0,
    prev_sample: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> StepOutput:
    """DDIM step with eta for an epsilon-prediction model (DDPO).

    ``x0 = (x - sqrt(1 - abar) eps) / sqrt(abar)``,
    ``std = eta sqrt((1 - abar_prev) / (1 - abar) (1 - abar / abar_prev))``,
    ``mean = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - std^2) eps``. Needs eta > 0 for a finite log-prob.
    """
    eps, xf = model_out.float(), x.float()
    ab, ab_prev = _per_sample(alpha_bar, xf), _per_sample(alpha_bar_prev, xf)
    x0 = (xf - torch.sqrt(1 - ab) * eps) / torch.sqrt(ab)
    std = eta * torch.sqrt((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev))
    mean = torch.sqrt(ab_prev) * x0 + torch.sqrt((1 - ab_prev - std**2).clamp(min=0)) * eps
    return _finish(mean, std, x, prev_sample, generator)


def stochastic_step(kind: StepKind, model_out: Tensor, level, x: Tensor, *, level_next, noise_level: float,
                    prev_sample: Tensor | None = None, generator=None) -> StepOutput:
    """Dispatch by sampler name: 'sde'/'cps' (flow matching, level = sigma, noise_level = a) or 'ddim'
    (epsilon model, level = alpha_bar, noise_level = eta)."""
    if kind == "sde":
        return flow_sde_step(model_out, level, x, sigma_next=level_next, noise_level=noise_level,
                             prev_sample=prev_sample, generator=generator)
    if kind == "cps":
        return flow_cps_step(model_out, level, x, sigma_next=level_next, noise_level=noise_level,
                             prev_sample=prev_sample, generator=generator)
    if kind == "ddim":
        return ddim_step(model_out, level, x, alpha_bar_prev=level_next, eta=noise_level,
                         prev_sample=prev_sample, generator=generator)
    raise ConfigError(f"sampler.kind = {kind!r}: expected one of {list(STEP_KINDS)}")


def deterministic_step(kind: StepKind, model_out: Tensor, level, x: Tensor, *, level_next) -> Tensor:
    """Noise-free step: Euler ODE ``x + v dt`` for flow kinds, DDIM with eta = 0 for 'ddim'."""
    if kind == "ddim":
        return ddim_step(model_out, level, x, alpha_bar_prev=level_next, eta=0.0).mean.to(x.dtype)
    v, xf = model_out.float(), x.float()
    dt = _per_sample(level_next, xf) - _per_sample(level, xf)
    return (xf + v * dt).to(x.dtype)


def flow_sigmas(num_steps: int, *, shift: float = 1.0) -> Tensor:
    """Sigma grid from 1 to 0 with ``num_steps + 1`` points, optionally time-shifted (SD3: s t / (1 + (s-1) t))."""
    if num_steps < 1:
        raise ConfigError(f"sampler.num_steps = {num_steps}: expected an integer >= 1")
    t = torch.linspace(1.0, 0.0, num_steps + 1)
    return shift * t / (1 + (shift - 1) * t)


def ddim_alpha_bars(alphas_cumprod: Tensor, num_steps: int) -> tuple[Tensor, Tensor]:
    """Evenly spaced DDIM grid: (timesteps (num_steps,), alpha_bar levels (num_steps + 1,) ending at 1.0)."""
    if num_steps < 1:
        raise ConfigError(f"sampler.num_steps = {num_steps}: expected an integer >= 1")
    train_steps = len(alphas_cumprod)
    timesteps = torch.linspace(train_steps - 1, 0, num_steps).round().long()
    return timesteps, torch.cat([alphas_cumprod[timesteps].float(), torch.ones(1)])


@dataclass
class Trajectory:
    """Result of :func:`sample_with_window`.

    ``final``: (B, ...) the clean sample; ``latents``: (B, K + 1, ...) states at window steps (entry j is the
    input of window step j, entry j + 1 its output); ``log_probs``: (B, K); ``levels``: (K + 1,) the matching
    noise levels (sigma, or alpha_bar for DDIM); ``step_indices``: (K,) positions of the window steps.
    """

    final: Tensor
    latents: Tensor
    log_probs: Tensor
    levels: Tensor
    step_indices: Tensor


def check_window(window: tuple[int, int], num_steps: int, kind: StepKind) -> None:
    """Validate an SDE window [start, end) of step indices; raises ConfigError naming ``sampler.sde_window``."""
    start, end = window
    last = num_steps if kind == "sde" else num_steps - 1
    if not 0 <= start < end <= last:
        raise ConfigError(f"sampler.sde_window = {list(window)}: expected 0 <= start < end <= {last} for "
                          f"{num_steps} {kind} steps ({kind} has zero noise at the last step)")


def default_window(num_steps: int, kind: StepKind) -> tuple[int, int]:
    """Every step whose noise is non-zero."""
    return (0, num_steps if kind == "sde" else num_steps - 1)


@torch.no_grad()
def sample_deterministic(model_fn: Callable[[Tensor, Tensor, int], Tensor], x_init: Tensor, levels: Tensor, *,
                         kind: StepKind = "sde") -> Tensor:
    """Noise-free sampling (Euler ODE, or DDIM eta = 0) from ``x_init`` over ``levels``; returns (B, ...)."""
    x = x_init
    for i in range(len(levels) - 1):
        out = model_fn(x, levels[i].expand(x.shape[0]), i)
        x = deterministic_step(kind, out, levels[i], x, level_next=levels[i + 1])
    return x


@torch.no_grad()
def sample_with_window(
    model_fn: Callable[[Tensor, Tensor, int], Tensor],
    x_init: Tensor,
    levels: Tensor,
    *,
    kind: StepKind = "sde",
    window: tuple[int, int] | None = None,
    noise_level: float = 0.7,
    generator: torch.Generator | None = None,
) -> Trajectory:
    """Integrate from ``x_init`` (pure noise at ``levels[0]``) to ``levels[-1]``.

    Steps with index in ``window`` = [start, end) are stochastic (``kind``) and record log-probs ("Fast"
    Flow-GRPO); all others are deterministic (Euler ODE, or DDIM eta = 0). ``model_fn(x, level_batch, i)``
    maps (B, ...), (B,) and the step index to the model output (velocity or epsilon), (B, ...).
    ``window=None``: every step with non-zero noise is stochastic.
    """
    num_steps = len(levels) - 1
    window = default_window(num_steps, kind) if window is None else window
    check_window(window, num_steps, kind)
    x, batch = x_init, x_init.shape[0]
    latents, log_probs = [], []
    for i in range(num_steps):
        level, level_next = levels[i], levels[i + 1]
        out = model_fn(x, level.expand(batch), i)
        if window[0] <= i < window[1]:
            if i == window[0]:
                latents.append(x)
            step = stochastic_step(kind, out, level, x, level_next=level_next, noise_level=noise_level,
                                   generator=generator)
            x = step.prev_sample
            latents.append(x)
            log_probs.append(step.log_prob)
        else:
            x = deterministic_step(kind, out, level, x, level_next=level_next)
    return Trajectory(final=x, latents=torch.stack(latents, dim=1), log_probs=torch.stack(log_probs, dim=1),
                      levels=levels[window[0]:window[1] + 1].clone(), step_indices=torch.arange(*window))
