"""``newtonrl pretrain``: supervised flow-matching training of the tiny video model = the SFT base.

Data: train-split scenes rendered on the fly (``envs.newton``; ~1 ms per clip), first ``context_frames`` frames
as the condition, the rest as the target. Loss: ``|| x_sigma - sigma v_theta(x_sigma, sigma) - x0 ||^2`` (the
clean-sample error = the velocity error times sigma^2) with ``x_sigma = (1 - sigma) x0 + sigma eps``,
sigma ~ U(0, 1). Saves EMA weights (safetensors, < 5 MB) plus ``loss.csv`` every ``--save-every`` seconds, so an
interrupted run still leaves a usable checkpoint.
"""

from __future__ import annotations

import argparse
import copy
import csv
import logging
import time
from pathlib import Path

import numpy as np
import torch

from envs.newton import render_clip, sample_spec
from pipeline.errors import ConfigError
from rollouts.models import TinyVideoConfig, VideoPolicy, build_tiny_policy, load_tiny_policy, save_tiny_policy
from rollouts.video import clips_to_conditions, uint8_to_float

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output directory (model.safetensors, config.json, loss.csv)")
    parser.add_argument("--minutes", type=float, default=None, help="wall-clock training budget, minutes (default: "
                        "10, or none when --steps is given)")
    parser.add_argument("--steps", type=int, default=None, help="stop after this many optimizer steps (with a fixed "
                        "--seed and --threads 1 the result is the same on every machine)")
    parser.add_argument("--init", default=None, help="continue from this checkpoint directory")
    parser.add_argument("--batch", type=int, default=16, help="clips per step")
    parser.add_argument("--lr", type=float, default=3e-4, help="AdamW learning rate")
    parser.add_argument("--ema", type=float, default=0.999, help="EMA decay of the saved weights")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-every", type=float, default=120.0, help="seconds between checkpoints")
    parser.add_argument("--resolution", type=int, default=32, help="square frame size, px")
    parser.add_argument("--frames", type=int, default=16, help="total frames per clip (context + generated)")


def make_batch(rng: np.random.Generator, batch: int, config: TinyVideoConfig, policy: VideoPolicy):
    """Render ``batch`` train-split clips -> (x0 in the model's sample space, Conditions)."""
    total = config.frames + config.context_frames
    specs = [sample_spec("train", rng, resolution=(config.height, config.width), num_frames=total)
             for _ in range(batch)]
    clips = [render_clip(s, seed=int(rng.integers(1 << 31))) for s in specs]
    cond = clips_to_conditions(clips, context_frames=config.context_frames).conditions()
    frames = uint8_to_float(np.stack([c.video[config.context_frames:] for c in clips]))
    return policy.to_sample(frames, cond), cond


def flow_matching_loss(policy: VideoPolicy, x0: torch.Tensor, cond, generator: torch.Generator) -> torch.Tensor:
    """Mean squared error of the implied clean sample ``x - sigma v`` at uniformly drawn sigma (= the velocity
    error weighted by sigma^2, which keeps low-noise levels from dominating)."""
    sigma = torch.rand(x0.shape[0], generator=generator).clamp(min=1e-3)
    noise = torch.randn(x0.shape, generator=generator)
    s = sigma.view(-1, 1, 1, 1, 1)
    x_t = (1 - s) * x0 + s * noise
    return torch.nn.functional.mse_loss(x_t - s * policy(x_t, sigma, cond), x0)


def _ema_update(ema: torch.nn.Module, net: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for pe, p in zip(ema.parameters(), net.parameters(), strict=True):
            pe.lerp_(p, 1 - decay)


def train(args: argparse.Namespace) -> dict:
    """Run the time-limited SFT loop; returns a summary dict."""
    minutes = args.minutes if args.minutes is not None else (float("inf") if args.steps else 10.0)
    if minutes <= 0 or args.batch < 1 or (args.steps is not None and args.steps < 1):
        raise ConfigError(f"--minutes = {args.minutes}, --batch = {args.batch}, --steps = {args.steps}: expected "
                          "positive values")
    torch.set_num_threads(args.threads)
    config = TinyVideoConfig(frames=args.frames - 4, height=args.resolution, width=args.resolution)
    policy = load_tiny_policy(args.init) if args.init else build_tiny_policy(config, seed=args.seed)
    config = policy.meta["config"]
    ema = copy.deepcopy(policy.net).requires_grad_(False)
    ema_policy = VideoPolicy(net=ema, meta=policy.meta)
    opt = torch.optim.AdamW(policy.net.parameters(), lr=args.lr, weight_decay=0.0)
    rng, gen = np.random.default_rng(args.seed), torch.Generator().manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start, last_save, step, rows = time.time(), time.time(), 0, []
    while time.time() - start < minutes * 60 and (args.steps is None or step < args.steps):
        x0, cond = make_batch(rng, args.batch, config, policy)
        for group in opt.param_groups:
            group["lr"] = args.lr * min(1.0, (step + 1) / 200)
        loss = flow_matching_loss(policy, x0, cond, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.net.parameters(), 1.0)
        opt.step()
        _ema_update(ema, policy.net, args.ema if step > 500 else 0.99)
        rows.append((step, round(time.time() - start, 2), loss.item()))
        step += 1
        if time.time() - last_save > args.save_every:
            _save(ema_policy, out, rows, step)
            last_save = time.time()
    _save(ema_policy, out, rows, step)
    tail = [r[2] for r in rows[-50:]]
    return {"steps": step, "seconds": time.time() - start, "final_loss": float(np.mean(tail)), "out": str(out)}


def _save(policy: VideoPolicy, out: Path, rows: list, step: int) -> None:
    save_tiny_policy(policy, out, extra={"pretrain_steps": step})
    with open(out / "loss.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["step", "seconds", "loss"])
        writer.writerows(rows)
    log.info("step %d: saved %s", step, out)


def main(args: argparse.Namespace) -> int:
    summary = train(args)
    log.info("pretrain done: %s", summary)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    _parser = argparse.ArgumentParser()
    add_arguments(_parser)
    raise SystemExit(main(_parser.parse_args()))
