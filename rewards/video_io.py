"""Validation of clips handed to the rewards and metrics (numpy uint8 clips and torch video batches).

Frames must be at least ``MIN_SIDE`` pixels on each side (OpenCV's DIS flow fails below 12 px).
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.errors import InputError

MIN_SIDE = 16


def check_clip(video: object, *, name: str = "video", min_frames: int = 3) -> np.ndarray:
    """Return ``video`` if it is a (T, H, W, 3) uint8 array with T >= ``min_frames`` and H, W >= ``MIN_SIDE``.

    Raises InputError naming ``name`` and the defect otherwise (never lets OpenCV/torch crash on it).
    """
    if not isinstance(video, np.ndarray):
        raise InputError(f"{name}: expected a numpy array (T, H, W, 3) uint8, got {type(video).__name__}")
    if video.ndim != 4 or video.shape[-1] != 3:
        raise InputError(f"{name}: expected shape (T, H, W, 3), got {video.shape}")
    if video.dtype != np.uint8:
        raise InputError(f"{name}: expected dtype uint8 (RGB 0..255), got {video.dtype}")
    frames, height, width = video.shape[:3]
    if frames < min_frames:
        raise InputError(f"{name}: needs at least {min_frames} frames, got {frames}")
    if min(height, width) < MIN_SIDE:
        raise InputError(f"{name}: frames must be at least {MIN_SIDE}x{MIN_SIDE} pixels, got {height}x{width}")
    return video


def check_video_batch(x: object, *, name: str = "video", min_frames: int = 3) -> torch.Tensor:
    """Return ``x`` if it is a finite float (B, T, 3, H, W) tensor with T >= ``min_frames``; else InputError."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise InputError(f"{name}: expected a float tensor (B, T, 3, H, W) in [-1, 1], got {type(x).__name__}")
    if x.ndim != 5 or x.shape[2] != 3:
        raise InputError(f"{name}: expected shape (B, T, 3, H, W), got {tuple(x.shape)}")
    if x.shape[1] < min_frames:
        raise InputError(f"{name}: needs at least {min_frames} frames, got {x.shape[1]}")
    if min(x.shape[3], x.shape[4]) < MIN_SIDE:
        raise InputError(f"{name}: frames must be at least {MIN_SIDE}x{MIN_SIDE} pixels, got {x.shape[3]}x{x.shape[4]}")
    if not bool(torch.isfinite(x).all()):
        raise InputError(f"{name}: contains NaN or infinite values")
    return x


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(B, T, 3, H, W) float in [-1, 1] -> (B, T, H, W, 3) uint8 (clamped, rounded)."""
    pixels = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.permute(0, 1, 3, 4, 2).cpu().numpy()


def to_unit(video: np.ndarray) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (1, T, 3, H, W) float32 in [-1, 1]."""
    return torch.from_numpy(video).permute(0, 3, 1, 2).float().div(127.5).sub(1).unsqueeze(0)
