"""Video rollouts: clips <-> tensors, and the rollout worker role that samples with per-step log-probs.

Tensor conventions: video batches are (B, T, 3, H, W) float in [-1, 1]; clips at the edges are (T, H, W, 3)
uint8. A scene clip of ``T_total`` frames is split into ``context`` (its first Tc frames, the condition) and the
``T_total - Tc`` future frames the model generates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from envs.newton import PRIMITIVES
from rollouts.models import Conditions, VideoPolicy


def uint8_to_float(video: np.ndarray) -> Tensor:
    """(..., T, H, W, 3) uint8 -> (..., T, 3, H, W) float32 in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(video)).float() / 127.5 - 1.0
    return x.movedim(-1, -3)


def float_to_uint8(video: Tensor) -> np.ndarray:
    """(..., T, 3, H, W) float in [-1, 1] -> (..., T, H, W, 3) uint8."""
    x = ((video.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return x.movedim(-3, -1).cpu().numpy()


def primitive_label(primitive: str) -> int:
    return PRIMITIVES.index(primitive)


@dataclass
class ConditionBatch:
    """Conditions of B scenes as plain data: ``context`` (B, Tc, H, W, 3) uint8, ``labels`` (B,) int64,
    ``reference`` (B, T_total, H, W, 3) uint8 ground-truth clips (for rewards/metrics), ``specs``: scene dicts."""

    context: np.ndarray
    labels: np.ndarray
    reference: np.ndarray
    specs: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def conditions(self) -> Conditions:
        return Conditions(context=uint8_to_float(self.context), labels=torch.from_numpy(self.labels).long())

    def repeat(self, k: int) -> ConditionBatch:
        """Each scene repeated k times consecutively: B -> B * k (GRPO groups)."""
        return ConditionBatch(np.repeat(self.context, k, 0), np.repeat(self.labels, k, 0),
                              np.repeat(self.reference, k, 0), [s for s in self.specs for _ in range(k)])


def clips_to_conditions(clips: Sequence, *, context_frames: int = 4) -> ConditionBatch:
    """Rendered clips (``envs.newton.Clip``) -> a ConditionBatch."""
    video = np.stack([c.video for c in clips])
    return ConditionBatch(
        context=video[:, :context_frames],
        labels=np.array([primitive_label(c.spec.primitive) for c in clips], dtype=np.int64),
        reference=video,
        specs=[c.spec.to_dict() for c in clips],
    )


def model_fn(policy: VideoPolicy, cond: Conditions):
    """Adapter for :func:`rollouts.samplers.sample_with_window`: (x, level_batch, step) -> model output."""
    def fn(x: Tensor, level: Tensor, _step: int) -> Tensor:
        return policy(x, level, cond)
    return fn
