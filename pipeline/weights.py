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


#: byte alignment of each tensor inside a message's flat buffer
ALIGN = 64


@dataclass(frozen=True)
class WeightsMessage:
    """Weights of one policy version: CPU tensors by state-dict key; ``adapter_only``: peft adapter keys only.

    ``flat``: one uint8 buffer that the tensors are views of (as :func:`weights_message` builds them), so the
    message travels as a single array: Ray puts one 4 MB buffer 2.5x faster than the same bytes as 8 arrays, and a
    worker reads it from the object store without a copy. A message built from loose tensors is packed when sent.
    """

    version: int
    tensors: dict[str, torch.Tensor]
    adapter_only: bool = False
    force: bool = False  # apply even when the worker holds a newer version (re-doing a step with its old weights)
    flat: torch.Tensor | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def num_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def __reduce__(self) -> tuple:
        flat = self.flat if self.flat is not None else pack_tensors(self.tensors)[0]
        layout = [(k, str(t.dtype).removeprefix("torch."), tuple(t.shape)) for k, t in self.tensors.items()]
        return (_rebuild, (self.version, flat.numpy(), layout, self.adapter_only, self.force))


def _offsets(sizes: list[int]) -> tuple[list[int], int]:
    """Byte offset of each of tensors of ``sizes`` bytes laid out in order at ``ALIGN``-byte boundaries; total."""
    offsets, total = [], 0
    for size in sizes:
        offsets.append(total)
        total += -(-size // ALIGN) * ALIGN
    return offsets, total


def pack_tensors(state: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Detached CPU copies of ``state`` laid out in one flat uint8 buffer (:func:`_offsets`): (buffer, views of
    it by key, in the dtypes and shapes of ``state``)."""
    offsets, total = _offsets([v.numel() * v.element_size() for v in state.values()])
    flat = torch.empty(total, dtype=torch.uint8)
    views = {}
    for (key, value), offset in zip(state.items(), offsets, strict=True):
        views[key] = _typed_view(flat, offset, value.dtype, tuple(value.shape))
        views[key].copy_(value.detach())
    return flat, views


def _nbytes(dtype: torch.dtype, shape: tuple[int, ...]) -> int:
    return int(np.prod(shape, dtype=np.int64)) * torch.empty((), dtype=dtype).element_size()


def _typed_view(flat: torch.Tensor, offset: int, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    """The tensor of ``dtype`` and ``shape`` stored in ``flat`` (uint8) from byte ``offset``."""
    return flat[offset:offset + _nbytes(dtype, shape)].view(dtype).view(shape)


def _rebuild(version: int, flat: np.ndarray, layout: list[tuple[str, str, tuple[int, ...]]], adapter_only: bool,
             force: bool) -> WeightsMessage:
    with warnings.catch_warnings():  # read-only object-store memory: loading copies it into the model anyway
        warnings.simplefilter("ignore", UserWarning)
        buffer = torch.from_numpy(flat)
    dtypes = [getattr(torch, dtype) for _, dtype, _ in layout]
    offsets, _ = _offsets([_nbytes(dtype, shape) for dtype, (_, _, shape) in zip(dtypes, layout, strict=True)])
    tensors = {k: _typed_view(buffer, offset, dtype, shape)
               for (k, _, shape), dtype, offset in zip(layout, dtypes, offsets, strict=True)}
    return WeightsMessage(version=version, tensors=tensors, adapter_only=adapter_only, force=force, flat=buffer)


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
    flat, tensors = pack_tensors(state)
    return WeightsMessage(version=version, tensors=tensors, adapter_only=adapter_only, flat=flat)


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
