"""Learner group: data-parallel learner replicas in a torch.distributed group (Ray actors), or one in-process.

Each learner process builds its replica from a picklable ``factory() -> Learner`` (a model, an optimizer, an
optional scheduler and a loss), joins the process group (gloo on CPU, NCCL on GPU) through accelerate, which also
wraps the model (DDP, or FSDP with ``learner_strategy: fsdp``), casts under ``mixed_precision`` and accumulates
gradients over the micro-batches it is given. Gradients are averaged across replicas, so after every update all
replicas hold the same weights. ``num_learners: 0`` runs one replica in the driver process (same code path, easy to
debug). Shutdown deletes model and optimizer and collects garbage before destroying the process group (gloo on
torch 2.13 can otherwise abort at exit).
"""

from __future__ import annotations

import gc
import logging
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from pipeline.checkpoint import restore_training_state, training_state
from pipeline.config import RuntimeSection
from pipeline.errors import ConfigError
from pipeline.weights import WeightsMessage, weights_message

log = logging.getLogger(__name__)


class Learner(Protocol):
    """A learner replica as the factory builds it (plain attributes; no distributed code)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any  # an LR scheduler or None

    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar loss of one micro-batch through ``model`` (the wrapped replica) and metrics to report."""


@dataclass(frozen=True)
class LearnerSettings:
    """What every replica needs besides its factory (from the ``runtime`` config section)."""

    strategy: str = "ddp"  # ddp | fsdp
    mixed_precision: str = "no"  # no | bf16 | fp16
    grad_accumulation: int = 1  # micro-batches per optimizer step
    max_grad_norm: float | None = None  # clip the global gradient norm (None: no clipping)
    use_gpu: bool = False  # NCCL and cuda:0 (Ray gives each actor its own visible GPU); else gloo on CPU
    threads: int = 1  # torch CPU threads per learner process

    @classmethod
    def from_runtime(cls, runtime: RuntimeSection, **overrides: Any) -> LearnerSettings:
        return cls(strategy=runtime.learner_strategy, mixed_precision=runtime.mixed_precision,
                   grad_accumulation=runtime.grad_accumulation, use_gpu=runtime.gpus_per_learner > 0, **overrides)


def free_address() -> tuple[str, int]:
    """This node's IP and a free TCP port (for the process-group rendezvous on rank 0's node)."""
    with socket.socket() as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    try:
        import ray

        ip = ray.util.get_node_ip_address() if ray.is_initialized() else "127.0.0.1"
    except ImportError:  # pragma: no cover - ray is a dependency
        ip = "127.0.0.1"
    return ip, port


class LearnerWorker:
    """One replica: builds the learner, joins the group (``world_size > 1``), runs updates (a plain class)."""

    def __init__(self, factory: Callable[[], Learner], settings: LearnerSettings, *, rank: int = 0,
                 world_size: int = 1, worker_index: int = 0) -> None:
        self.factory, self.settings = factory, settings
        self.rank, self.world_size = rank, world_size
        torch.set_num_threads(settings.threads)

    def address(self) -> tuple[str, int]:
        return free_address()

    def setup(self, master: tuple[str, int] | None = None) -> int:
        """Join the process group at ``master`` (all ranks call this together) and build the replica."""
        from accelerate import Accelerator

        if self.world_size > 1:
            os.environ.update(RANK=str(self.rank), WORLD_SIZE=str(self.world_size), LOCAL_RANK="0",
                              LOCAL_WORLD_SIZE="1", MASTER_ADDR=master[0], MASTER_PORT=str(master[1]))
        kwargs: dict[str, Any] = {}
        if self.settings.strategy == "fsdp":
            if not self.settings.use_gpu:
                raise ConfigError("runtime.learner_strategy=fsdp needs GPU learners (runtime.gpus_per_learner > 0); "
                                  "use ddp on CPU")
            from accelerate import FullyShardedDataParallelPlugin

            kwargs["fsdp_plugin"] = FullyShardedDataParallelPlugin()
        self.accelerator = Accelerator(cpu=not self.settings.use_gpu, mixed_precision=self.settings.mixed_precision,
                                       gradient_accumulation_steps=self.settings.grad_accumulation, **kwargs)
        self.learner = self.factory()
        parts = [self.learner.model, self.learner.optimizer]
        if self.learner.scheduler is not None:
            parts.append(self.learner.scheduler)
        prepared = self.accelerator.prepare(*parts)
        self.model, self.optimizer = prepared[0], prepared[1]
        self.scheduler = prepared[2] if len(prepared) > 2 else None
        return self.accelerator.process_index

    def update(self, micro_batches: Sequence[Any]) -> dict[str, float]:
        """Forward/backward every micro-batch; the optimizer steps once per ``grad_accumulation`` of them.

        Gradients are averaged over replicas on the synchronising micro-batch. Returns the mean of each metric over
        the micro-batches that report it (``grad_norm``: the optimizer steps), on this rank.
        """
        acc, totals, counts = self.accelerator, {}, {}
        self.model.train()
        for batch in micro_batches:
            with acc.accumulate(self.model):
                with acc.autocast():
                    loss, metrics = self.learner.loss(self.model, batch)
                acc.backward(loss)
                if acc.sync_gradients and self.settings.max_grad_norm is not None:
                    metrics["grad_norm"] = float(acc.clip_grad_norm_(self.model.parameters(),
                                                                     self.settings.max_grad_norm))
                self.optimizer.step()
                if self.scheduler is not None:
                    self.scheduler.step()
                self.optimizer.zero_grad()
            for key, value in {"loss": float(loss.detach()), **metrics}.items():
                totals[key] = totals.get(key, 0.0) + float(value)
                counts[key] = counts.get(key, 0) + 1
        return {key: total / counts[key] for key, total in totals.items()}

    def unwrapped(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.model)

    def weights(self, version: int, adapter_only: bool | None = None) -> WeightsMessage:
        """The replica's weights as a versioned message (adapters only for a LoRA policy)."""
        return weights_message(self.unwrapped(), version, adapter_only=adapter_only)

    def state(self) -> dict[str, Any]:
        """Model / optimizer / scheduler state and RNG states for a checkpoint."""
        return training_state(model=self.unwrapped(), optimizer=self.learner.optimizer,
                              scheduler=self.learner.scheduler)

    def load_state(self, state: dict[str, Any]) -> None:
        restore_training_state(state, model=self.unwrapped(), optimizer=self.learner.optimizer,
                               scheduler=self.learner.scheduler)

    def shutdown(self) -> None:
        """Free model and optimizer, then leave the process group (in that order: see the module doc)."""
        import torch.distributed as dist
        from accelerate.state import AcceleratorState

        for name in ("model", "optimizer", "scheduler", "learner", "accelerator"):
            self.__dict__.pop(name, None)
        gc.collect()
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
        AcceleratorState._reset_state(reset_partial_state=True)  # a process-wide singleton: free it for the next group


class LearnerGroup:
    """``runtime.num_learners`` replicas as Ray actors in one process group, or one in-process (0)."""

    def __init__(self, factory: Callable[[], Learner], runtime: RuntimeSection, *,
                 settings: LearnerSettings | None = None, placement: Any = None) -> None:
        self.settings = settings or LearnerSettings.from_runtime(runtime)
        n = runtime.num_learners
        self.local: LearnerWorker | None = None
        self.actors: list[Any] = []
        if n == 0:
            self.local = LearnerWorker(factory, self.settings)
            self.local.setup()
            return
        import ray

        from pipeline.runtime import role_resources

        res = role_resources(runtime)["learner"]
        remote = ray.remote(LearnerWorker)
        for rank in range(n):
            opts = placement.options("learner", rank) if placement else {"num_cpus": res.num_cpus,
                                                                          "num_gpus": res.num_gpus}
            self.actors.append(remote.options(**opts).remote(factory, self.settings, rank=rank, world_size=n))
        master = ray.get(self.actors[0].address.remote())
        ray.get([a.setup.remote(master) for a in self.actors])  # all ranks rendezvous together
        log.info("learner group: %d replicas (%s, %s, mixed precision %s)", n, self.settings.strategy,
                 "nccl" if self.settings.use_gpu else "gloo", self.settings.mixed_precision)

    @property
    def num_replicas(self) -> int:
        return len(self.actors) or 1

    def _all(self, method: str, per_rank: Sequence[tuple] | None = None) -> list[Any]:
        calls = per_rank or [()] * self.num_replicas
        if self.local is not None:
            return [getattr(self.local, method)(*calls[0])]
        import ray

        return ray.get([getattr(a, method).remote(*c) for a, c in zip(self.actors, calls)])

    def update(self, shards: Sequence[Sequence[Any]]) -> dict[str, float]:
        """One update: ``shards[r]`` are the micro-batches of replica r (same count everywhere, a multiple of
        ``grad_accumulation`` so that no partial accumulation leaks into the next update; equal sizes for an exact
        data-parallel mean). Returns the metrics averaged over replicas."""
        lengths = {len(s) for s in shards}
        if len(shards) != self.num_replicas or len(lengths) != 1 or lengths.pop() % self.settings.grad_accumulation:
            raise ValueError(f"expected {self.num_replicas} shards of equal length, a multiple of grad_accumulation="
                             f"{self.settings.grad_accumulation}; got {[len(s) for s in shards]}")
        per_rank = self._all("update", [(s,) for s in shards])
        return {k: sum(m[k] for m in per_rank) / len(per_rank) for k in per_rank[0]}

    def weights(self, version: int, adapter_only: bool | None = None) -> WeightsMessage:
        """Rank 0's weights as a versioned message for :class:`pipeline.weights.WeightSync`."""
        if self.local is not None:
            return self.local.weights(version, adapter_only)
        import ray

        return ray.get(self.actors[0].weights.remote(version, adapter_only))

    def replica_weights(self) -> list[dict[str, torch.Tensor]]:
        """Every replica's full state dict (to check that they agree)."""
        return [m.tensors for m in self._all("weights", [(0, False)] * self.num_replicas)]

    def state(self) -> dict[str, Any]:
        """Checkpoint state of rank 0 (all replicas are equal after an update)."""
        return self._all("state")[0]

    def load_state(self, state: dict[str, Any]) -> None:
        self._all("load_state", [(state,)] * self.num_replicas)

    def shutdown(self) -> None:
        """Leave the process group cleanly on every replica, then end the actors."""
        self._all("shutdown")
        if self.actors:
            import ray

            for actor in self.actors:
                ray.kill(actor)
        self.actors, self.local = [], None


def split(items: Sequence[Any], parts: int) -> list[list[Any]]:
    """``items`` dealt into ``parts`` contiguous, near-equal shards (larger ones first)."""
    sizes = [len(items) // parts + (1 if i < len(items) % parts else 0) for i in range(parts)]
    starts = [sum(sizes[:i]) for i in range(parts)]
    return [list(items[s : s + n]) for s, n in zip(starts, sizes)]
