"""What the video learners share: their policy's weights (as a dict or a versioned message) and checkpoint state."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor, nn

from pipeline.checkpoint import restore_training_state, training_state
from pipeline.weights import WeightsMessage, weights_message
from rollouts.models import VideoPolicy


class VideoLearner:
    """Base of the video learner roles (also :class:`pipeline.learner_group.Learner` replicas: ``model``,
    ``optimizer``, ``scheduler``). Subclasses set ``policy``, ``optimizer``, ``version`` and say which generators
    a checkpoint carries (:meth:`generator_state`, :meth:`load_generator_state`)."""

    policy: VideoPolicy
    optimizer: torch.optim.Optimizer
    version: int
    scheduler = None

    @property
    def model(self) -> nn.Module:
        return self.policy.net

    def get_weights(self) -> dict[str, Tensor]:
        return self.policy.get_weights()

    def set_weights(self, weights: dict[str, Tensor]) -> None:
        self.policy.set_weights(weights)

    def _through(self, net: nn.Module | None) -> VideoPolicy:
        """The policy evaluated through ``net`` (e.g. its DDP wrapper; None: the policy itself)."""
        return self.policy if net is None or net is self.policy.net else dataclasses.replace(self.policy, net=net)

    def weights(self, version: int) -> WeightsMessage:
        """The policy's weights as a versioned message for the rollout workers (adapters only for LoRA)."""
        return weights_message(self.model, version)

    def generator_state(self) -> dict[str, Any]:
        raise NotImplementedError

    def load_generator_state(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        """``model`` / ``optimizer`` state dicts, the learner's generators and update count (``learner``)."""
        return training_state(model=self.model, optimizer=self.optimizer, rng=False,
                              learner={**self.generator_state(), "version": self.version})

    def load_state(self, state: dict[str, Any]) -> None:
        """Load what :meth:`state` returned."""
        restore_training_state({k: state[k] for k in ("model", "optimizer")}, model=self.model,
                               optimizer=self.optimizer)
        self.load_generator_state(state["learner"])
        self.version = int(state["learner"]["version"])
