"""Checkpoints: exact round trips, atomic saves, keep-last-k, and `train --resume` == an uninterrupted run."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

import pipeline.checkpoint as ckpt_mod
from pipeline.checkpoint import (
    list_checkpoints,
    load_checkpoint,
    restore_training_state,
    save_checkpoint,
    training_state,
)
from pipeline.cli import main
from pipeline.config import parse_config
from pipeline.controller import train
from pipeline.learners.intrl import IntRLLearner
from pipeline.rundir import read_metrics

TIMING = ("rollout_s", "reward_s")


def make_trainer(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
    return model, opt, sched


def train_steps(model, opt, sched, n: int) -> list[float]:
    """Steps on data drawn from the global torch / numpy / python RNGs (so their states matter)."""
    losses = []
    for _ in range(n):
        x = torch.randn(16, 4) + float(np.random.rand()) + random.random()
        loss = (model(x) - x.sum(1, keepdim=True)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    return losses


def test_resumed_training_is_bitwise_identical(tmp_path):
    random.seed(1)
    np.random.seed(1)
    model, opt, sched = make_trainer()
    full = train_steps(model, opt, sched, 6)
    reference = [p.detach().clone() for p in model.parameters()]

    random.seed(1)
    np.random.seed(1)
    model, opt, sched = make_trainer()
    first = train_steps(model, opt, sched, 3)
    save_checkpoint(tmp_path, 3, training_state(model=model, optimizer=opt, scheduler=sched, step=3))
    train_steps(model, opt, sched, 2)  # state drifts; the restore must undo it, RNGs included
    model, opt, sched = make_trainer(seed=99)  # fresh objects, different init
    ckpt = load_checkpoint(tmp_path)
    restore_training_state(ckpt.state, model=model, optimizer=opt, scheduler=sched)
    assert ckpt.step == 3 and ckpt.state["step"] == 3
    rest = train_steps(model, opt, sched, 3)
    assert first + rest == full
    for p, q in zip(model.parameters(), reference):
        assert torch.equal(p, q)


def test_crash_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, 1, {"w": np.arange(3.0)})

    def broken(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, 2, {"w": np.arange(4.0)})
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1]
    assert [p.name for p in tmp_path.iterdir()] == ["step-00000001"]  # no temp folder left behind
    np.testing.assert_array_equal(load_checkpoint(tmp_path).state["w"], np.arange(3.0))


def test_keep_last_and_exotic_values_round_trip(tmp_path):
    state = {"t": (1, [2.5, None]), "ints": {3: "a", 4: np.int64(5)}, "f16": torch.ones(2, dtype=torch.bfloat16),
             "u32": np.arange(3, dtype=np.uint32), "inf": float("inf")}
    for step in range(1, 6):
        save_checkpoint(tmp_path, step, state, keep_last=3)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [3, 4, 5]
    back = load_checkpoint(tmp_path).state
    assert back["t"] == (1, [2.5, None]) and back["ints"] == {3: "a", 4: 5} and back["inf"] == float("inf")
    assert back["f16"].dtype == torch.bfloat16 and back["u32"].dtype == np.uint32
    assert "pickle" not in (tmp_path / "step-00000005" / "state.json").read_text()


def control_cfg(tmp_path, **iteration):
    return parse_config({
        "run": {"name": "ctl", "out_dir": str(tmp_path)},
        "runtime": {"use_ray": False},
        "checkpoint": {"every": 1, "keep_last": 2},
        "control": {"system": {"name": "example2"},
                    "rollout": {"nodes": 7, "intervals": 12, "protocol": "continuing", "num_initial_states": 3},
                    "iteration": {"tol": 1e-12, "max_iterations": 7, **iteration}},
    })


def records(path):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in read_metrics(path)]


def test_resume_after_driver_crash_gives_identical_metrics(tmp_path, monkeypatch):
    full = train(control_cfg(tmp_path / "a"), progress=False)
    original = IntRLLearner.update

    def crash_at_5(self, result):
        if self.state.iteration == 4:
            raise KeyboardInterrupt("driver killed")
        return original(self, result)

    monkeypatch.setattr(IntRLLearner, "update", crash_at_5)
    with pytest.raises(KeyboardInterrupt):
        train(control_cfg(tmp_path / "b"), progress=False)
    monkeypatch.setattr(IntRLLearner, "update", original)
    (cut,) = (tmp_path / "b").iterdir()
    assert [s for s, _ in list_checkpoints(cut / "checkpoints" / "control")] == [3, 4]
    assert main(["train", "--resume", str(cut), "--no-progress"]) == 0
    assert len(records(full)) == 7
    assert records(cut) == records(full)
    summary_full, summary_cut = (json.loads((p / "summary.json").read_text())["control"] for p in (full, cut))
    assert summary_cut["weights"] == summary_full["weights"]


def test_resume_past_an_iteration_cap(tmp_path):
    full = train(control_cfg(tmp_path / "a"), progress=False)
    cut = train(control_cfg(tmp_path / "b", max_iterations=3), progress=False)
    assert len(read_metrics(cut)) == 3
    assert main(["train", "--resume", str(cut), "--set", "control.iteration.max_iterations=7", "--no-progress"]) == 0
    assert records(cut) == records(full)


def test_resume_needs_a_run_directory(tmp_path):
    assert main(["train", "--resume", str(tmp_path / "nope")]) == 2


def tiny_unet(seed: int):
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4, attention_head_dim=8)


def save_video_run(tmp_path, net):
    from pipeline.commands.export import model_spec

    run = tmp_path / "video-run"
    save_checkpoint(run / "checkpoints" / "video", 3, training_state(model=net, model_spec=model_spec(net), rng=False))
    return run


def unet_out(net):
    torch.manual_seed(5)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        return net(x, torch.tensor([10, 500])).sample


def test_export_diffusers_and_lora_folders_load_back(tmp_path):
    from diffusers import UNet2DModel
    from peft import LoraConfig, PeftModel, get_peft_model

    net = tiny_unet(0)
    run = save_video_run(tmp_path, net)
    assert main(["export", str(run), "--format", "diffusers", "--out", str(tmp_path / "d")]) == 0
    torch.testing.assert_close(unet_out(UNet2DModel.from_pretrained(tmp_path / "d")), unet_out(net))
    assert main(["export", str(run), "--format", "lora", "--out", str(tmp_path / "x")]) == 2  # no adapters

    lora = get_peft_model(tiny_unet(1), LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v"],
                                                   init_lora_weights=False))
    run = save_video_run(tmp_path / "l", lora)
    assert main(["export", str(run), "--format", "lora", "--out", str(tmp_path / "lora")]) == 0
    back = PeftModel.from_pretrained(tiny_unet(1), tmp_path / "lora")  # same base, adapters from the folder
    torch.testing.assert_close(unet_out(back), unet_out(lora))
    assert not torch.allclose(unet_out(back), unet_out(tiny_unet(1)))  # the adapters matter
    assert main(["export", str(run), "--format", "diffusers", "--out", str(tmp_path / "merged")]) == 0
    torch.testing.assert_close(unet_out(UNet2DModel.from_pretrained(tmp_path / "merged")), unet_out(lora),
                               rtol=1e-4, atol=1e-5)


def test_export_control_policy_with_system_description(tmp_path):
    from safetensors import safe_open

    from envs.control import make_system

    run = train(control_cfg(tmp_path, max_iterations=3), progress=False)
    assert main(["export", str(run), "--format", "safetensors"]) == 0
    out = run / "export" / "control-safetensors"
    w = np.asarray(json.loads((run / "summary.json").read_text())["control"]["weights"])
    with safe_open(str(out / "policy.safetensors"), framework="np") as fh:
        np.testing.assert_array_equal(fh.get_tensor("value_weights"), w)
        described = json.loads(fh.metadata()["system"])
        assert "policy_gain" not in fh.keys()  # example2 is nonlinear: no linear gain
    assert described == json.loads((out / "system.json").read_text())
    assert described["system"] == "example2" and described["state_dim"] == 2 and described["iteration"] == 3
    system = make_system("example2", {})
    np.testing.assert_array_equal(described["Q"], system.Q)
