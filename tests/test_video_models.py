"""Policies: tiny default round trip, diffusers transformers from a local path with LoRA, one RL step each."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline.errors import InputError
from pipeline.learners.grpo import GRPOConfig, GRPOLearner
from rollouts.models import (
    TinyVideoConfig,
    build_tiny_policy,
    load_tiny_policy,
    load_transformer_policy,
    save_tiny_policy,
)
from rollouts.video import ConditionBatch, SamplerConfig, VideoRolloutWorker

TINY_CONFIGS = {
    "WanTransformer3DModel": dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=3,
                                  out_channels=3, text_dim=16, freq_dim=16, ffn_dim=32, num_layers=1),
    "CogVideoXTransformer3DModel": dict(num_attention_heads=2, attention_head_dim=8, in_channels=3, out_channels=3,
                                        time_embed_dim=16, text_embed_dim=16, num_layers=1, sample_width=8,
                                        sample_height=8, sample_frames=3, patch_size=2, temporal_compression_ratio=1,
                                        max_text_seq_length=4),
    "LTXVideoTransformer3DModel": dict(in_channels=3, out_channels=3, num_attention_heads=2, attention_head_dim=8,
                                       cross_attention_dim=16, num_layers=1, caption_channels=16),
}


def _conditions(k: int = 2) -> ConditionBatch:
    ref = np.random.default_rng(0).integers(0, 255, size=(2, 3, 8, 8, 3), dtype=np.uint8)
    return ConditionBatch(ref[:, :1], np.array([0, 3]), ref).repeat(k)


def _save_model(tmp_path, cls_name: str, scheduler: dict | None = None):
    import diffusers

    torch.manual_seed(0)
    getattr(diffusers, cls_name)(**TINY_CONFIGS[cls_name]).save_pretrained(tmp_path / "transformer")
    if scheduler is not None:
        (tmp_path / "scheduler").mkdir()
        (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))
    return tmp_path


def test_tiny_policy_round_trip_and_residual_space(tmp_path):
    cfg = TinyVideoConfig(frames=2, context_frames=1, height=8, width=8, blocks=(8, 8), norm_groups=4)
    policy = build_tiny_policy(cfg, seed=3)
    save_tiny_policy(policy, tmp_path)
    loaded = load_tiny_policy(tmp_path)
    cond = _conditions().conditions()
    x, level = torch.randn(4, 2, 3, 8, 8), torch.full((4,), 0.5)
    torch.testing.assert_close(loaded(x, level, cond), policy(x, level, cond))
    frames = torch.rand(4, 2, 3, 8, 8) * 2 - 1
    torch.testing.assert_close(policy.to_video(policy.to_sample(frames, cond), cond), frames)
    assert (tmp_path / "model.safetensors").stat().st_size < 200_000
    with pytest.raises(InputError, match="config.json"):
        load_tiny_policy(tmp_path / "missing")


@pytest.mark.parametrize("cls_name", sorted(TINY_CONFIGS))
def test_transformer_lora_policy_one_rl_step(tmp_path, cls_name):
    torch.set_num_threads(1)
    root = _save_model(tmp_path, cls_name, {"_class_name": "FlowMatchEulerDiscreteScheduler"})
    policy = load_transformer_policy(root, lora_rank=4)
    cond = _conditions().conditions()
    x, level = torch.randn(4, 2, 3, 8, 8), torch.full((4,), 0.7)
    base_out = policy.reference(x, level, cond)
    torch.testing.assert_close(policy(x, level, cond), base_out)  # LoRA B = 0 at init
    frozen = {k: v.clone() for k, v in policy.net.named_parameters() if "lora" not in k}
    worker = VideoRolloutWorker(policy, SamplerConfig(num_steps=3, window=(1, 3)), seed=0)
    batch = worker.sample(_conditions(), 0)
    assert batch.videos.shape == (4, 3, 8, 8, 3) and batch.log_probs.shape == (4, 2)
    batch.advantages = np.array([1.0, -1.0, 1.0, -1.0], dtype=np.float32)
    metrics = GRPOLearner(policy, GRPOConfig(lr=1e-2, minibatch=4, kl_beta=0.1)).update(batch)
    assert np.isfinite(metrics["loss"]) and metrics["ratio_mean"] == pytest.approx(1.0, abs=1e-5)
    assert policy.get_weights() and all("lora" in k for k in policy.get_weights())
    assert not torch.allclose(policy(x, level, cond), base_out)
    torch.testing.assert_close(policy.reference(x, level, cond), base_out)
    for k, v in policy.net.named_parameters():
        if k in frozen:
            torch.testing.assert_close(v, frozen[k])


def test_loader_errors_are_clear(tmp_path):
    with pytest.raises(InputError, match="no config.json"):
        load_transformer_policy(tmp_path / "nowhere")
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    with pytest.raises(InputError, match="class 'UNet2DModel'"):
        load_transformer_policy(tmp_path / "unet")
    root = _save_model(tmp_path / "v", "LTXVideoTransformer3DModel",
                       {"_class_name": "DDIMScheduler", "prediction_type": "v_prediction"})
    with pytest.raises(InputError, match="v_prediction"):
        load_transformer_policy(root)
    with pytest.raises(InputError, match="expected 'WanTransformer3DModel'"):
        load_transformer_policy(root, expected_class="WanTransformer3DModel")


def test_epsilon_model_rejects_flow_sampler(tmp_path):
    root = _save_model(tmp_path, "WanTransformer3DModel", {"_class_name": "DDIMScheduler",
                                                           "prediction_type": "epsilon"})
    policy = load_transformer_policy(root)
    assert policy.parametrisation == "epsilon"
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="sampler.kind = 'sde'"):
        VideoRolloutWorker(policy, SamplerConfig(kind="sde"))
    VideoRolloutWorker(policy, SamplerConfig(kind="ddim", num_steps=3))


def _export_policy(tmp_path, policy, fmt: str):
    """Checkpoint ``policy`` the way the video track does and run ``newtonrl export`` on it."""
    from pipeline.checkpoint import save_checkpoint, training_state
    from pipeline.cli import main
    from pipeline.commands.export import video_model_spec

    run = tmp_path / "run"
    state = training_state(model=policy.net, model_spec=video_model_spec(policy), rng=False)
    save_checkpoint(run / "checkpoints" / "video", 1, state)
    out = tmp_path / fmt
    assert main(["export", str(run), "--format", fmt, "--out", str(out)]) == 0
    return out


def test_tiny_policy_exports_as_a_diffusers_unet_folder(tmp_path):
    from diffusers import UNet2DModel

    cfg = TinyVideoConfig(frames=2, context_frames=1, height=8, width=8, blocks=(8, 8), norm_groups=4)
    policy = build_tiny_policy(cfg, seed=3)
    out = _export_policy(tmp_path, policy, "diffusers")
    unet = UNet2DModel.from_pretrained(out)
    x, t, labels = torch.randn(2, 9, 8, 8), torch.tensor([10.0, 900.0]), torch.tensor([0, 4])
    with torch.no_grad():
        torch.testing.assert_close(unet(x, t, class_labels=labels).sample,
                                   policy.net.unet(x, t, class_labels=labels).sample)
    meta = json.loads((out / "newtonrl_video.json").read_text())
    assert meta["config"]["frames"] == 2 and meta["predicts_sample"] and meta["residual"]


def test_transformer_lora_policy_exports_adapters_and_merged_model(tmp_path):
    import diffusers

    path = _save_model(tmp_path / "m", "WanTransformer3DModel")
    policy = load_transformer_policy(path, lora_rank=2)
    with torch.no_grad():  # non-trivial adapters (B starts at zero)
        for name, p in policy.net.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    cond = _conditions().conditions()
    x, level = torch.randn(4, 2, 3, 8, 8), torch.full((4,), 0.5)
    with torch.no_grad():
        want = policy(x, level, cond)

    merged = diffusers.WanTransformer3DModel.from_pretrained(_export_policy(tmp_path, policy, "diffusers"))
    with torch.no_grad():
        got = type(policy)(net=type(policy.net)(merged, "wan"))(x, level, cond)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)

    base = diffusers.WanTransformer3DModel.from_pretrained(path / "transformer")
    base.load_lora_adapter(str(_export_policy(tmp_path, policy, "lora")), prefix=None, use_safetensors=True)
    with torch.no_grad():
        got = type(policy)(net=type(policy.net)(base, "wan"))(x, level, cond)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
