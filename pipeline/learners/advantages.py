"""Group-relative advantages (GRPO / DanceGRPO / Flow-GRPO) for several named rewards.

Samples that share a condition form a group (ids in ``groups``, shape (B,)). With ``mode='weighted_sum'`` the
rewards are first combined ``r = sum_i w_i r_i`` and then normalised within each group,
``A = (r - mean_group(r)) / (std_group(r) + eps)``; with ``mode='per_reward'`` every reward is normalised within
its groups first and the normalised values are combined with the weights (so a reward with a large scale cannot
drown the others). Advantages are finally clipped to ``[-clip, clip]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from pipeline.errors import ConfigError

AdvantageMode = Literal["weighted_sum", "per_reward"]


@dataclass(frozen=True)
class AdvantageConfig:
    """``weights``: reward name -> weight (rewards not named get weight 0); ``mode``: see module doc;
    ``clip``: |A| bound (DDPO uses 5); ``eps``: added to the group std; ``std``: 'group' normalises by each
    group's std, 'none' only subtracts the group mean (Dr. GRPO style)."""

    weights: Mapping[str, float]
    mode: AdvantageMode = "weighted_sum"
    clip: float = 5.0
    eps: float = 1e-4
    std: Literal["group", "none"] = "group"

    def validate(self) -> None:
        if self.mode not in ("weighted_sum", "per_reward"):
            raise ConfigError(f"advantages.mode = {self.mode!r}: expected 'weighted_sum' or 'per_reward'")
        if self.std not in ("group", "none"):
            raise ConfigError(f"advantages.std = {self.std!r}: expected 'group' or 'none'")
        if self.clip <= 0 or not self.weights:
            raise ConfigError(f"advantages.clip = {self.clip}, advantages.weights = {dict(self.weights)}: expected "
                              "clip > 0 and at least one weighted reward")


def check_groups(groups: np.ndarray) -> None:
    """Every group must hold at least 2 samples (a group of 1 has no relative advantage)."""
    _, counts = np.unique(groups, return_counts=True)
    if counts.min() < 2:
        raise ConfigError(f"grpo.group_size = {int(counts.min())}: group-relative advantages need at least 2 "
                          "samples per condition; set grpo.group_size >= 2")


def normalise_in_groups(values: np.ndarray, groups: np.ndarray, *, eps: float = 1e-4, std: str = "group"
                        ) -> np.ndarray:
    """(B,) values, (B,) group ids -> (B,) values minus their group mean, divided by the group std (+ eps)."""
    check_groups(groups)
    values = np.asarray(values, dtype=np.float64)
    out = np.empty_like(values)
    for g in np.unique(groups):
        idx = groups == g
        centred = values[idx] - values[idx].mean()
        out[idx] = centred / (values[idx].std() + eps) if std == "group" else centred
    return out


def compute_advantages(rewards: Mapping[str, np.ndarray], groups: np.ndarray, config: AdvantageConfig
                       ) -> np.ndarray:
    """Named rewards, each (B,), higher is better -> (B,) float32 advantages."""
    config.validate()
    missing = sorted(set(config.weights) - set(rewards))
    if missing:
        raise ConfigError(f"advantages.weights names rewards {missing} that the scorer does not produce "
                          f"(available: {sorted(rewards)})")
    norm = {"eps": config.eps, "std": config.std}
    if config.mode == "weighted_sum":
        total = sum(w * np.asarray(rewards[k], dtype=np.float64) for k, w in config.weights.items())
        adv = normalise_in_groups(total, groups, **norm)
    else:
        adv = sum(w * normalise_in_groups(rewards[k], groups, **norm) for k, w in config.weights.items())
    return np.clip(adv, -config.clip, config.clip).astype(np.float32)
