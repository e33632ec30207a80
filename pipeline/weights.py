"""Versioned weight sync learner -> rollout workers; only the adapter weights when the policy has LoRA adapters.

The learner side builds a :class:`WeightsMessage` (:func:`weights_message`); :class:`WeightSync` sends it to every
worker of a pool (with Ray: one object-store copy per version, shared by all workers). The worker side applies it
with :func:`apply_message`, which ignores versions it already has, so a re-sent or late message is harmless.
A rollout role only needs a method (default ``set_weights``) that calls :func:`apply_message` on its model.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WeightsMessage:
    """Weights of one policy version: CPU tensors by state-dict key; ``adapter_only``: peft adapter keys only."""

    version: int
    tensors: dict[str, torch.Tensor]
    adapter_only: bool = False
    force: bool = False  # apply even when the worker holds a newer version (re-doing a step with its old weights)

    @property
    def num_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def __reduce__(self) -> tuple:
        """Travel as numpy arrays: Ray reads those from its object store without a copy (torch tensors it
        would unpickle into fresh memory on every worker). bf16 / fp8 go as same-width integers."""
        arrays = {k: (_as_numpy(t), str(t.dtype).removeprefix("torch.")) for k, t in self.tensors.items()}
        return (_rebuild, (self.version, arrays, self.adapter_only, self.force))


def _as_numpy(t: torch.Tensor) -> np.ndarray:
    try:
        return t.numpy()
    except TypeError:  # no numpy dtype (bfloat16, float8): reinterpret the bits
        return t.view({1: torch.uint8, 2: torch.int16}[t.element_size()]).numpy()


def _rebuild(version: int, arrays: dict[str, tuple[np.ndarray, str]], adapter_only: bool,
             force: bool) -> WeightsMessage:
    with warnings.catch_warnings():  # read-only object-store memory: loading copies it into the model anyway
        warnings.simplefilter("ignore", UserWarning)
        tensors = {k: torch.from_numpy(a).view(getattr(torch, dtype)) for k, (a, dtype) in arrays.items()}
    return WeightsMessage(version=version, tensors=tensors, adapter_only=adapter_only, force=force)


def has_adapters(model: nn.Module) -> bool:
    """True when ``model`` is a peft model (or holds one) with LoRA-style adapters."""
    return hasattr(model, "peft_config") or any(hasattr(m, "peft_config") for m in model.children())


def _peft_model(model: nn.Module) -> tuple[str, nn.Module]:
    """(state-dict key prefix, module) of the peft model in ``model`` (``""``, model if it is one itself)."""
    if hasattr(model, "peft_config"):
        return "", model
    return next((f"{name}.", m) for name, m in model.named_children() if hasattr(m, "peft_config"))


def weights_message(model: nn.Module, version: int, *, adapter_only: bool | None = None,
                    state: dict[str, torch.Tensor] | None = None) -> WeightsMessage:
    """The state to ship: adapter weights when the model has adapters (or ``adapter_only``), else all of it.

    ``state``: the model's full state dict when ``model.state_dict()`` does not give it (a sharded model's, gathered).
    """
    adapter_only = has_adapters(model) if adapter_only is None else adapter_only
    if adapter_only:
        from peft import get_peft_model_state_dict

        prefix, peft_model = _peft_model(model)
        if state is not None:
            state = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
        state = get_peft_model_state_dict(peft_model, state_dict=state)
    elif state is None:
        state = model.state_dict()
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}
    return WeightsMessage(version=version, tensors=tensors, adapter_only=adapter_only)


def apply_message(model: nn.Module, message: WeightsMessage, current_version: int) -> int:
    """Load ``message`` into ``model`` unless it is not newer than ``current_version`` (and not ``force``d);
    returns the version the model now holds."""
    if message.version <= current_version and not message.force:
        return current_version
    if message.adapter_only:
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(_peft_model(model)[1], message.tensors)
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise KeyError(f"adapter weights do not match the model: unexpected keys {unexpected[:3]}")
    else:
        model.load_state_dict(message.tensors)
    return message.version


class WeightSync:
    """Pushes versioned weights to every worker of a pool (``runtime`` LocalPool or RayPool) through ``method``."""

    def __init__(self, pool, *, method: str = "set_weights", keep: int = 3,  # noqa: ANN001 - a runtime pool
                 initial: WeightsMessage | None = None) -> None:
        self.pool = pool
        self.method = method
        self.version = 0
        self.last_seconds = 0.0
        self.last: WeightsMessage | None = None
        # the newest ``keep`` versions (and ``initial``: the workers' starting weights), for re-doing lost steps
        self.history: dict[int, WeightsMessage] = {} if initial is None else {initial.version: initial}
        self.keep = keep
        pool.restart_hooks.append(self.resend)

    def push(self, message: WeightsMessage, *, wait: bool = True) -> list[Any] | None:
        """Send ``message`` to all workers; returns the version each now holds. ``wait=False`` returns None at once:
        the pool's sender thread ships it, and each worker applies it after the calls already queued on it and
        before later ones. Times the round trip (``wait=False``: the driver's share only)."""
        t0 = time.perf_counter()
        versions = self.pool.broadcast(self.method, message, wait=wait)
        self.version, self.last = message.version, message
        self.history[message.version] = message
        for old in sorted(self.history)[:-self.keep]:
            del self.history[old]
        self.last_seconds = time.perf_counter() - t0
        log.debug("weights v%d (%.1f MB%s) synced in %.3f s", message.version, message.num_bytes / 1e6,
                  ", adapters" if message.adapter_only else "", self.last_seconds)
        return versions

    def resend(self, worker: int | None) -> None:
        """Give a restarted worker (None: every worker) the current weights again; up-to-date workers skip it."""
        if self.last is None:
            return
        log.warning("re-sending weights v%d to %s", self.last.version,
                    "every worker" if worker is None else f"restarted worker {worker}")
        if worker is None:
            self.pool.broadcast(self.method, self.last)
        else:
            self.pool.call_on(worker, self.method, self.last)

    def pin(self, version: int | None) -> None:
        """Put every worker at ``version``, even if they hold a newer one (to re-do a lost step exactly).

        Version 0 is the workers' starting weights: known only when given as ``initial``; else nothing is sent.
        """
        message = self.history.get(version or 0)
        if message is None:
            if version:
                raise KeyError(f"weights v{version} are no longer kept (keep={self.keep}); raise WeightSync.keep")
            return
        self.pool.broadcast(self.method, dataclasses.replace(message, force=True))
