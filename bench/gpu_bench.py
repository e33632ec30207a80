"""Learner MFU and rollout throughput of a random-init video transformer (diffusers WanTransformer3DModel).

``--size 1b``: the Wan2.1 1.3B layout (30 layers, width 1536, 12 heads, FFN 8960; ~1.4B parameters) in bf16 on
one GPU. ``--size tiny --device cpu``: the same code path in seconds (a dry run of the script).

Learner step: flow-matching loss under bf16 autocast with fp32 master weights, backward, fused AdamW step.
FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on one step (matmuls and attention), so MFU =
counted FLOPs / step time / peak bf16 FLOP/s of the device. Rollout: ``--sample-steps`` Euler steps of the
velocity field in bf16 under ``torch.inference_mode`` for a batch of videos; throughput in videos/s and latent
frames/s. Prints a JSON record (also written to ``--out``). Medians over the timed iterations.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time
from pathlib import Path

import torch

#: dense bf16 peak FLOP/s by device-name substring (no sparsity)
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "L4": 121e12}

SIZES = {
    "1b": dict(model=dict(num_attention_heads=12, attention_head_dim=128, ffn_dim=8960, num_layers=30, text_dim=4096,
                          in_channels=16, out_channels=16, patch_size=(1, 2, 2)),
               latent=(13, 48, 80), text_tokens=512, batch=1, rollout_batch=4),
    "tiny": dict(model=dict(num_attention_heads=2, attention_head_dim=16, ffn_dim=64, num_layers=2, text_dim=32,
                            in_channels=4, out_channels=4, patch_size=(1, 2, 2)),
                 latent=(4, 8, 8), text_tokens=8, batch=2, rollout_batch=2),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def inputs(spec: dict, batch: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    frames, height, width = spec["latent"]
    channels, text = spec["model"]["in_channels"], spec["model"]["text_dim"]
    x = torch.randn(batch, channels, frames, height, width, device=device, dtype=dtype)
    context = torch.randn(batch, spec["text_tokens"], text, device=device, dtype=dtype)
    return x, context


def learner_step(model, optimizer, x0: torch.Tensor, context: torch.Tensor, device: torch.device) -> float:
    """One flow-matching step: x_t = (1 - s) x0 + s eps, target v = eps - x0."""
    sigma = torch.rand(x0.shape[0], device=device)
    eps = torch.randn_like(x0)
    s = sigma.view(-1, 1, 1, 1, 1)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        pred = model(hidden_states=(1 - s) * x0 + s * eps, timestep=sigma * 1000, encoder_hidden_states=context,
                     return_dict=False)[0]
        loss = (pred.float() - (eps - x0)).pow(2).mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def time_it(fn, device: torch.device, iters: int) -> list[float]:  # noqa: ANN001 - any callable
    times = []
    for _ in range(iters):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def bench_learner(spec: dict, device: torch.device, args: argparse.Namespace) -> dict:
    from diffusers import WanTransformer3DModel
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    with torch.device(device):
        model = WanTransformer3DModel(**spec["model"])  # fp32 master weights, bf16 autocast compute
    params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    x0, context = inputs(spec, spec["batch"], device, torch.float32)
    step = functools.partial(learner_step, model, optimizer, x0, context, device)
    time_it(step, device, args.warmup)
    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    times = time_it(step, device, args.iters)
    step_s = statistics.median(times)
    peak = next((v for k, v in PEAK_BF16.items() if k in args.device_name), float("nan"))
    tokens = spec["batch"] * x0.shape[2] * (x0.shape[3] // 2) * (x0.shape[4] // 2)
    out = {"params_B": params / 1e9, "learner_batch": spec["batch"], "tokens_per_sample": tokens // spec["batch"],
           "learner_step_s": step_s, "flops_per_step_T": flops / 1e12, "achieved_TFLOPs": flops / step_s / 1e12,
           "peak_TFLOPs": peak / 1e12, "mfu": flops / step_s / peak,
           "peak_mem_GB": torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else float("nan")}
    del model, optimizer
    return out


def bench_rollout(spec: dict, device: torch.device, args: argparse.Namespace) -> dict:
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    with torch.device(device):
        model = WanTransformer3DModel(**spec["model"]).to(torch.bfloat16).eval()
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or ())  # norms / embeddings stay fp32, as diffusers
    for name, module in model.named_modules():  # does when it loads bf16 weights
        if keep & set(name.split(".")):
            module.float()
    batch = spec["rollout_batch"]
    noise, context = inputs(spec, batch, device, torch.bfloat16)
    sigmas = torch.linspace(1.0, 0.0, args.sample_steps + 1, device=device)

    @torch.inference_mode()
    def sample() -> torch.Tensor:
        x = noise
        for i in range(args.sample_steps):
            t = sigmas[i].expand(batch) * 1000
            with torch.autocast(device.type, dtype=torch.bfloat16):
                v = model(hidden_states=x, timestep=t, encoder_hidden_states=context, return_dict=False)[0]
            x = x + (sigmas[i + 1] - sigmas[i]) * v
        return x

    time_it(sample, device, 1)
    times = time_it(sample, device, args.rollout_iters)
    sample_s = statistics.median(times)
    return {"rollout_batch": batch, "sample_steps": args.sample_steps, "sample_s": sample_s,
            "videos_per_s": batch / sample_s, "latent_frames_per_s": batch * spec["latent"][0] / sample_s,
            "forward_ms": 1e3 * sample_s / args.sample_steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="1b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5, help="timed learner steps")
    parser.add_argument("--sample-steps", type=int, default=20, help="denoising steps per rollout")
    parser.add_argument("--rollout-iters", type=int, default=2, help="timed rollouts")
    parser.add_argument("--out", help="write the JSON record here")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(2)
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
    args.device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    spec = SIZES[args.size]
    t0 = time.perf_counter()
    record = {"size": args.size, "device": args.device_name, "torch": torch.__version__,
              **bench_learner(spec, device, args)}
    if device.type == "cuda":
        torch.cuda.empty_cache()
    record.update(bench_rollout(spec, device, args))
    record["wall_s"] = time.perf_counter() - t0
    text = json.dumps(record, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
