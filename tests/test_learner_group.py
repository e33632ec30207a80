"""Learner group: a real 2-process DDP or FSDP group (gloo, Ray actors) == one full-batch step; replicas stay
identical; FSDP really shards, and checkpoints move between the strategies."""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn

from pipeline.config import RuntimeSection
from pipeline.learner_group import LearnerGroup, LearnerSettings, LearnerWorker, split
from pipeline.runtime import LocalPool, Placement, make_pool, ray_session
from pipeline.weights import WeightsMessage, WeightSync, apply_message, weights_message

ray = pytest.importorskip("ray")
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

LR = 0.1


@dataclass
class Regression:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any = None

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        x, y = batch
        return (model(x) - y).pow(2).mean(), {"n": float(len(x))}


def build() -> Regression:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
    return Regression(model, torch.optim.SGD(model.parameters(), lr=LR))


def data(n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, generator=g)
    return x, x.sum(1, keepdim=True).sin()


def full_batch_step() -> dict[str, torch.Tensor]:
    """Independent truth: one plain SGD step on the mean loss of the whole batch."""
    ref = build()
    x, y = data()
    ref.optimizer.zero_grad()
    ref.loss(ref.model, (x, y))[0].backward()
    ref.optimizer.step()
    return ref.model.state_dict()


def micro(x: torch.Tensor, y: torch.Tensor, parts: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(zip(torch.chunk(x, parts), torch.chunk(y, parts)))


def assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_in_process_grad_accumulation_equals_full_batch(precision):
    runtime = RuntimeSection(use_ray=False, num_learners=0, grad_accumulation=4, mixed_precision=precision)
    group = LearnerGroup(build, runtime)
    metrics = group.update([micro(*data(), 4)])  # 4 micro-batches, one optimizer step
    assert metrics["n"] == 4.0
    before = build().model.state_dict()
    after = group.replica_weights()[0]
    if precision == "no":
        assert_close(after, full_batch_step())
    else:  # bf16 autocast: the same step up to bf16 rounding of the matmuls
        for key, value in full_batch_step().items():
            torch.testing.assert_close(after[key], value, rtol=0, atol=2e-2)
    assert any(not torch.equal(after[k], before[k]) for k in after)  # it did move
    group.shutdown()


def test_two_process_ddp_replicas_match_a_full_batch_step(tmp_path):
    runtime = RuntimeSection(num_cpus=2, num_learners=2, cpus_per_learner=0.5, num_rollout_workers=2,
                             cpus_per_worker=0.25)  # 2 x 0.5 + 3 x 0.25 CPU in one placement group
    with ray_session(runtime):
        placement = Placement.reserve(runtime)
        group = LearnerGroup(build, runtime, settings=LearnerSettings.from_runtime(runtime), placement=placement)
        try:
            x, y = data()
            shards = [[b] for b in micro(x, y, 2)]  # replica r sees only its half of the batch
            group.update(shards)
            first, second = group.replica_weights()
            assert_close(first, second)  # replicas identical after the step ...
            assert_close(first, full_batch_step())  # ... and equal to the full-batch step (gradients averaged)
            message = group.weights(version=7)
            assert message.version == 7 and not message.adapter_only
            assert_close(message.tensors, first)
            receivers = make_pool(Receiver, 2, runtime=runtime, placement=placement)
            assert WeightSync(receivers).push(message) == [7, 7]
            assert WeightSync(receivers).push(group.weights(version=3)) == [7, 7]  # stale version: ignored
            for held in receivers.broadcast("weights"):
                assert_close(held, first)
            receivers.close()
            state = group.state()
            group.update([[b] for b in micro(x.flip(0), y.flip(0), 2)])
            group.load_state(state)
            assert_close(group.replica_weights()[1], first)
        finally:
            group.shutdown()
            placement.close()


class Blocks(nn.Module):
    """Blocks in an ``nn.ModuleList`` (FSDP shards each on its own, then the root: the head) and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([nn.Linear(3, 8), nn.Linear(8, 8)])
        self.head = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = torch.tanh(block(x))
        return self.head(x)


def build_blocks(adam: bool = False) -> Regression:
    """SGD (no state); ``adam``: AdamW with weight decay (sharded moments) and a step-decay scheduler."""
    torch.manual_seed(0)
    model = Blocks()
    if not adam:
        return Regression(model, torch.optim.SGD(model.parameters(), lr=LR))
    optimizer = torch.optim.AdamW([{"params": model.blocks.parameters()}, {"params": model.head.parameters(),
                                                                           "lr": LR / 2}], lr=LR, weight_decay=0.1)
    return Regression(model, optimizer, torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5))


def local_shards(worker: LearnerWorker) -> dict[str, tuple[bool, int, int]]:
    """(is a DTensor, elements held on this rank, elements in all) of each parameter of a learner replica."""
    from torch.distributed.tensor import DTensor

    return {name: (isinstance(p, DTensor), p.to_local().numel() if isinstance(p, DTensor) else p.numel(), p.numel())
            for name, p in worker.model.named_parameters()}


def fsdp_runtime(**kwargs: Any) -> RuntimeSection:
    return RuntimeSection(num_cpus=2, num_learners=2, cpus_per_learner=0.5, learner_strategy="fsdp", **kwargs)


def test_fsdp_replicas_are_sharded_and_take_the_full_batch_step():
    runtime = fsdp_runtime(grad_accumulation=2)
    clip = 0.05
    ref = build_blocks()  # the truth: one clipped SGD step on the whole batch in one process
    x, y = data()
    ref.loss(ref.model, (x, y))[0].backward()
    norm = float(torch.nn.utils.clip_grad_norm_(ref.model.parameters(), clip))
    ref.optimizer.step()
    with ray_session(runtime):
        group = LearnerGroup(build_blocks, runtime, settings=LearnerSettings.from_runtime(runtime, max_grad_norm=clip))
        try:
            shards = [ray.get(a.__ray_call__.remote(local_shards)) for a in group.actors]
            for name, (is_dtensor, held, total) in shards[0].items():  # every weight is split between the ranks
                assert is_dtensor and shards[1][name][0] and held + shards[1][name][1] == total
            assert [sum(h for _, h, _ in s.values()) for s in shards] == [61, 52]  # of 113: a strict subset each
            metrics = group.update([micro(x, y, 4)[:2], micro(x, y, 4)[2:]])  # 2 micro-batches per replica
            assert metrics["grad_norm"] == pytest.approx(norm, rel=1e-5) and norm > clip  # a global norm, clipped
            first, second = group.replica_weights()
            assert_close(first, second)
            assert_close(first, ref.model.state_dict())
            message = group.weights(version=5)
            assert message.version == 5
            assert_close(message.tensors, first)
        finally:
            group.shutdown()


def test_fsdp_checkpoints_load_into_ddp_and_back():
    """Sharded AdamW moments, step counts and the scheduler travel in the DDP layout, both ways."""
    runtime = fsdp_runtime()
    x, y = data()
    steps = [[[b] for b in micro(x.roll(k, 0), y.roll(k, 0), 2)] for k in range(3)]
    adam = functools.partial(build_blocks, adam=True)
    reference = build_blocks(adam=True)  # the layout of an in-process optimizer: parameter indices, same groups
    reference.loss(reference.model, (x, y))[0].backward()
    reference.optimizer.step()
    expected = reference.optimizer.state_dict()
    with ray_session(runtime):
        fsdp = LearnerGroup(adam, runtime)
        ddp = LearnerGroup(adam, runtime.model_copy(update={"learner_strategy": "ddp"}))
        try:
            for shards in steps[:2]:
                fsdp.update(shards)
            sharded = fsdp.state()
            got = sharded["optimizer"]
            assert [(sorted(g), g["params"]) for g in got["param_groups"]] == [
                (sorted(g), g["params"]) for g in expected["param_groups"]]
            assert {i: {k: v.shape for k, v in s.items()} for i, s in got["state"].items()} == {
                i: {k: v.shape for k, v in s.items()} for i, s in expected["state"].items()}
            ddp.load_state(sharded)  # FSDP -> DDP
            assert_close(ddp.replica_weights()[1], sharded["model"])
            before = ddp.state()
            fsdp.update(steps[2])
            ddp.update(steps[2])  # the same step from the same weights, moments and learning rates
            after = ddp.weights(1).tensors
            assert_close(fsdp.weights(1).tensors, after)
            fsdp.load_state(before)  # DDP -> FSDP: back one step, and the same step again
            assert_close(fsdp.replica_weights()[0], before["model"])
            fsdp.update(steps[2])
            assert_close(fsdp.weights(2).tensors, after)
            assert fsdp.state()["scheduler"] == ddp.state()["scheduler"]
        finally:
            fsdp.shutdown()
            ddp.shutdown()


def test_split_deals_contiguous_shards():
    assert split(list(range(7)), 3) == [[0, 1, 2], [3, 4], [5, 6]]


class Receiver:
    """A rollout-side role holding a copy of the policy."""

    def __init__(self, worker_index: int = 0) -> None:
        torch.manual_seed(100 + worker_index)
        self.model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
        self.version = 0

    def set_weights(self, message) -> int:
        self.version = apply_message(self.model, message, self.version)
        return self.version

    def weights(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()


def lora(seed: int) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    base = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
    model = get_peft_model(base, LoraConfig(r=2, lora_alpha=2, target_modules=["0", "2"], init_lora_weights=False))
    return model


def test_lora_sync_ships_only_adapters():
    learner, rollout = lora(0), lora(1)
    rollout.base_model.model[0].base_layer.load_state_dict(learner.base_model.model[0].base_layer.state_dict())
    rollout.base_model.model[2].base_layer.load_state_dict(learner.base_model.model[2].base_layer.state_dict())
    message = weights_message(learner, version=1)
    assert message.adapter_only and message.tensors and all("lora_" in k for k in message.tensors)
    full = weights_message(learner, version=1, adapter_only=False)
    assert message.num_bytes < full.num_bytes
    x = torch.randn(5, 3)
    assert not torch.allclose(learner(x), rollout(x))
    pool = LocalPool(Receiver, 1)
    pool.workers[0].model = rollout
    assert WeightSync(pool).push(message) == [1]
    torch.testing.assert_close(learner(x), rollout(x), rtol=0, atol=1e-7)


def test_weights_message_travels_as_one_buffer_and_keeps_dtypes_and_shapes():
    import pickle

    model = nn.Sequential(nn.Linear(3, 2).to(torch.bfloat16), nn.BatchNorm1d(5))  # bf16, f32, int64 scalar
    model.register_buffer("empty", torch.zeros(0, 4, dtype=torch.float16))
    message = weights_message(model, version=4)
    loose = WeightsMessage(5, {"t": torch.arange(6.0).view(2, 3).t(), "i8": torch.tensor([-1, 2], dtype=torch.int8)})
    for sent in (message, loose):  # loose tensors (non-contiguous too) are packed when sent
        back = pickle.loads(pickle.dumps(sent))
        assert back.version == sent.version and back.tensors.keys() == sent.tensors.keys()
        assert back.flat is not None and back.flat.dtype == torch.uint8  # a single array on the wire
        for key, tensor in sent.tensors.items():
            got = back.tensors[key]
            assert got.dtype == tensor.dtype and got.shape == tensor.shape and torch.equal(got, tensor), key
    assert message.tensors["1.num_batches_tracked"].shape == () and message.tensors["empty"].shape == (0, 4)
    model[0].weight.data += 1  # the message is a copy, not a view of the model
    assert not torch.equal(message.tensors["0.weight"], model[0].weight)


def test_gpu_bench_dry_run_on_cpu(tmp_path, monkeypatch):
    """bench/gpu.sh's script at tiny size on CPU: same code path as the H200 run, finite figures."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "gpu_bench.py"
    spec = importlib.util.spec_from_file_location("gpu_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "gpu.json"
    monkeypatch.setattr(sys, "argv", ["gpu_bench", "--size", "tiny", "--device", "cpu", "--warmup", "1", "--iters",
                                      "1", "--sample-steps", "2", "--rollout-iters", "1", "--out", str(out)])
    module.main()
    record = json.loads(out.read_text())
    assert record["params_B"] > 0 and record["flops_per_step_T"] > 0 and record["videos_per_s"] > 0
    assert record["forward_ms"] * 2 == pytest.approx(record["sample_s"] * 1e3)
