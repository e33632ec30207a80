"""A tiny name -> factory registry for pluggable backends (flow, features).

Factories do their heavy imports themselves, so registering a backend costs nothing until it is built.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from pipeline.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps config names to factories ``(**options) -> T``; rejects duplicate names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator registering ``factory`` under ``name``; a second registration of a name is a bug."""

        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._factories:
                raise ValueError(f"{self.kind} backend {name!r} is already registered")
            self._factories[name] = factory
            return factory

        return decorator

    def names(self) -> list[str]:
        return sorted(self._factories)

    def create(self, name: str, *, key: str = "name", **options: object) -> T:
        """Build the backend ``name`` with ``options``; ``key`` is the config key named in errors."""
        if name not in self._factories:
            raise ConfigError(f"{key}: unknown {self.kind} backend {name!r}; expected one of {self.names()}")
        return self._factories[name](**options)
