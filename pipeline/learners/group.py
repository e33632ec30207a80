"""A video learner run by a :class:`pipeline.learner_group.LearnerGroup` (data-parallel replicas).

The driver keeps the learner's planner. Each update it shards the batch over the replicas in whole groups of equal
size, plans every shard's micro-batches (all of the update's randomness is drawn here, in the driver) and hands the
plans to the group, whose replicas run ``loss(model, micro_batch)`` with gradients averaged across them. Rank 0's
weights go out as a versioned :class:`pipeline.weights.WeightsMessage`; the driver's copy of the policy
(:attr:`GroupLearner.policy`, for saving and evaluation) loads the newest of them when it is read, not every
update. Checkpoint state has the layout of the in-process learner (``model``, ``optimizer``, ``learner``), so a
run may resume with another number of learners.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from pipeline.errors import InputError
from pipeline.learner_group import LearnerGroup
from pipeline.weights import WeightsMessage, apply_message
from rollouts.models import VideoPolicy
from rollouts.video import shard_by_group


class Planner(Protocol):
    """Plans one replica's micro-batches and owns the randomness of updates (e.g. :class:`GRPOPlanner`)."""

    def plan(self, batch: Any, minibatch: int) -> list[Any]: ...

    def state(self) -> dict[str, Any]: ...

    def load_state(self, state: dict[str, Any]) -> None: ...


class GroupLearner:
    """Learner role over a learner group: ``update(batch)``, ``weights(version)``, ``state()`` / ``load_state()``.

    ``minibatch``: rows per micro-batch on each replica; ``policy``: the driver's copy of the policy (version 0).
    """

    def __init__(self, group: LearnerGroup, planner: Planner, *, policy: VideoPolicy, minibatch: int) -> None:
        self.group, self.planner, self._policy, self.minibatch = group, planner, policy, minibatch
        self.version = 0
        self._held = 0  # weights version loaded into ``_policy``
        self._newest: WeightsMessage | None = None  # sent to the rollouts, not yet loaded into ``_policy``

    @property
    def policy(self) -> VideoPolicy:
        """The driver's copy of the policy at the newest weights handed out by :meth:`weights`."""
        self._load_newest()
        return self._policy

    @property
    def held(self) -> int:
        """Weights version of :attr:`policy`."""
        self._load_newest()
        return self._held

    def _load_newest(self) -> None:
        if self._newest is not None:
            self._held, self._newest = apply_message(self._policy.net, self._newest, self._held), None

    def update(self, batch: Any) -> dict[str, float]:
        """One update over ``batch`` (rows with ``groups`` and ``take``); returns metrics averaged over replicas."""
        shards = shard_by_group(np.asarray(batch.groups), self.group.num_replicas)
        if len(shards) != self.group.num_replicas or len({len(s) for s in shards}) != 1:
            raise InputError(f"{len(batch)} rows in groups {np.unique(batch.groups).tolist()} do not split into "
                             f"{self.group.num_replicas} equal shards of whole groups")
        metrics = self.group.update([self.planner.plan(batch.take(idx), self.minibatch) for idx in shards])
        self.version += 1
        return metrics

    def weights(self, version: int) -> WeightsMessage:
        """Rank 0's weights as message ``version`` (the driver's :attr:`policy` holds them when next read)."""
        message = self.group.weights(version)
        if self._newest is None or message.version > self._newest.version:
            self._newest = message
        return message

    def state(self) -> dict[str, Any]:
        """``model`` / ``optimizer`` of rank 0 and the planner's generators (``learner``) for a checkpoint."""
        state = self.group.state()
        return {"model": state["model"], "optimizer": state["optimizer"],
                "learner": {**self.planner.state(), "version": self.version}}

    def load_state(self, state: dict[str, Any]) -> None:
        """Load what :meth:`state` (or the in-process learner's ``state``) returned into every replica."""
        self.group.load_state({"model": state["model"], "optimizer": state["optimizer"]})
        self.planner.load_state(state["learner"])
        self.version = int(state["learner"]["version"])

    def close(self) -> None:
        """Leave the process group and end the replicas."""
        self.group.shutdown()
