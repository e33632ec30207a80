"""The only module that knows Ray: role classes become pools of Ray actors or in-process objects.

Resources per role (CPUs, fractional GPUs, colocation of rollout and reward actors in one bundle) come from the
``runtime`` config section and are reserved up front as one Ray placement group (:class:`Placement`); a shortfall
is reported with what was requested and what the cluster has, before any work starts.

A pool exposes ``map(method, calls)``: call ``method`` once per argument tuple, spreading the calls over the
workers round-robin, and return the results in order. With Ray, a worker that dies is restarted by Ray
(``max_restarts``) and its calls are re-done; the incident is logged, the work is not dropped.

Submissions that need not block the driver (an asynchronous weight push, the rollouts started ahead of the
learner) go through :meth:`RayPool.later`: one sender thread per pool serialises and submits them in order while
the driver goes on; every direct call on the pool waits for that queue first, so each actor sees its calls in the
driver's order and the results equal a run without the thread. An asynchronous push to an actor that is still
busy is fetched and deserialised on the actor's staging thread meanwhile, and applied before its next call.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from pipeline.config import RuntimeSection
from pipeline.errors import ConfigError

log = logging.getLogger(__name__)

T = TypeVar("T")

#: role kinds that get resources from the config
ROLE_KINDS = ("rollout", "reward", "learner")


@dataclass(frozen=True)
class RoleResources:
    """Workers of one role and the Ray resources of each (CPUs; GPUs may be a fraction)."""

    num_workers: int
    num_cpus: float
    num_gpus: float


def role_resources(runtime: RuntimeSection) -> dict[str, RoleResources]:
    """Resources per role kind, as the ``runtime`` config section declares them."""
    return {
        "rollout": RoleResources(runtime.num_rollout_workers, runtime.cpus_per_worker, runtime.gpus_per_rollout_worker),
        "reward": RoleResources(runtime.num_reward_workers, runtime.cpus_per_worker, runtime.gpus_per_reward_worker),
        "learner": RoleResources(runtime.num_learners, runtime.cpus_per_learner, runtime.gpus_per_learner),
    }


def plan_bundles(roles: dict[str, RoleResources], *, colocate: bool) -> tuple[list[dict[str, float]],
                                                                              dict[str, list[int]]]:
    """Placement-group bundles and, per role kind, the bundle index of each worker.

    Every worker gets its own bundle, except that with ``colocate`` rollout worker i and reward worker i share
    bundle i (their CPUs and GPU shares add up: two 0.5-GPU actors land on one GPU).
    """
    bundles: list[dict[str, float]] = []
    index: dict[str, list[int]] = {kind: [] for kind in roles}

    def add(kind: str, res: RoleResources, shared: int | None = None) -> None:
        if shared is None:
            bundles.append({})
            shared = len(bundles) - 1
        for key, value in (("CPU", res.num_cpus), ("GPU", res.num_gpus)):
            if value:
                bundles[shared][key] = bundles[shared].get(key, 0.0) + value
        index[kind].append(shared)

    for kind, res in roles.items():
        for i in range(res.num_workers):
            pair = colocate and kind == "reward" and i < len(index.get("rollout", []))
            add(kind, res, index["rollout"][i] if pair else None)
    return bundles, index


def check_fits(bundles: list[dict[str, float]], available: dict[str, float]) -> None:
    """Raise ConfigError when the bundles ask for more CPU / GPU than ``available`` (naming both)."""
    short = []
    for key in ("CPU", "GPU"):
        asked = sum(b.get(key, 0.0) for b in bundles)
        if asked > available.get(key, 0.0) + 1e-9:
            short.append(f"{asked:g} {key} requested, {available.get(key, 0.0):g} available")
    if short:
        raise ConfigError("the runtime section asks for more than the Ray cluster has: " + "; ".join(short) +
                          " (runtime.num_*_workers, cpus_per_worker, gpus_per_*_worker, num_learners, "
                          "cpus_per_learner, gpus_per_learner)")


class Placement:
    """One Ray placement group holding a bundle per worker; :meth:`options` places a worker in its bundle."""

    def __init__(self, runtime: RuntimeSection) -> None:
        import ray
        from ray.util.placement_group import placement_group

        self.roles = role_resources(runtime)
        self.bundles, self.index = plan_bundles(self.roles, colocate=runtime.colocate)
        check_fits(self.bundles, ray.cluster_resources())  # capacity; busy resources: timeout below
        self.group = placement_group(self.bundles, strategy=runtime.placement_strategy)
        try:
            ray.get(self.group.ready(), timeout=runtime.placement_timeout_s)
        except ray.exceptions.GetTimeoutError:
            self.close()
            nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
            raise ConfigError(f"Ray could not place the roles within runtime.placement_timeout_s="
                              f"{runtime.placement_timeout_s:g} s ({runtime.placement_strategy}; each bundle must fit "
                              f"on one node): requested bundles {self.bundles}, nodes have {nodes}") from None
        log.info("placement group: %d bundles %s (%s)", len(self.bundles), self.bundles, runtime.placement_strategy)

    @classmethod
    def reserve(cls, runtime: RuntimeSection) -> Placement | None:
        """The placement of every role, or None in-process. Fails with requested vs available when short."""
        return cls(runtime) if runtime.use_ray else None

    def options(self, kind: str, worker: int) -> dict[str, Any]:
        """Ray actor options for worker ``worker`` of role ``kind``: its resources inside its bundle."""
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        res = self.roles[kind]
        strategy = PlacementGroupSchedulingStrategy(self.group, placement_group_bundle_index=self.index[kind][worker])
        return {"num_cpus": res.num_cpus, "num_gpus": res.num_gpus, "scheduling_strategy": strategy}

    def close(self) -> None:
        import ray
        from ray.util.placement_group import remove_placement_group

        if ray.is_initialized():
            remove_placement_group(self.group)


class LocalPool:
    """In-process pool: ``num_workers`` instances of the role, called sequentially."""

    def __init__(self, role: type, num_workers: int, *args: Any, **kwargs: Any) -> None:
        self.workers = [role(*args, worker_index=i, **kwargs) for i in range(num_workers)]
        self.name = role.__name__
        self.restart_hooks: list[Callable[[int | None], None]] = []  # never called: in-process workers do not die

    def map(self, method: str, calls: Sequence[tuple]) -> list[Any]:
        n = len(self.workers)
        return [getattr(self.workers[i % n], method)(*call) for i, call in enumerate(calls)]

    def call(self, method: str, *args: Any) -> Any:
        """Call ``method`` on worker 0."""
        return getattr(self.workers[0], method)(*args)

    def broadcast(self, method: str, *args: Any, wait: bool = True) -> list[Any] | None:
        """Call ``method`` with the same arguments on every worker (``wait=False``: returns None, as Ray's)."""
        results = [getattr(w, method)(*args) for w in self.workers]
        return results if wait else None

    def submit(self, method: str, calls: Sequence[tuple]) -> list[Any]:
        """In-process: the results themselves (computed now, as the Ray pool would start them now)."""
        return self.map(method, calls)

    def later(self, job: Callable[[], T]) -> Future[T]:
        """In-process: ``job`` runs now; its (finished) future."""
        future: Future[T] = Future()
        future.set_result(job())
        return future

    def resolve(self, handles: list[Any]) -> list[Any]:
        return handles

    def call_on(self, worker: int, method: str, *args: Any) -> Any:
        return getattr(self.workers[worker], method)(*args)

    def drain(self) -> None:
        """Nothing is queued in-process."""

    def wait_alive(self, worker: int | None = None, timeout_s: float = 0.0) -> None:
        """In-process workers are always alive."""

    def notify_restart(self, worker: int | None) -> None:
        """Nothing to do in-process."""

    def close(self) -> None:
        self.workers = []


class RayPool:
    """Ray actors of one role; dead actors are restarted by Ray and their calls re-done (one log line each)."""

    def __init__(self, role: type, num_workers: int, *args: Any, runtime: RuntimeSection, kind: str = "rollout",
                 placement: Placement | None = None, **kwargs: Any) -> None:
        import ray

        self.name = role.__name__
        self.max_retries = runtime.max_restarts
        #: called with a restarted worker's index (None: unknown, maybe any) before its calls are re-done, e.g.
        #: to send it the current weights again (a restarted actor starts from its constructor arguments)
        self.restart_hooks: list[Callable[[int | None], None]] = []
        self._sender: ThreadPoolExecutor | None = None
        self._queued: deque[Future] = deque()  # jobs given to :meth:`later`, oldest first
        self._on_sender = threading.local()
        #: per worker, calls broadcast without waiting that ride along with the worker's next call (one Ray task):
        #: (method, staging key, argument refs)
        self._pending: list[list[tuple[str, int, tuple]]] = [[] for _ in range(num_workers)]
        self._keys = itertools.count(1)
        self._last_call: list[Any] = [None] * num_workers  # ref of each worker's newest call (they run in order)
        remote = ray.remote(concurrency_groups={STAGING_GROUP: 1})(_with_then(role))
        res = role_resources(runtime)[kind]
        self.workers = []
        for i in range(num_workers):
            opts = placement.options(kind, i) if placement else {"num_cpus": res.num_cpus, "num_gpus": res.num_gpus}
            actor = remote.options(max_restarts=runtime.max_restarts, **opts)
            self.workers.append(actor.remote(*args, worker_index=i, **kwargs))

    def later(self, job: Callable[[], T]) -> Future[T]:
        """Run ``job`` (which submits calls to this pool and returns at once) on the pool's sender thread, after the
        jobs given before it; the driver goes on meanwhile. Direct calls on the pool wait for these jobs first."""
        while self._queued and self._queued[0].done() and self._queued[0].exception() is None:
            self._queued.popleft()
        if self._sender is None:
            self._sender = ThreadPoolExecutor(1, thread_name_prefix=f"newtonrl-{self.name}-sender")

        def run() -> T:
            self._on_sender.active = True
            return job()

        future = self._sender.submit(run)
        self._queued.append(future)
        return future

    def drain(self) -> None:
        """Wait until every job given to :meth:`later` has submitted its calls (re-raising a job's error)."""
        if getattr(self._on_sender, "active", False):
            return  # a queued job calling the pool: the jobs before it are done
        while self._queued:
            self._queued.popleft().result()

    def _remote(self, worker: int, method: str, args: tuple) -> Any:
        """Submit ``method(*args)`` to ``worker``, preceded in the same task by its pending broadcast calls."""
        actor, pending = self.workers[worker], self._pending[worker]
        if pending:
            self._pending[worker] = []
            ref = actor._then.remote(pending, method, *args)
        else:
            ref = getattr(actor, method).remote(*args)
        self._last_call[worker] = ref
        return ref

    def _busy(self, worker: int) -> bool:
        """True while ``worker`` has a call submitted and not finished."""
        import ray

        last = self._last_call[worker]
        return last is not None and not ray.wait([last], timeout=0, fetch_local=False)[0]

    def map(self, method: str, calls: Sequence[tuple]) -> list[Any]:
        """Results of ``method(*call)`` in order; calls lost with a dead worker are re-done once Ray restarts it."""
        import ray

        self.drain()
        n, results, pending = len(self.workers), {}, list(range(len(calls)))
        for attempt in range(self.max_retries + 1):
            refs = {i: self._remote(i % n, method, calls[i]) for i in pending}
            failed: dict[int, Exception] = {}
            for i, ref in refs.items():
                try:
                    results[i] = ray.get(ref)
                except ray.exceptions.RayActorError as exc:  # ActorDiedError, ActorUnavailableError
                    failed[i] = exc
            if not failed:
                break
            if attempt == self.max_retries:
                raise next(iter(failed.values()))
            for w in sorted({i % n for i in failed}):
                lost = [i for i in failed if i % n == w]
                log.warning("%s worker %d died during %s (%s); Ray restarts it, re-doing its %d call(s) "
                            "(retry %d of %d)", self.name, w, method, type(failed[lost[0]]).__name__, len(lost),
                            attempt + 1, self.max_retries)
                self.wait_alive(w)
                self.notify_restart(w)
            pending = sorted(failed)
        return [results[i] for i in range(len(calls))]

    def call(self, method: str, *args: Any) -> Any:
        return self.map(method, [args])[0]

    def broadcast(self, method: str, *args: Any, wait: bool = True) -> list[Any] | None:
        """Call ``method`` with the same arguments on every worker; the arguments go to the object store once.

        ``wait=False`` returns None at once: the sender thread puts the arguments (:meth:`later`) and the call
        rides along with each worker's next call, in the same Ray task and before it: each worker runs it after
        the calls already queued on it and before any submitted later, which is what an asynchronous weight push
        needs, and an error it raises is that next call's error. A worker still busy with earlier calls fetches
        and deserialises the arguments meanwhile, on its staging thread (a 4 MB weights message: about 2 ms less
        between two rollouts); an idle one fetches them when the call runs, which is sooner.
        """
        import ray

        if not wait:
            def send() -> None:
                refs, key = tuple(ray.put(a) for a in args), next(self._keys)
                for worker, (actor, pending) in enumerate(zip(self.workers, self._pending, strict=True)):
                    staged = self._busy(worker)
                    if staged:
                        actor._stage.options(concurrency_group=STAGING_GROUP).remote(key, refs)
                    pending.append((method, key if staged else 0, refs))

            self.later(send)
            return None
        refs = tuple(ray.put(a) for a in args)
        return self.map(method, [refs] * len(self.workers))  # call i goes to worker i; Ray resolves the refs

    def submit(self, method: str, calls: Sequence[tuple]) -> list[Any]:
        """Start the calls (round-robin) and return their refs without waiting; refs may be passed on as
        arguments to another pool's calls (Ray hands the result over without the driver)."""
        self.drain()
        n = len(self.workers)
        return [self._remote(i % n, method, call) for i, call in enumerate(calls)]

    def resolve(self, handles: list[Any]) -> list[Any]:
        import ray

        return ray.get(handles)

    def wait_alive(self, worker: int | None = None, timeout_s: float = 300.0) -> None:
        """Block until ``worker`` (None: every worker) answers again after a restart; raises if it stays dead."""
        import ray

        deadline = time.monotonic() + timeout_s
        for w in range(len(self.workers)) if worker is None else [worker]:
            while True:
                try:
                    ray.get(self.workers[w].__ray_ready__.remote(), timeout=max(deadline - time.monotonic(), 0.1))
                    break
                except ray.exceptions.ActorUnavailableError:  # still restarting
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)

    def call_on(self, worker: int, method: str, *args: Any) -> Any:
        """``method(*args)`` on one worker."""
        import ray

        self.drain()
        return ray.get(self._remote(worker, method, args))

    def notify_restart(self, worker: int | None) -> None:
        """Run the restart hooks for ``worker`` (None: a worker of this pool, unknown which)."""
        for hook in self.restart_hooks:
            hook(worker)

    def close(self) -> None:
        import ray

        if self._sender is not None:
            self._sender.shutdown(wait=True)  # queued submissions are made (and then cancelled with the actors)
            self._sender, self._queued = None, deque()
        for actor in self.workers:
            ray.kill(actor)
        self.workers = []


#: the concurrency group (one thread) where Ray actors stage the arguments of a broadcast that rides along later
STAGING_GROUP = "staging"


def _with_then(role: type) -> type:
    """``role`` with two methods for calls broadcast without waiting (:meth:`RayPool.broadcast`):

    - ``_stage(key, refs)``, run on the actor's staging thread when the broadcast is made to a busy actor: fetches
      the values of ``refs`` (deserialised) and keeps them under ``key``;
    - ``_then(before, method, *args)``: for each ``(name, key, refs)`` of ``before``, in order, calls ``name`` with
      the values staged under ``key`` (waiting for a staging in progress; fetching them itself when none was
      made: key 0, or a staging lost with a restart of the actor), then returns ``method(*args)``.
    """
    def __init__(self, *args: Any, **kwargs: Any) -> None:  # noqa: ANN001 - a role
        role.__init__(self, *args, **kwargs)
        self._staged: dict[int, list] = {}
        self._staging: set[int] = set()
        self._staged_taken = 0  # keys are taken in increasing order: one not taken yet is > this
        self._staged_change = threading.Condition()

    def _stage(self, key: int, refs: tuple) -> None:  # noqa: ANN001 - a role
        import ray

        with self._staged_change:
            if key <= self._staged_taken:
                return
            self._staging.add(key)
        values = None
        try:
            values = ray.get(list(refs))
        finally:
            with self._staged_change:
                self._staging.discard(key)
                if values is not None and key > self._staged_taken:
                    self._staged[key] = values
                self._staged_change.notify_all()

    def _then(self, before: list[tuple[str, int, tuple]], method: str, *args: Any) -> Any:  # noqa: ANN001 - a role
        import ray

        for name, key, refs in before:
            with self._staged_change:
                self._staged_change.wait_for(lambda k=key: k not in self._staging)
                staged = self._staged.pop(key, None)
                self._staged_taken = max(self._staged_taken, key)
            getattr(self, name)(*(staged if staged is not None else ray.get(list(refs))))
        return getattr(self, method)(*args)

    return type(role.__name__, (role,), {"__init__": __init__, "_stage": _stage, "_then": _then,
                                         "__module__": role.__module__, "__qualname__": role.__qualname__})


@dataclass
class _Step:
    """A started step: its rollout-call arguments, the weight version when started, its handles or results."""

    step: int
    calls: list
    version: int | None
    handles: Future  # of the reward calls' handles, once the sender thread has submitted them
    done: list | None = None


class BatchStream:
    """Sample -> score pipelined ahead of the learner: step k+1.. run while the learner works on step k.

    ``calls(step)`` gives the rollout-call arguments of one step; every rollout result goes straight to the
    reward pool's ``score``. Up to ``max_staleness + 1`` steps are in flight, so the batch of step k may come from a
    policy ``max_staleness`` versions older than the learner's (0 = synchronous: a step starts when it is asked
    for, after the previous weight push). When a step loses a dead actor, it and every step in flight after it are
    re-done synchronously once the actor is back; with ``sync`` (the rollouts' :class:`pipeline.weights.WeightSync`)
    each with the weights it was started with, so the numbers are those of a run without the failure (given
    per-step seeds in ``calls``). In-process pools compute a step when it is started, so versions match Ray's.
    """

    def __init__(self, rollouts: LocalPool | RayPool, rewards: LocalPool | RayPool, calls: Callable[[int], list],
                 *, max_staleness: int = 0, sample: str = "rollout", score: str = "score", sync: Any = None) -> None:
        self.rollouts, self.rewards, self.calls, self.sync = rollouts, rewards, calls, sync
        self.max_staleness, self.sample, self.score = max_staleness, sample, score
        self.inflight: deque[_Step] = deque()
        self.started = 0

    def _start(self) -> None:
        """Start the next step: its calls are drawn now, submitted by the rollout pool's sender thread (after any
        weight push queued before), so the driver does not wait for Ray to serialise them."""
        calls = self.calls(self.started)
        version = self.sync.version if self.sync is not None else None

        def submit() -> list:
            sampled = self.rollouts.submit(self.sample, calls)
            return self.rewards.submit(self.score, [(b,) for b in sampled])

        self.inflight.append(_Step(self.started, calls, version, self.rollouts.later(submit)))
        self.started += 1

    def get(self, step: int, *, last: int | None = None) -> list[Any]:
        """Scored results of ``step`` (in call order); starts steps up to ``step + max_staleness`` (< ``last``)."""
        while self.started <= step:
            self._start()
        current = self.inflight.popleft()
        assert current.step == step, f"steps must be asked for in order ({current.step} != {step})"
        while self.started <= step + self.max_staleness and (last is None or self.started < last):
            self._start()
        if current.done is not None:
            return current.done
        try:
            return self.rewards.resolve(current.handles.result())
        except Exception as exc:  # noqa: BLE001 - only actor deaths are retried, anything else re-raised
            if not _actor_died(exc):
                raise
            log.warning("step %d lost a worker (%s); re-doing it and the %d step(s) started after it",
                        step, type(exc).__name__, len(self.inflight))
            self._redo([current, *self.inflight])
            return current.done

    def _redo(self, steps: list[_Step]) -> None:
        """Re-do ``steps`` synchronously (a restarted actor may have run later ones without their weights)."""
        for pool in (self.rollouts, self.rewards):
            pool.drain()
            pool.wait_alive()
        if self.sync is None:
            self.rollouts.notify_restart(None)
        for item in steps:
            if self.sync is not None:
                self.sync.pin(item.version)  # every worker at the version the step was started with
            item.done = self.rewards.map(self.score, [(b,) for b in self.rollouts.map(self.sample, item.calls)])
        if self.sync is not None:
            self.sync.pin(self.sync.version)


def _actor_died(exc: Exception) -> bool:
    import ray

    return isinstance(exc, ray.exceptions.RayActorError)


def make_pool(role: type, num_workers: int, *args: Any, runtime: RuntimeSection, kind: str = "rollout",
              placement: Placement | None = None, **kwargs: Any) -> LocalPool | RayPool:
    """A pool of ``role`` workers: Ray actors (resources of role ``kind``, in ``placement`` when given) when
    ``runtime.use_ray``, else in-process objects."""
    if runtime.use_ray:
        return RayPool(role, num_workers, *args, runtime=runtime, kind=kind, placement=placement, **kwargs)
    return LocalPool(role, num_workers, *args, **kwargs)


def driver_runtime_env() -> dict[str, Any]:
    """Runtime env for actors started by this driver: the repository on PYTHONPATH (for a source checkout)."""
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return {"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [repo_root, os.environ.get("PYTHONPATH")]))}}


@contextlib.contextmanager
def ray_session(runtime: RuntimeSection) -> Iterator[None]:
    """Join the Ray cluster at ``runtime.address`` / $RAY_ADDRESS, or start a local one (stopped on exit)."""
    if not runtime.use_ray:
        yield
        return
    import ray

    if ray.is_initialized():
        yield
        return
    address = runtime.address or os.environ.get("RAY_ADDRESS")
    try:
        if address:
            ray.init(address=address, runtime_env=driver_runtime_env(), log_to_driver=False)
        else:
            ray.init(num_cpus=runtime.num_cpus, include_dashboard=runtime.include_dashboard,
                     dashboard_host="127.0.0.1", runtime_env=driver_runtime_env(), log_to_driver=False)
    except ConnectionError as exc:
        raise ConfigError(f"cannot join the Ray cluster at {address!r} (runtime.address / RAY_ADDRESS): "
                          f"{exc}") from None
    log.info("Ray resources: %s", ray.cluster_resources())
    try:
        yield
    finally:
        ray.shutdown()
