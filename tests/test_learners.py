"""Advantages and the GRPO / DDPO learner on a tiny policy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.errors import ConfigError
from pipeline.learners.advantages import AdvantageConfig, compute_advantages, normalise_in_groups
from pipeline.learners.grpo import GRPOConfig, GRPOLearner
from rollouts.models import TinyVideoConfig, build_tiny_policy
from rollouts.video import ConditionBatch, SamplerConfig, VideoRolloutWorker

TINY = TinyVideoConfig(frames=2, context_frames=1, height=8, width=8, blocks=(8, 8), norm_groups=4)


def conditions(n: int = 2, k: int = 3, seed: int = 0) -> ConditionBatch:
    rng = np.random.default_rng(seed)
    ref = rng.integers(0, 255, size=(n, 3, 8, 8, 3), dtype=np.uint8)
    return ConditionBatch(ref[:, :1], np.arange(n) % 5, ref).repeat(k)


def test_group_normalisation_by_hand():
    adv = normalise_in_groups(np.array([1.0, 3.0, 10.0, 10.0, 13.0, 7.0]), np.array([0, 0, 1, 1, 1, 1]), eps=0.0)
    np.testing.assert_allclose(adv[:2], [-1.0, 1.0])
    np.testing.assert_allclose(adv[2:], np.array([0.0, 0.0, 3.0, -3.0]) / np.sqrt(4.5))


def test_group_of_one_is_a_config_error():
    with pytest.raises(ConfigError, match="group_size"):
        normalise_in_groups(np.ones(3), np.array([0, 0, 1]))


def test_weighted_sum_and_per_reward_modes():
    groups = np.array([0, 0, 1, 1])
    rewards = {"a": np.array([0.0, 2.0, 0.0, 2.0]), "b": np.array([0.0, 200.0, 100.0, 0.0])}
    ws = compute_advantages(rewards, groups, AdvantageConfig({"a": 1.0, "b": 1.0}, eps=0.0))
    pr = compute_advantages(rewards, groups, AdvantageConfig({"a": 1.0, "b": 1.0}, mode="per_reward", eps=0.0))
    np.testing.assert_allclose(ws, [-1, 1, 1, -1])  # the large-scale reward decides
    np.testing.assert_allclose(pr, [-2, 2, 0, 0])  # both rewards count equally
    clipped = compute_advantages(rewards, groups, AdvantageConfig({"a": 3.0}, mode="per_reward", clip=2.0))
    assert np.abs(clipped).max() == pytest.approx(2.0)
    with pytest.raises(ConfigError, match="weights"):
        compute_advantages(rewards, groups, AdvantageConfig({"c": 1.0}))


def _rollout(kind: str = "sde", **kw):
    torch.set_num_threads(1)
    policy = build_tiny_policy(TINY, seed=0)
    if kind == "ddim":
        policy.parametrisation = "epsilon"
        policy.meta["alphas_cumprod"] = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000), 0)
    window = (1, 3) if kind == "sde" else None
    sampler = SamplerConfig(kind=kind, num_steps=4, window=window, **kw)
    worker = VideoRolloutWorker(policy, sampler, seed=1)
    batch = worker.sample(conditions(), 0)
    batch.advantages = np.linspace(-1, 1, len(batch)).astype(np.float32)
    return policy, batch


@pytest.mark.parametrize("kind", ["sde", "cps", "ddim"])
def test_ratio_is_exactly_one_before_the_first_update(kind):
    policy, batch = _rollout(kind)
    learner = GRPOLearner(policy, GRPOConfig(minibatch=len(batch), kl_beta=0.1))
    loss, metrics = learner.transition_loss(batch, np.arange(len(batch)), 0, batch.conditions.conditions())
    assert metrics["ratio_mean"] == 1.0 and metrics["clip_frac"] == 0.0
    assert metrics["kl"] == 0.0
    assert loss.item() == pytest.approx(-float(batch.advantages.mean()), abs=1e-6)


def test_update_raises_log_prob_of_positive_advantage_samples():
    policy, batch = _rollout("sde")
    learner = GRPOLearner(policy, GRPOConfig(lr=1e-3, clip_range=10.0, minibatch=3, grad_accum=2, kl_beta=0.01))
    cond = batch.conditions.conditions()
    before = learner.transition_loss(batch, np.arange(len(batch)), 1, cond)[0].item()
    metrics = learner.update(batch)
    after = learner.transition_loss(batch, np.arange(len(batch)), 1, cond)[0].item()
    assert after < before, (before, after)
    assert metrics["grad_norm"] > 0 and learner.version == 1


def test_shared_noise_gives_identical_group_starts():
    policy, batch = _rollout("sde", shared_noise=True, noise_level=1e-4)
    # with (almost) no SDE noise, samples of one group differ only by their tiny SDE noise
    first = batch.latents[:, 0]
    torch.testing.assert_close(first[0], first[1], atol=1e-2, rtol=0)
    assert (first[0] - first[3]).abs().max() > 0.1


def test_bad_learner_config_names_the_key():
    with pytest.raises(ConfigError, match="grpo.timestep_fraction"):
        GRPOConfig(timestep_fraction=0.0).validate()


class _ConstantVelocity(torch.nn.Module):
    """v = theta everywhere: x_final = noise + theta * sum(dt) in closed form."""

    def __init__(self) -> None:
        super().__init__()
        self.theta = torch.nn.Parameter(torch.tensor(0.3))

    def forward(self, x, timestep, cond):
        return self.theta * torch.ones_like(x)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_truncated_backprop_gradient_matches_closed_form(checkpointing):
    from pipeline.learners.reward_grad import sample_with_grad
    from rollouts.models import VideoPolicy
    from rollouts.samplers import flow_sigmas

    policy = VideoPolicy(net=_ConstantVelocity(), residual=False)
    sigmas = flow_sigmas(5)
    noise = torch.randn(2, 2, 3, 4, 4)
    cond = conditions().conditions()
    for k in (1, 3):
        policy.net.theta.grad = None
        out = sample_with_grad(policy, cond, noise, sigmas, grad_steps=k, checkpointing=checkpointing)
        torch.testing.assert_close(out, noise - 0.3)
        out.sum().backward()
        expected = float((sigmas[-1] - sigmas[-1 - k]) * noise.numel())  # sum of the last k dt, per element
        assert policy.net.theta.grad.item() == pytest.approx(expected, rel=1e-5)


def test_reward_grad_learner_ascends_a_reward():
    from pipeline.learners.reward_grad import RewardGradConfig, RewardGradLearner

    torch.set_num_threads(1)
    policy = build_tiny_policy(TINY, seed=0)

    def brightness(video, reference):
        return {"bright": video[:, 1:].mean(dim=(1, 2, 3, 4))}

    cfg = RewardGradConfig(weights={"bright": 1.0}, lr=3e-3, num_steps=3, grad_steps=2, minibatch=3)
    learner = RewardGradLearner(policy, brightness, cfg)
    first = [learner.update(conditions())["bright"] for _ in range(4)]
    assert first[-1] > first[0] + 0.05, first
    with pytest.raises(ConfigError, match="grad_steps"):
        RewardGradConfig(weights={"a": 1.0}, num_steps=3, grad_steps=4).validate()


def test_weighted_fm_only_learns_from_positive_advantages():
    policy, batch = _rollout("sde")
    learner = GRPOLearner(policy, GRPOConfig(objective="weighted_fm", seed=5))
    idx, cond = np.arange(len(batch)), batch.conditions.conditions()
    batch.advantages = np.array([2.0, -1.0, -1.0, 0.0, 0.0, 0.0], dtype=np.float32)
    loss, _ = learner.weighted_fm_loss(batch, idx, cond)
    # brute force with the same draws: only sample 0 counts
    gen = torch.Generator().manual_seed(5)
    sigma = torch.rand(len(idx), generator=gen).clamp(min=1e-3)
    s = sigma.view(-1, 1, 1, 1, 1)
    x_t = (1 - s) * batch.final + s * torch.randn(batch.final.shape, generator=gen)
    per = ((x_t - s * policy(x_t, sigma, cond) - batch.final) ** 2).flatten(1).mean(1)
    assert loss.item() == pytest.approx(per[0].item(), rel=1e-5)
    batch.advantages = -np.abs(batch.advantages)
    assert learner.weighted_fm_loss(batch, idx, cond)[0].item() == 0.0
