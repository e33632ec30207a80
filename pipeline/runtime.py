"""The only module that knows Ray: role classes become pools of Ray actors or in-process objects.

A pool exposes ``map(method, calls)``: call ``method`` once per argument tuple, spreading the calls over the
workers round-robin, and return the results in order. With Ray, a worker that dies is restarted by Ray
(``max_restarts``) and its call is re-done; the incident is logged, the work is not dropped.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

from pipeline.config import RuntimeSection
from pipeline.errors import ConfigError

log = logging.getLogger(__name__)


class LocalPool:
    """In-process pool: ``num_workers`` instances of the role, called sequentially."""

    def __init__(self, role: type, num_workers: int, *args: Any, **kwargs: Any) -> None:
        self.workers = [role(*args, worker_index=i, **kwargs) for i in range(num_workers)]
        self.name = role.__name__

    def map(self, method: str, calls: Sequence[tuple]) -> list[Any]:
        n = len(self.workers)
        return [getattr(self.workers[i % n], method)(*call) for i, call in enumerate(calls)]

    def call(self, method: str, *args: Any) -> Any:
        """Call ``method`` on worker 0."""
        return getattr(self.workers[0], method)(*args)

    def close(self) -> None:
        self.workers = []


class RayPool:
    """Ray actors of one role; dead actors are restarted by Ray and their calls re-done."""

    def __init__(self, role: type, num_workers: int, *args: Any, runtime: RuntimeSection, **kwargs: Any) -> None:
        import ray

        self.name = role.__name__
        self.max_retries = runtime.max_restarts
        remote = ray.remote(role).options(num_cpus=runtime.cpus_per_worker, max_restarts=runtime.max_restarts)
        self.workers = [remote.remote(*args, worker_index=i, **kwargs) for i in range(num_workers)]

    def map(self, method: str, calls: Sequence[tuple]) -> list[Any]:
        import ray

        n = len(self.workers)
        refs = [getattr(self.workers[i % n], method).remote(*call) for i, call in enumerate(calls)]
        results = []
        for i, (ref, call) in enumerate(zip(refs, calls)):
            for attempt in range(self.max_retries + 1):
                try:
                    results.append(ray.get(ref))
                    break
                except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as exc:
                    if attempt == self.max_retries:
                        raise
                    log.warning("%s worker %d died during %s (%s); restarted by Ray, re-doing its call (retry %d)",
                                self.name, i % n, method, type(exc).__name__, attempt + 1)
                    ref = getattr(self.workers[i % n], method).remote(*call)
        return results

    def call(self, method: str, *args: Any) -> Any:
        return self.map(method, [args])[0]

    def close(self) -> None:
        import ray

        for actor in self.workers:
            ray.kill(actor)
        self.workers = []


def make_pool(role: type, num_workers: int, *args: Any, runtime: RuntimeSection, **kwargs: Any) -> LocalPool | RayPool:
    """A pool of ``role`` workers: Ray actors when ``runtime.use_ray``, else in-process objects."""
    if runtime.use_ray:
        return RayPool(role, num_workers, *args, runtime=runtime, **kwargs)
    return LocalPool(role, num_workers, *args, **kwargs)


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
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [repo_root, os.environ.get("PYTHONPATH")]))}}
    try:
        if address:
            ray.init(address=address, runtime_env=runtime_env, log_to_driver=False)
        else:
            ray.init(num_cpus=runtime.num_cpus, include_dashboard=runtime.include_dashboard,
                     dashboard_host="127.0.0.1", runtime_env=runtime_env, log_to_driver=False)
    except ConnectionError as exc:
        raise ConfigError(f"cannot join the Ray cluster at {address!r} (runtime.address / RAY_ADDRESS): "
                          f"{exc}") from None
    log.info("Ray resources: %s", ray.cluster_resources())
    try:
        yield
    finally:
        ray.shutdown()
