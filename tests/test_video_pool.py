"""Video rollouts sharded over a pool of workers: whole groups per worker, rows back in order."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.config import RuntimeSection
from pipeline.video_track import build_roles, make_conditions, parse_video_section
from rollouts.video import shard_by_group


def test_shard_by_group_keeps_groups_whole_and_order():
    groups = np.repeat(np.arange(5), 3)
    shards = shard_by_group(groups, 2)
    assert [len(s) for s in shards] == [9, 6]
    np.testing.assert_array_equal(np.concatenate(shards), np.arange(15))
    assert len(shard_by_group(np.array([0, 0]), 4)) == 1  # never more shards than groups


def test_pooled_rollout_over_two_workers_returns_the_whole_batch_in_order():
    torch.set_num_threads(1)
    cfg = parse_video_section({"data": {"conditions_per_iteration": 3, "group_size": 2},
                               "sampler": {"num_steps": 3, "window": [0, 2]}})
    rollout, scorer, _ = build_roles(cfg, runtime=RuntimeSection(use_ray=False, num_rollout_workers=2))
    assert len(rollout.pool.workers) == 2
    conditions = make_conditions("train", 3, np.random.default_rng(0), resolution=cfg.data.resolution,
                                 num_frames=cfg.data.num_frames).repeat(2)
    batch = rollout.sample(conditions, 0)
    assert len(batch) == 6 and batch.log_probs.shape[0] == 6 and batch.latents.shape[0] == 6
    np.testing.assert_array_equal(batch.groups, conditions.groups)
    # every generated clip starts with the context of its own condition row
    np.testing.assert_array_equal(batch.videos[:, :4], conditions.context)
    assert set(scorer.score(batch.videos, batch.conditions.reference)) == {"kinematic", "mass"}
