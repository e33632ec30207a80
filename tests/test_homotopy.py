"""Homotopy continuation: refuses/accepts as the closed-loop eigenvalues say, converges to the CARE optimum."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from envs.control import make_system
from envs.control.analysis import linearize, stability_abscissa
from pipeline.bench.homotopy import SYSTEMS, gain_of, make_config, mirrored_gain
from pipeline.config import parse_config
from pipeline.control_track import run_control
from pipeline.errors import ConfigError, InputError
from pipeline.homotopy import next_shift, stage_control

A_UNSTABLE = np.array(SYSTEMS["unstable_linear"]["params"]["A"])
B_UNSTABLE = np.array(SYSTEMS["unstable_linear"]["params"]["B"])


def test_plain_intrl_refuses_zero_policy_on_unstable_systems():
    for name in SYSTEMS:
        cfg = make_config(name)
        with pytest.raises(InputError, match="not admissible"):
            run_control(cfg.control, cfg.runtime, progress=False)


def test_homotopy_reaches_the_care_gain_on_the_unstable_linear_system():
    cfg = make_config("unstable_linear", initializer="homotopy")
    out = run_control(cfg.control, cfg.runtime, progress=False).summary
    P = scipy.linalg.solve_continuous_are(A_UNSTABLE, B_UNSTABLE, np.eye(3), np.eye(1))
    assert out["converged"] and out["homotopy_stages"] >= 2
    assert np.linalg.norm(gain_of("unstable_linear", out["weights"]) - B_UNSTABLE.T @ P) < 1e-5


def test_homotopy_on_pendulum_matches_a_pole_placement_start_and_the_linearised_care():
    homotopy = make_config("pendulum", initializer="homotopy")
    placed = make_config("pendulum", gain=mirrored_gain("pendulum"))
    w_h = run_control(homotopy.control, homotopy.runtime, progress=False).weights
    w_p = run_control(placed.control, placed.runtime, progress=False).weights
    np.testing.assert_allclose(w_h, w_p, rtol=1e-6)  # one fixed point, reached from two admissible starts
    pendulum = make_system("pendulum")
    A, B = pendulum.linearization()  # closed form, independent of the numeric Jacobians
    K_lin = B.T @ scipy.linalg.solve_continuous_are(A, B, pendulum.Q, pendulum.R)
    K = gain_of("pendulum", w_h.tolist())
    assert np.linalg.norm(K - K_lin) / np.linalg.norm(K_lin) < 0.02  # |theta| <= 0.2 rad: near-linear regime


def test_next_shift_halves_until_admissible_and_jumps_to_zero_when_stable():
    assert next_shift(1.0, 2.0, 2.0) == (1.5, 0.5)  # candidates 0 and 1 fail (abscissa - s >= 0), 1.5 passes
    assert next_shift(-0.1, 2.0, 0.5) == (0.0, 2.0)
    with pytest.raises(InputError, match="homotopy stalled"):
        next_shift(2.0, 2.0, 1.0)


def test_shifted_stage_moves_the_open_loop_eigenvalues_by_the_shift():
    cfg = make_config("unstable_linear", initializer="homotopy")
    stage = stage_control(cfg.control, 1.5, None)
    system = make_system(stage.system.name, stage.system.params)
    A, _ = linearize(system)
    np.testing.assert_allclose(A, A_UNSTABLE - 1.5 * np.eye(3), atol=1e-8)
    assert stability_abscissa(system, lambda x: np.zeros(1)) == pytest.approx(
        np.linalg.eigvals(A_UNSTABLE).real.max() - 1.5, abs=1e-8)
    assert stage.iteration.initializer == "given" and stage.iteration.tol == cfg.control.iteration.homotopy_stage_tol


def test_bad_initializer_is_a_config_error():
    with pytest.raises(ConfigError, match="control.iteration.initializer"):
        parse_config({"control": {"iteration": {"initializer": "newton"}}})
