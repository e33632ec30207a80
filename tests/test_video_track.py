"""Video track: config validation, the loop over role objects, evaluation and the eval command."""

from __future__ import annotations

import argparse
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pipeline.config import dump_config, parse_config
from pipeline.errors import ConfigError, InputError
from pipeline.video_eval import MEAN_FIVE, evaluate_run, improvement_interval, relative_improvement
from pipeline.video_track import (
    TIMINGS,
    RewardSection,
    build_roles,
    close_roles,
    load_policy,
    make_conditions,
    newton_reward_fn,
    parse_video_section,
    post_train,
    run_video,
)
from pipeline.weights import WeightsMessage
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
    with pytest.raises(ConfigError, match="video.reward': weights: unknown rewards \\['speed'\\]"):
        parse_video_section({"reward": {"weights": {"speed": 1.0}}})
    with pytest.raises(ConfigError, match="at least one > 0"):
        parse_video_section({"reward": {"weights": {"kinematic": 0.0}}})


def test_reward_gradient_rewards_are_the_weighted_ones_and_differentiable():
    fn = newton_reward_fn(RewardSection(weights={"trajectory": 1.0}))
    video = (torch.rand(2, 8, 3, 16, 16) * 2 - 1).requires_grad_(True)
    out = fn(video, torch.rand(2, 8, 3, 16, 16) * 2 - 1)
    assert set(out) == {"trajectory"} and torch.isfinite(out["trajectory"]).all()
    out["trajectory"].sum().backward()
    assert torch.isfinite(video.grad).all() and video.grad.abs().sum() > 0


class _Recorder:
    """Toy roles that record the order of calls (no models)."""

    def __init__(self):
        self.calls, self.tensors = [], {"w": torch.zeros(1)}

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
        self.tensors = {"w": self.tensors["w"] + 1}
        return {"loss": 0.0}

    def weights(self, version):
        return WeightsMessage(version, self.tensors)

    def set_weights(self, message):
        self.calls.append(("set_weights", message.version, float(message.tensors["w"])))


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
    assert res["improvement_ci95"] == {MEAN_FIVE: [0.0, 0.0], "kinematic_residual": [0.0, 0.0]}


def _clip_rows(rng: np.random.Generator, clips: int, gain: float) -> tuple[list[dict], list[dict]]:
    """Per-clip metrics: base ~ 1 + noise; post = base scaled by (1 - gain) (IoU by 1 + gain), plus noise."""
    keys = ("centroid_l2", "chamfer", "mask_iou", "velocity_rmse", "acceleration_rmse", "kinematic_residual")
    base = 1.0 + 0.3 * rng.standard_normal((clips, len(keys)))
    post = base * np.where(np.array(keys) == "mask_iou", 1 + gain, 1 - gain) + 0.3 * rng.standard_normal(base.shape)
    return ([dict(zip(keys, row, strict=True)) for row in base], [dict(zip(keys, row, strict=True)) for row in post])


def test_improvement_interval_covers_the_true_gain_and_narrows_with_clips():
    rng = np.random.default_rng(0)
    hits, widths = 0, {48: [], 192: []}
    for trial in range(100):  # true relative gain of every metric, hence of their mean: 0.1
        interval = improvement_interval(*_clip_rows(rng, 48, 0.1), resamples=400, seed=trial)[MEAN_FIVE]
        hits += interval[0] <= 0.1 <= interval[1]
        widths[48].append(interval[1] - interval[0])
    for trial in range(20):
        interval = improvement_interval(*_clip_rows(rng, 192, 0.1), resamples=400, seed=trial)[MEAN_FIVE]
        widths[192].append(interval[1] - interval[0])
    assert 0.85 <= hits / 100 <= 1.0  # a 95% interval
    assert 1.6 < np.median(widths[48]) / np.median(widths[192]) < 2.5  # ~ sqrt(4)
    with pytest.raises(InputError, match="as many base as post-trained rows"):
        improvement_interval([{}], [])


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
    with pytest.raises(ConfigError, match="--clips = 0: expected at least 1 clip"):
        eval_cmd.main(argparse.Namespace(**{**vars(args), "clips": 0}))
    data = json.loads(out.read_text())
    for section in ("base", "post_trained"):
        assert {"kinematic_residual", "centroid_l2", "chamfer", "mask_iou", "velocity_rmse",
                "acceleration_rmse"} <= set(data[section])
    from envs.newton.spec import PRIMITIVES

    assert set(data["by_primitive"]) <= set(PRIMITIVES)
    assert sum(sec["clips"] for sec in data["by_primitive"].values()) == 2
    assert all({"base", "post_trained", "improvement"} <= set(sec) for sec in data["by_primitive"].values())
    low, high = data["improvement_ci95"][MEAN_FIVE]
    assert low <= data["improvement"][MEAN_FIVE] <= high
    assert "| primitive | clips |" in report and "(95% CI " in report

    from diffusers import UNet2DModel
    from safetensors.torch import load_file

    from pipeline.cli import main

    assert main(["export", str(tmp_path), "--format", "diffusers", "--out", str(tmp_path / "export")]) == 0
    exported = UNet2DModel.from_pretrained(tmp_path / "export").state_dict()
    trained = load_file(str(tmp_path / "video" / "policy_weights.safetensors"))
    assert all(torch.equal(exported[k.removeprefix("unet.")], v) for k, v in trained.items())


def resume_config(tiny_model, out_dir, runtime=None, **video):
    """Control (2 iterations) then video (4, checkpoints every 2) with 2 rollout workers, in-process."""
    return parse_config({
        "run": {"name": "resume", "out_dir": str(out_dir)},
        "runtime": {"use_ray": False, "num_rollout_workers": 2, **(runtime or {})},
        "checkpoint": {"keep_last": 1},
        "control": {"system": {"name": "example2"}, "rollout": {"nodes": 7, "intervals": 4},
                    "iteration": {"tol": 1e-12, "max_iterations": 2}},
        "video": _video(tiny_model, iterations=4, checkpoint_every=2, eval={"clips": 1}, **video)})


def video_rows(run_dir):
    from pipeline.rundir import read_metrics

    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in read_metrics(run_dir, "video")]


@pytest.mark.parametrize("learner,runtime", [({"objective": "clipped"}, {}), ({"objective": "weighted_fm"}, {}),
                                             ({"objective": "clipped"}, {"async_rollouts": True, "max_staleness": 1}),
                                             ({"algorithm": "reward_grad"}, {})])
def test_resume_after_a_crash_gives_the_metrics_of_an_uninterrupted_run(tiny_model, tmp_path, monkeypatch, learner,
                                                                        runtime):
    from pipeline.checkpoint import list_checkpoints
    from pipeline.cli import main
    from pipeline.controller import train
    from pipeline.learners.grpo import GRPOLearner
    from pipeline.learners.reward_grad import RewardGradLearner
    from pipeline.rundir import read_metrics

    learner = {**learner, "kl_beta": 0.1}
    full = train(resume_config(tiny_model, tmp_path / "a", runtime, learner=learner), progress=False)
    cls = RewardGradLearner if learner.get("algorithm") == "reward_grad" else GRPOLearner
    original = cls.update

    def crash_in_the_fourth(self, batch):
        if self.version == 3:
            raise KeyboardInterrupt("driver killed")
        return original(self, batch)

    monkeypatch.setattr(cls, "update", crash_in_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        train(resume_config(tiny_model, tmp_path / "b", runtime, learner=learner), progress=False)
    monkeypatch.setattr(cls, "update", original)
    (cut,) = (tmp_path / "b").iterdir()
    assert [s for s, _ in list_checkpoints(cut / "checkpoints" / "video")] == [2]
    assert len(video_rows(cut)) == 3  # the row of iteration 3 came after the checkpoint: it is redone
    control_rows = read_metrics(cut, "control/example2")
    assert main(["train", "--resume", str(cut), "--no-progress"]) == 0
    assert read_metrics(cut, "control/example2") == control_rows  # the finished control track is not redone
    assert len(video_rows(full)) == 4 and video_rows(cut) == video_rows(full)
    assert [s for s, _ in list_checkpoints(cut / "checkpoints" / "video")] == [4]  # keep_last: 1
    evals = [json.loads((p / "summary.json").read_text())["video"]["eval"] for p in (full, cut)]
    assert evals[0] == evals[1]


@pytest.mark.parametrize("algorithm", ["grpo", "reward_grad"])
def test_in_process_learner_group_replica_matches_the_plain_learner(tiny_model, algorithm):
    """Same plan, same losses: accelerate's accumulation on one replica == the in-process update, bit for bit."""
    from pipeline.config import RuntimeSection
    from pipeline.video_track import group_learner, make_learner

    torch.set_num_threads(1)
    cfg = parse_video_section(_video(tiny_model, learner={"algorithm": algorithm, "minibatch": 2, "grad_accum": 2,
                                                          "kl_beta": 0.1}, reward={"weights": {"kinematic": 1.0}}))
    rollout, _, plain = build_roles(cfg)
    batch = make_conditions("train", 2, np.random.default_rng(0), resolution=16, num_frames=8).repeat(2)
    if algorithm == "grpo":
        batch = rollout.sample(batch, 0)
        batch.advantages = np.array([1.0, -1.0, 0.5, -0.5], dtype=np.float32)
    group = group_learner(cfg, RuntimeSection(use_ray=False, num_learners=0))
    try:
        for _ in range(2):
            expected, got = plain.update(batch), group.update(batch)
            assert got == pytest.approx(expected, rel=1e-6)
        message = group.weights(2)
        for key, value in plain.weights(2).tensors.items():
            assert torch.equal(message.tensors[key], value), key
        assert group.policy.get_weights().keys() == plain.get_weights().keys()
        restored = make_learner(cfg)
        restored.load_state(group.state())  # the checkpoint layouts agree
        assert all(torch.equal(restored.weights(2).tensors[k], v) for k, v in message.tensors.items())
    finally:
        group.close()


def test_two_learner_replicas_train_the_video_loop_and_stay_identical(tiny_model):
    from pipeline.config import RuntimeSection
    from pipeline.runtime import ray_session

    pytest.importorskip("ray")
    torch.set_num_threads(1)
    cfg = parse_video_section(_video(tiny_model))
    runtime = RuntimeSection(num_cpus=2, num_learners=2, cpus_per_learner=0.5, cpus_per_worker=0.25)
    with ray_session(runtime):
        roles = build_roles(cfg, runtime=runtime)
        rollout, scorer, learner = roles
        try:
            history = post_train(cfg, rollout=rollout, scorer=scorer, learner=learner, rng=np.random.default_rng(0))
            first, second = learner.group.replica_weights()
            assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
            assert not all(torch.equal(v, load_policy(cfg.model).net.state_dict()[k]) for k, v in first.items())
            assert len(history) == 2 and all(np.isfinite(h["loss"]) for h in history)
            assert rollout.sync.push(learner.weights(1)) == [2] and learner.held == 2  # rollouts hold v2 already
            for key, value in learner.policy.net.state_dict().items():
                assert torch.equal(value, first[key])
        finally:
            close_roles(*roles)


def test_async_rollouts_run_ahead_within_the_staleness_bound(tiny_model):
    """Staleness 0 == the synchronous loop; staleness 1: every other batch comes from the previous policy (no
    step is started past a checkpoint, here every 2 iterations)."""
    from pipeline.config import RuntimeSection

    torch.set_num_threads(1)
    cfg = parse_video_section(_video(tiny_model, iterations=4, checkpoint_every=2))
    runs = {}
    for name, staleness in (("sync", None), ("ahead0", 0), ("ahead1", 1)):
        runtime = RuntimeSection(use_ray=False, num_rollout_workers=2, async_rollouts=staleness is not None)
        rollout, scorer, learner = build_roles(cfg, runtime=runtime)
        runs[name] = [{k: v for k, v in h.items() if k not in TIMINGS}
                      for h in post_train(cfg, rollout=rollout, scorer=scorer, learner=learner,
                                          rng=np.random.default_rng(0), max_staleness=staleness)]
    assert runs["ahead0"] == runs["sync"] and [h["staleness"] for h in runs["sync"]] == [0, 0, 0, 0]
    assert [h["staleness"] for h in runs["ahead1"]] == [0, 1, 0, 1]
    assert runs["ahead1"][0] == runs["sync"][0] and runs["ahead1"][1] != runs["sync"][1]
