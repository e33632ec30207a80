"""Neural control policies: cart-pole physics, quadrature returns vs accurate cost, gradients, CARE limit."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.integrate import solve_ivp

from envs.control import make_system
from envs.control.analysis import linearize, mirrored_gain
from pipeline.learners.neural_pg import NeuralPGSettings, train_neural_policy
from rollouts.neural_control import (
    ControlPolicy,
    NeuralRolloutSpec,
    NeuralRolloutWorker,
    numpy_policy,
    returns,
    true_cost,
)

torch.set_num_threads(1)
A2 = [[0.0, 1.0], [1.0, -0.5]]  # open-loop unstable (eigenvalue 0.78)
B2 = [[0.0], [1.0]]
LINEAR2 = {"A": A2, "B": B2, "Q": [[1.0, 0.0], [0.0, 0.5]], "R": [[0.5]], "x0": [1.0, 0.0]}
STARTS2 = np.array([[1.0, 0.0], [0.0, 1.0], [-0.7, 0.4]])


def test_cartpole_conserves_momentum_and_energy_without_force():
    cp = make_system("cartpole")
    M, mp, l, g = cp.total_mass, cp.pole_mass, cp.half_length, cp.gravity

    def invariants(x):
        p, th, v, w = x
        momentum = M * v + mp * l * w * np.cos(th)  # horizontal momentum, pole centre at p + l sin(th)
        energy = 0.5 * M * v**2 + mp * l * v * w * np.cos(th) + 2 / 3 * mp * l**2 * w**2 + mp * g * l * np.cos(th)
        return np.array([momentum, energy])

    sol = solve_ivp(lambda t, x: cp.dynamics(x, np.zeros(1)), (0, 3), [0.1, 0.3, 0.2, -0.5], rtol=1e-11,
                    atol=1e-11)
    drift = np.abs(invariants(sol.y[:, -1]) - invariants(sol.y[:, 0]))
    assert sol.y[1, -1] ** 2 > 1.0  # the pole really fell, so the check covers the nonlinear regime
    assert np.all(drift < 1e-8)


def test_cartpole_linearisation_and_torch_terms_agree_with_closed_forms():
    cp, lin = make_system("cartpole"), make_system("cartpole_linear")
    A, B = linearize(cp)
    np.testing.assert_allclose(A, lin.A, atol=1e-7)
    np.testing.assert_allclose(B, lin.B, atol=1e-12)
    x = np.array([[0.3, 1.1, -0.4, 2.0], [0.0, -0.2, 0.1, 0.0]])
    f_t, g_t = cp.terms(torch.as_tensor(x), torch)
    for i in range(2):
        np.testing.assert_allclose(f_t[i].numpy(), cp.f(x[i]), rtol=1e-13)
        np.testing.assert_allclose(g_t[i].numpy(), cp.g(x[i])[:, 0], rtol=1e-13)


def test_quadrature_return_equals_accurate_cost_within_the_rule_error():
    cp = make_system("cartpole")
    gain = mirrored_gain(*linearize(cp))
    policy = ControlPolicy(4, 1, hidden=(), gain=gain)
    starts = np.array([[0.2, 0.4, 0.0, -0.3], [-0.3, -0.2, 0.5, 0.1]])
    truth = true_cost(cp, numpy_policy(policy), starts, 4.0)
    errors = {}
    for rule in ("trapezoid", "simpson"):
        for nodes in (3, 5, 9):  # h = 0.2, 0.1, 0.05 s; RK4 at 0.0125 s so only the quadrature errs
            spec = NeuralRolloutSpec(system="cartpole", interval=0.4, intervals=10, nodes=nodes, rule=rule,
                                     substeps=16 // (nodes - 1))
            with torch.no_grad():
                ret, _ = returns(cp, policy, torch.as_tensor(starts), spec)
            errors[rule, nodes] = np.max(np.abs(ret.numpy() - truth) / truth)
    ratio_trap = errors["trapezoid", 5] / errors["trapezoid", 9]
    ratio_simp = errors["simpson", 5] / errors["simpson", 9]
    assert 3.0 < ratio_trap < 5.0  # O(h^2)
    assert 10.0 < ratio_simp < 22.0  # O(h^4)
    assert errors["trapezoid", 3] < 0.1 and errors["simpson", 9] < 1e-4
    exact = NeuralRolloutSpec(system="cartpole", interval=0.4, intervals=10, nodes=9, substeps=2, cost="exact")
    with torch.no_grad():
        np.testing.assert_allclose(returns(cp, policy, torch.as_tensor(starts), exact)[0].numpy(), truth, rtol=1e-6)


def test_pathwise_gradient_matches_finite_differences():
    spec = NeuralRolloutSpec(system="linear", params=LINEAR2, interval=0.5, intervals=4, nodes=3)
    worker = NeuralRolloutWorker(spec, {"hidden": (4,), "time_dependent": True, "horizon": spec.horizon,
                                        "gain": [[2.0, 2.0]]})
    torch.manual_seed(1)
    params = {k: v.detach().numpy() + 0.1 * np.random.default_rng(0).standard_normal(v.shape)
              for k, v in worker.policy.state_dict().items()}
    batch = worker.rollout(params, STARTS2)
    for name in ("linear.weight", "mlp.0.weight"):
        e = np.zeros_like(params[name])
        e.flat[0] = 1e-6
        plus = worker.rollout({**params, name: params[name] + e}, STARTS2).returns.sum()
        minus = worker.rollout({**params, name: params[name] - e}, STARTS2).returns.sum()
        assert batch.grads[name].flat[0] == pytest.approx((plus - minus) / 2e-6, rel=1e-6)


def test_time_dependent_policy_keeps_the_origin_an_equilibrium():
    policy = ControlPolicy(2, 1, hidden=(8,), time_dependent=True, horizon=2.0)
    torch.nn.init.normal_(policy.mlp[-1].weight)
    x = torch.tensor([[0.0, 0.0], [0.5, -0.5]], dtype=torch.float64)
    assert torch.all(policy(x, 0.3)[0] == 0)
    assert not torch.allclose(policy(x, 0.3)[1], policy(x, 1.7)[1])


def test_learned_linear_policy_approaches_the_care_gain_and_coarse_trapezoid_biases_it():
    system = make_system("linear", LINEAR2)
    K_star = system.optimal_gain()
    gain0 = mirrored_gain(system.A, system.B)
    settings = NeuralPGSettings(hidden=(), steps=15, max_evals=4, num_workers=2)
    errors = {}  # horizon 6 s: the closed loop decays as exp(-1.3 t), truncation ~1e-7
    for label, extra in (("exact", {"cost": "exact", "nodes": 6}), ("h=0.25", {"nodes": 3, "substeps": 2}),
                         ("h=0.125", {"nodes": 5})):
        spec = NeuralRolloutSpec(system="linear", params=LINEAR2, interval=0.5, intervals=12,
                                 **{"substeps": 1, **extra})
        out = train_neural_policy(spec, settings, STARTS2, gain0=gain0)
        errors[label] = np.linalg.norm(-out.policy.linear.weight.detach().numpy() - K_star)
    assert errors["exact"] < 1e-3 * np.linalg.norm(K_star)
    assert 2.5 < errors["h=0.25"] / errors["h=0.125"] < 6.0  # the trapezoid bias falls as h^2
    P = scipy.linalg.solve_continuous_are(system.A, system.B, system.Q, system.R)  # independent of the env's CARE
    np.testing.assert_allclose(K_star, np.linalg.solve(system.R, system.B.T @ P))


def test_two_workers_give_the_one_worker_numbers():
    spec = NeuralRolloutSpec(system="linear", params=LINEAR2, interval=0.5, intervals=4, nodes=3)
    outs = [train_neural_policy(spec, NeuralPGSettings(hidden=(8,), steps=2, num_workers=w), STARTS2,
                                gain0=np.array([[3.0, 3.0]]), seed=3) for w in (1, 2)]
    for a, b in zip(outs[0].policy.parameters(), outs[1].policy.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)  # only the summation order differs
