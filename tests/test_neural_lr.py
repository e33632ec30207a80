"""Likelihood-ratio policy gradient: sample-and-hold rollouts vs solve_ivp, causal advantages, CARE limit, 2 DDP
learners (gloo, Ray actors) == one in-process learner."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.integrate import solve_ivp

from envs.control import make_system
from envs.control.analysis import mirrored_gain
from pipeline.config import RuntimeSection
from pipeline.errors import InputError
from pipeline.learners.neural_lr import LRTrainer, NeuralLRSettings, advantages, train_neural_policy_lr
from pipeline.runtime import Placement, ray_session
from rollouts.neural_control import ControlPolicy, NeuralRolloutSpec, true_cost
from rollouts.neural_exploration import ExplorationSpec, cost_to_go, explore, plan

torch.set_num_threads(1)
A2 = [[0.0, 1.0], [1.0, -0.5]]  # open-loop unstable (eigenvalue 0.78)
B2 = [[0.0], [1.0]]
LINEAR2 = {"A": A2, "B": B2, "Q": [[1.0, 0.0], [0.0, 0.5]], "R": [[0.5]], "x0": [1.0, 0.0]}
STARTS2 = np.array([[1.0, 0.0], [0.0, 1.0], [-0.7, 0.4]])


def lr_spec(**rollout: object) -> ExplorationSpec:
    base = {"system": "linear", "params": LINEAR2, "interval": 0.5, "intervals": 12, "nodes": 5, "substeps": 2}
    return ExplorationSpec(NeuralRolloutSpec(**{**base, **rollout}), control_step=0.05)


def test_sample_and_hold_rollout_matches_solve_ivp_and_uses_the_actions_inside_each_interval():
    system = make_system("cartpole")
    spec = ExplorationSpec(NeuralRolloutSpec(system="cartpole", interval=0.4, intervals=2, nodes=9, substeps=8,
                                             cost="exact"), control_step=0.1)
    gain = np.array([[-1.0, -30.0, -2.0, -7.0]])
    policy = ControlPolicy(4, 1, hidden=(), gain=gain)
    x0 = np.array([0.2, 0.3, -0.1, 0.2])
    noise = torch.as_tensor(np.random.default_rng(1).standard_normal((1, spec.decisions, 1)))
    states, actions, costs = explore(system, policy, torch.as_tensor(x0[None]), noise, 0.7, spec)
    y, running = np.append(x0, 0.0), []  # independent truth: solve_ivp hold by hold, rtol 1e-11
    for k in range(spec.decisions):
        np.testing.assert_allclose(states[0, k].numpy(), y[:-1], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(actions[0, k].numpy(), -gain @ y[:-1] + 0.7 * noise[0, k].numpy(), rtol=1e-6)
        u = actions[0, k].numpy()
        y = solve_ivp(lambda t, z, u=u: np.append(system.dynamics(z[:-1], u), system.utility(z[:-1], u)),
                      (0.0, 0.1), y, method="DOP853", rtol=1e-11, atol=1e-11).y[:, -1]
        running.append(y[-1])
    np.testing.assert_allclose(costs[0].numpy(), np.diff([0.0, running[3], running[7]]), rtol=1e-6)
    # quadrature nodes at a jump of u: the action acting inside the interval (held one at an interval's end)
    half = plan(ExplorationSpec(NeuralRolloutSpec(system="linear", params=LINEAR2, interval=0.4, intervals=2,
                                                  nodes=3), control_step=0.2))
    assert half.node_decision.tolist() == [[0, 1, 1], [2, 3, 3]]


def test_cost_to_go_is_causal_and_advantages_are_group_centred():
    spec = ExplorationSpec(NeuralRolloutSpec(system="linear", params=LINEAR2, interval=0.4, intervals=3, nodes=3),
                           control_step=0.2)
    costs = np.array([[[1.0, 2.0, 4.0]]])
    np.testing.assert_allclose(cost_to_go(costs, spec), [[[7.0, 7.0, 6.0, 6.0, 4.0, 4.0]]])
    G = np.random.default_rng(0).standard_normal((3, 4, 6)) + np.arange(3)[:, None, None]
    adv = advantages(G)
    np.testing.assert_allclose(adv.sum(axis=1), 0.0, atol=1e-12)  # group baseline per start and decision time
    assert adv.std() == pytest.approx(1.0)
    assert np.all((adv[:, 0] - adv[:, 1]) * (G[:, 0] - G[:, 1]) <= 0)  # lower cost, higher advantage


def test_diverged_trajectories_are_excluded_from_baselines_and_update():
    G = np.array([[[1.0], [3.0], [1e30]], [[2.0], [2.0], [5.0]]])  # 2 starts x 3 samples x 1 decision
    valid = np.array([[True, True, False], [True, True, True]])
    adv = advantages(G, valid=valid)
    assert adv[0, 2, 0] == 0.0
    centred = np.array([-1.0, 1.0, -1.0, -1.0, 2.0])  # group means 2 (valid only) and 3
    np.testing.assert_allclose(adv[valid][:, 0], -centred / centred.std())

    spec, starts = lr_spec(intervals=4), STARTS2
    settings = NeuralLRSettings(hidden=(), iterations=2, group_size=4, sigma=2.0, diverged_norm=1.0)
    out = train_neural_policy_lr(spec, settings, starts, gain0=np.array([[3.0, 3.0]]))
    flagged = [h["diverged_fraction"] for h in out.history]
    assert 0 < max(flagged) < 1  # |x0| ~ 1: some trajectories leave the unit ball
    assert all(np.isfinite(p.detach().numpy()).all() for p in out.policy.parameters())
    with pytest.raises(InputError, match="every trajectory diverged"):
        train_neural_policy_lr(spec, NeuralLRSettings(hidden=(), iterations=1, group_size=2, diverged_norm=1e-9),
                               starts, gain0=np.array([[3.0, 3.0]]))


def test_lr_learner_moves_a_stabilising_gain_toward_the_care_gain():
    system = make_system("linear", LINEAR2)
    P = scipy.linalg.solve_continuous_are(system.A, system.B, system.Q, system.R)  # independent of the env's CARE
    K_star = np.linalg.solve(system.R, system.B.T @ P)
    gain0 = mirrored_gain(system.A, system.B)
    settings = NeuralLRSettings(hidden=(), iterations=100, lr=0.2, lr_final=0.05, group_size=8)
    out = train_neural_policy_lr(lr_spec(), settings, STARTS2, gain0=gain0)
    gain = -out.policy.linear.weight.detach().numpy()

    def cost(K: np.ndarray) -> float:  # horizon 6 s: the closed loop decays as exp(-1.3 t)
        return float(true_cost(system, lambda x, t: -K @ x, STARTS2, 6.0).mean())

    assert cost(gain) - cost(K_star) < 0.2 * (cost(gain0) - cost(K_star))
    assert np.linalg.norm(gain - K_star) < 0.5 * np.linalg.norm(gain0 - K_star)
    assert out.history[-1]["mean_return"] < out.history[0]["mean_return"]


def test_two_rollout_workers_give_the_one_worker_numbers():
    settings = NeuralLRSettings(hidden=(4,), iterations=2, group_size=4)
    outs = [train_neural_policy_lr(lr_spec(intervals=4), settings, STARTS2, gain0=np.array([[3.0, 3.0]]), seed=3,
                                   runtime=RuntimeSection(use_ray=False, num_rollout_workers=w)) for w in (1, 2)]
    for a, b in zip(outs[0].policy.parameters(), outs[1].policy.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_two_ddp_learners_stay_identical_and_match_one_in_process_learner():
    pytest.importorskip("ray")
    spec, starts = lr_spec(intervals=4), np.concatenate([STARTS2, -STARTS2])
    settings = NeuralLRSettings(hidden=(4,), iterations=3, group_size=3)  # 18 trajectories: shards of 9
    common = {"gain0": np.array([[3.0, 3.0]]), "seed": 5}
    local = LRTrainer(spec, settings, starts, runtime=RuntimeSection(use_ray=False), **common)
    try:
        local_metrics = [local.step(it) for it in range(2)]
        expected = local.group.replica_weights()[0]
    finally:
        local.close()
    runtime = RuntimeSection(num_cpus=2, num_learners=2, cpus_per_learner=0.5, num_rollout_workers=2,
                             cpus_per_worker=0.25)  # 2 x 0.5 + 3 x 0.25 CPU in one placement group
    with ray_session(runtime):
        placement = Placement.reserve(runtime)
        trainer = None
        try:
            trainer = LRTrainer(spec, settings, starts, runtime=runtime, placement=placement, **common)
            metrics = [trainer.step(it) for it in range(2)]
            first, second = trainer.group.replica_weights()
            held = trainer.policy().state_dict()
        finally:
            if trainer is not None:
                trainer.close()  # leaves the gloo group before the actors end (no abort at exit)
            placement.close()
    for key, value in first.items():
        torch.testing.assert_close(second[key], value, rtol=0, atol=0)  # replicas identical after the updates
        torch.testing.assert_close(value, expected[key], rtol=1e-9, atol=1e-9)  # == the full-batch learner
        torch.testing.assert_close(held[key], value, rtol=0, atol=0)  # what the rollouts were sent
    assert [m["lr"] for m in metrics] == [m["lr"] for m in local_metrics]  # schedule per update, not per replica
    assert metrics[1]["lr"] < metrics[0]["lr"]
