"""Video track: config validation, the loop over role objects, evaluation and the eval command."""

from __future__ import annotations

import argparse
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pipeline.config import dump_config, parse_config
from pipeline.errors import ConfigError
from pipeline.video_track import (
    MEAN_FIVE,
    RewardSection,
    build_roles,
    evaluate_run,
    load_policy,
    newton_reward_fn,
    parse_video_section,
    post_train,
    relative_improvement,
    run_video,
)
from rollouts.models import TinyVideoConfig, build_tiny_policy, save_tiny_policy
from rollouts.video import RolloutBatch, SamplerConfig


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny")
    cfg = TinyVideoConfig(frames=4, context_frames=4, height=16, width=16, blocks=(8, 8), norm_groups=4)
    save_tiny_policy(build_tiny_policy(cfg, seed=0), path)
    return path


def _video(tiny_model, **over):
    base = {"model": {"path": str(tiny_model)}, "data": {"resolution": 16, "num_frames": 8,
            "conditions_per_iteration": 2, "group_size": 2}, "sampler": {"num_steps": 3, "window": [0, 2]},
            "learner": {"minibatch": 4, "lr": 1e-3}, "iterations": 2, "threads": 1,
            "eval": {"clips": 2, "num_steps": 3}}
    for key, value in over.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return base


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="video.data.group_size"):
        parse_video_section({"data": {"group_size": 0}})
    with pytest.raises(ConfigError, match="group_size = 1"):
        parse_video_section({"data": {"group_size": 1}, "learner": {"algorithm": "grpo"}})
    with pytest.raises(ConfigError, match="ddpo needs 'ddim'"):
        parse_video_section({"learner": {"algorithm": "ddpo"}})
    with pytest.raises(ConfigError, match="video.bogus"):
        parse_video_section({"bogus": 1})
    with pytest.raises(ConfigError, match="unknown rewards \\['speed'\\]"):
        newton_reward_fn(RewardSection(weights={"speed": 1.0}))


class _Recorder:
    """Toy roles that record the order of calls (no models)."""

    def __init__(self):
        self.calls, self.weights = [], {"w": torch.zeros(1)}

    def sample(self, conditions, version):
        self.calls.append(("sample", version))
        n = len(conditions)
        return RolloutBatch(conditions, conditions.groups, conditions.reference, torch.zeros(n, 2, 1),
                            torch.zeros(n, 1), torch.tensor([1.0, 0.5]), version, SamplerConfig())

    def score(self, videos, references):
        self.calls.append(("score", len(videos)))
        return {"kinematic": np.arange(len(videos), dtype=float), "mass": np.zeros(len(videos))}

    def update(self, batch):
        self.calls.append(("update", round(float(np.abs(batch.advantages).sum()), 3)))
        self.weights = {"w": self.weights["w"] + 1}
        return {"loss": 0.0}

    def get_weights(self):
        return self.weights

    def set_weights(self, weights, version):
        self.calls.append(("set_weights", version, float(weights["w"])))


def test_loop_runs_phases_in_order_with_versions():
    cfg = parse_video_section({"data": {"conditions_per_iteration": 2, "group_size": 2}, "iterations": 2,
                               "learner": {"algorithm": "grpo"}, "reward": {"weights": {"kinematic": 1.0}}})
    roles = _Recorder()
    history = post_train(cfg, rollout=roles, scorer=roles, learner=roles, rng=np.random.default_rng(0))
    # kinematic rewards 0,1 | 2,3 per group -> advantages -1, 1
    adv = pytest.approx(4.0, abs=1e-2)
    assert roles.calls == [("sample", 0), ("score", 4), ("update", adv), ("set_weights", 1, 1.0),
                           ("sample", 1), ("score", 4), ("update", adv), ("set_weights", 2, 2.0)]
    assert len(history) == 2 and history[0]["reward_kinematic"] == 1.5 and "iteration_s" in history[0]


def test_relative_improvement_by_hand():
    base = {"centroid_l2": 0.2, "chamfer": 0.1, "mask_iou": 0.5, "velocity_rmse": 1.0, "acceleration_rmse": 2.0,
            "kinematic_residual": 0.4}
    post = {"centroid_l2": 0.1, "chamfer": 0.1, "mask_iou": 0.6, "velocity_rmse": 1.5, "acceleration_rmse": 1.0,
            "kinematic_residual": 0.2}
    imp = relative_improvement(base, post)
    assert imp["centroid_l2"] == pytest.approx(0.5) and imp["mask_iou"] == pytest.approx(0.2)
    assert imp["velocity_rmse"] == pytest.approx(-0.5) and imp["kinematic_residual"] == pytest.approx(0.5)
    assert imp[MEAN_FIVE] == pytest.approx((0.5 + 0 + 0.2 - 0.5 + 0.5) / 5)


@pytest.mark.parametrize("algorithm,weights", [("grpo", {"kinematic": 1.0, "mass": 1.0}),
                                               ("reward_grad", {"kinematic": 1.0, "mass": 0.5})])
def test_real_roles_train_and_sync(tiny_model, algorithm, weights):
    torch.set_num_threads(1)
    cfg = parse_video_section(_video(tiny_model, learner={"algorithm": algorithm}, reward={"weights": weights}))
    rollout, scorer, learner = build_roles(cfg)
    history = post_train(cfg, rollout=rollout, scorer=scorer, learner=learner, rng=np.random.default_rng(0))
    assert len(history) == 2 and all(np.isfinite(h["loss"]) for h in history)
    for k, v in learner.get_weights().items():
        torch.testing.assert_close(rollout.policy.get_weights()[k], v)
    assert any(not torch.equal(v, load_policy(cfg.model).get_weights()[k]) for k, v in learner.get_weights().items())


def test_identical_policies_evaluate_identically(tiny_model):
    cfg = parse_video_section(_video(tiny_model))
    res = evaluate_run(cfg, load_policy(cfg.model), load_policy(cfg.model), "test")
    assert res["base"] == res["post_trained"]
    assert res["improvement"]["centroid_l2"] == 0.0 and res["reference"]["displacement_px"] > 1.0


def test_run_video_then_eval_command(tiny_model, tmp_path):
    from pipeline.commands import eval as eval_cmd

    config = parse_config({"runtime": {"use_ray": False}, "video": _video(tiny_model, iterations=1)})
    (tmp_path / "config.yaml").write_text(dump_config(config))
    run = SimpleNamespace(path=tmp_path, log=lambda *a, **k: None)
    summary, report = run_video(config, run)
    assert summary["iterations"] == 1 and "| centroid_l2 |" in report
    assert (tmp_path / "video" / "samples_test.gif").is_file()
    out = tmp_path / "eval.json"
    args = argparse.Namespace(run_dir=str(tmp_path), split="ood-speed", clips=2, json=str(out), out=None)
    assert eval_cmd.main(args) == 0
    data = json.loads(out.read_text())
    for section in ("base", "post_trained"):
        assert {"kinematic_residual", "centroid_l2", "chamfer", "mask_iou", "velocity_rmse",
                "acceleration_rmse"} <= set(data[section])
