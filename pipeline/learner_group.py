"""Learner group: data-parallel learner replicas in a torch.distributed group (Ray actors), or one in-process.

Each learner process builds its replica from a picklable ``factory() -> Learner`` (a model, an optimizer, an
optional scheduler and a loss) and joins the process group (gloo on CPU, NCCL on GPU) through accelerate, which also
casts under ``mixed_precision`` (autocast; weights, gradients and optimizer state stay fp32) and accumulates gradients
over the micro-batches it is given. Gradients are averaged across replicas, so after every update all replicas hold
the same weights. ``num_learners: 0`` runs one replica in the driver process (same code path, easy to debug).

``learner_strategy: ddp``: accelerate wraps the model in DDP; every replica holds all weights and optimizer state.
``learner_strategy: fsdp`` (more than one learner): torch FSDP2 (``fully_shard``), the same code on CPU / gloo and GPU
/ NCCL, shards every element of an ``nn.ModuleList`` (transformer / UNet blocks, innermost first) and then the root,
so each replica holds a 1/world_size slice of every weight, gradient and optimizer state. Gradients are
reduce-scattered on every micro-batch (they stay sharded during accumulation). The factory's optimizer is pointed at
the sharded parameters in place (class, param-group settings and a scheduler bound to it are kept); accelerate still
skips its steps on accumulating micro-batches and clips the global gradient norm. Weights and checkpoint state are
gathered into the full, unsharded layout of the DDP replica (a collective: :class:`LearnerGroup` calls every rank and
keeps rank 0's), so checkpoints move freely between strategies and numbers of learners. With one learner there is
nothing to shard over and ``fsdp`` is a plain replica.

Shutdown deletes model and optimizer and collects garbage before destroying the process group (gloo on torch 2.13 can
otherwise abort at exit).
"""

from __future__ import annotations

import gc
import logging
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from pipeline.checkpoint import restore_training_state, training_state
from pipeline.config import RuntimeSection
from pipeline.weights import WeightsMessage, weights_message

if TYPE_CHECKING:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

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


def shard(model: nn.Module, optimizer: torch.optim.Optimizer, device: str) -> None:
    """FSDP2 in place over all ranks: ``fully_shard`` every element of an ``nn.ModuleList`` that has parameters
    (nested lists innermost first), then the root; ``optimizer`` is pointed at the new (DTensor) parameters by name.

    The optimizer object itself is kept (not rebuilt) so that constructor-only settings and a scheduler bound to it
    stay valid; its state must still be empty (load checkpoints with ``load_state`` after ``setup``).
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if optimizer.state:
        raise ValueError("the learner factory's optimizer already has state; load a checkpoint after setup instead")
    mesh = init_device_mesh(device, (torch.distributed.get_world_size(),))
    names = {param: name for name, param in model.named_parameters()}
    blocks = dict.fromkeys(b for m in model.modules() if isinstance(m, nn.ModuleList) for b in m
                           if next(b.parameters(), None) is not None)  # pre-order: an outer block before its inner
    for block in reversed(blocks):
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    sharded = dict(model.named_parameters())
    for group in optimizer.param_groups:  # parameters outside the model stay as they are (as with DDP)
        group["params"] = [sharded[names[p]] if p in names else p for p in group["params"]]


def _full(**options: bool) -> StateDictOptions:
    """``StateDictOptions`` for the full (unsharded) layout; ``cpu_offload``: only rank 0 gets it, on the CPU."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **options)


def _rekey(state: dict[str, Any], key: Mapping[Any, Any] | Sequence[Any]) -> dict[str, Any]:
    """An optimizer state dict with every parameter key ``k`` (in ``state`` and ``param_groups``) replaced by
    ``key[k]``: between ``Optimizer.state_dict()``'s indices and torch.distributed.checkpoint's parameter names."""
    return {"state": {key[k]: value for k, value in state["state"].items()},
            "param_groups": [{**g, "params": [key[k] for k in g["params"]]} for g in state["param_groups"]]}


class LearnerWorker:
    """One replica: builds the learner, joins the group (``world_size > 1``), runs updates (a plain class)."""

    def __init__(self, factory: Callable[[], Learner], settings: LearnerSettings, *, rank: int = 0,
                 world_size: int = 1, worker_index: int = 0) -> None:
        self.factory, self.settings = factory, settings
        self.rank, self.world_size = rank, world_size
        self.sharded = settings.strategy == "fsdp" and world_size > 1
        torch.set_num_threads(settings.threads)

    def address(self) -> tuple[str, int]:
        return free_address()

    def setup(self, master: tuple[str, int] | None = None) -> int:
        """Join the process group at ``master`` (all ranks call this together) and build the replica."""
        from accelerate import Accelerator

        if self.world_size > 1:
            os.environ.update(RANK=str(self.rank), WORLD_SIZE=str(self.world_size), LOCAL_RANK="0",
                              LOCAL_WORLD_SIZE="1", MASTER_ADDR=master[0], MASTER_PORT=str(master[1]))
        self.accelerator = Accelerator(cpu=not self.settings.use_gpu, mixed_precision=self.settings.mixed_precision,
                                       gradient_accumulation_steps=self.settings.grad_accumulation)
        self.learner = self.factory()
        if self.sharded:  # accelerate prepares the optimizer only: its steps are skipped while accumulating
            shard(self.learner.model, self.learner.optimizer, "cuda" if self.settings.use_gpu else "cpu")
            self.model = self.learner.model
        else:
            self.model = self.accelerator.prepare_model(self.learner.model)
        self.optimizer = self.accelerator.prepare_optimizer(self.learner.optimizer)
        self.scheduler = (None if self.learner.scheduler is None
                          else self.accelerator.prepare_scheduler(self.learner.scheduler))
        return self.accelerator.process_index

    def update(self, micro_batches: Sequence[Any]) -> dict[str, float]:
        """Forward/backward every micro-batch; the optimizer steps once per ``grad_accumulation`` of them.

        Gradients are averaged over replicas on the synchronising micro-batch (fsdp: reduce-scattered on every one).
        Returns the mean of each metric over the micro-batches that report it (``grad_norm``: the optimizer steps), on
        this rank.
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

    def weights(self, version: int, adapter_only: bool | None = None,
                every_rank: bool = False) -> WeightsMessage | None:
        """The replica's weights as a versioned message (adapters only for a LoRA policy).

        Sharded: a collective (every rank calls it) that gathers the full weights on rank 0 (None on the others), or
        on ``every_rank``.
        """
        if not self.sharded:
            return weights_message(self.unwrapped(), version, adapter_only=adapter_only)
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        state = get_model_state_dict(self.model, options=_full(cpu_offload=not every_rank))
        if self.rank and not every_rank:
            return None
        return weights_message(self.model, version, adapter_only=adapter_only, state=state)

    def state(self) -> dict[str, Any] | None:
        """Model / optimizer / scheduler state and RNG states for a checkpoint (the full layout; sharded: a
        collective, None on ranks other than 0)."""
        if not self.sharded:
            return training_state(model=self.unwrapped(), optimizer=self.learner.optimizer,
                                  scheduler=self.learner.scheduler)
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

        model = get_model_state_dict(self.model, options=_full(cpu_offload=True))
        optimizer = self.learner.optimizer
        # an empty state (not stepped yet, or stateless like plain SGD) has nothing sharded to gather, and torch
        # would first fill it with a zero-lr step (which moves Adam's step count)
        named = get_optimizer_state_dict(self.model, optimizer, options=_full(cpu_offload=True)) \
            if optimizer.state else None
        if self.rank:
            return None
        optimizer_state = optimizer.state_dict() if named is None else _rekey(named, {
            name: i for i, name in enumerate(chain.from_iterable(g["params"] for g in named["param_groups"]))})
        return {**training_state(scheduler=self.learner.scheduler), "model": model, "optimizer": optimizer_state}

    def load_state(self, state: dict[str, Any]) -> None:
        """Load what :meth:`state` returned (from any strategy; sharded: a collective, every rank given all of it)."""
        if not self.sharded:
            restore_training_state(state, model=self.unwrapped(), optimizer=self.learner.optimizer,
                                   scheduler=self.learner.scheduler)
            return
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

        set_model_state_dict(self.model, state["model"], options=_full())
        optimizer, saved = self.learner.optimizer, state["optimizer"]
        if saved["state"]:  # parameter indices -> names, the layout torch shards from
            names = {param: name for name, param in self.model.named_parameters()}
            order = [names[p] for p in chain.from_iterable(g["params"] for g in optimizer.param_groups)]
            set_optimizer_state_dict(self.model, optimizer, _rekey(saved, order), options=_full())
        else:  # no tensors to shard
            optimizer.load_state_dict(saved)
        restore_training_state(state, scheduler=self.learner.scheduler)

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

    @property
    def sharded(self) -> bool:
        """FSDP over several replicas: gathering weights or state is a collective of all of them."""
        return self.settings.strategy == "fsdp" and len(self.actors) > 1

    def _all(self, method: str, per_rank: Sequence[tuple] | None = None) -> list[Any]:
        calls = per_rank or [()] * self.num_replicas
        if self.local is not None:
            return [getattr(self.local, method)(*calls[0])]
        import ray

        return ray.get([getattr(a, method).remote(*c) for a, c in zip(self.actors, calls)])

    def _first(self, method: str, *args: Any) -> Any:
        """Rank 0's result of ``method``: called on every rank when sharded (a collective), else on rank 0 only."""
        if self.local is not None or self.sharded:
            return self._all(method, [args] * self.num_replicas)[0]
        import ray

        return ray.get(getattr(self.actors[0], method).remote(*args))

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
        return self._first("weights", version, adapter_only)

    def replica_weights(self) -> list[dict[str, torch.Tensor]]:
        """Every replica's full state dict (to check that they agree; sharded: as each rank gathers it)."""
        return [m.tensors for m in self._all("weights", [(0, False, True)] * self.num_replicas)]

    def state(self) -> dict[str, Any]:
        """Checkpoint state of rank 0 (all replicas are equal after an update), in the layout of every strategy."""
        return self._first("state")

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
