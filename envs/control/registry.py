"""Registry of control systems: config names -> classes; ``package.module:ClassName`` loads user systems."""

from __future__ import annotations

import importlib
from typing import Any

from envs.control.base import ControlSystem
from envs.control.cartpole import CartPole, CartPoleLinear
from envs.control.linear import Example1, LinearSystem
from envs.control.nonlinear import CosNonlinear, Example2
from envs.control.pendulum import InvertedPendulum
from envs.control.shifted import ShiftedSystem
from pipeline.errors import ConfigError

SYSTEMS: dict[str, type[ControlSystem]] = {}


def register(name: str, cls: type[ControlSystem]) -> None:
    """Add a system class under ``name``; duplicate names are rejected."""
    if name in SYSTEMS:
        raise ValueError(f"system {name!r} is already registered")
    SYSTEMS[name] = cls


for _cls in (Example1, Example2, LinearSystem, CosNonlinear, CartPole, CartPoleLinear, InvertedPendulum, ShiftedSystem):
    register(_cls.name, _cls)

REQUIRED = ("f", "g", "phi", "grad_phi", "Q", "R", "x0")


def _import(path: str) -> type:
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"config key 'control.system.name': expected a registered name or 'package.module:Class', "
                          f"got {path!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"config key 'control.system.name': cannot import module {module_name!r} ({exc})") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"config key 'control.system.name': module {module_name!r} has no {attr!r}") from None


def make_system(name: str, params: dict[str, Any] | None = None) -> ControlSystem:
    """Build a system by registry name or ``package.module:ClassName`` with keyword ``params``."""
    if ":" in name:
        cls = _import(name)
    elif name in SYSTEMS:
        cls = SYSTEMS[name]
    else:
        raise ConfigError(f"config key 'control.system.name': unknown system {name!r}; expected one of "
                          f"{', '.join(sorted(SYSTEMS))} or 'package.module:Class'")
    try:
        system = cls(**(params or {}))
    except TypeError as exc:
        raise ConfigError(f"config key 'control.system.params': {name} does not accept these parameters "
                          f"({exc})") from None
    missing = [attr for attr in REQUIRED if not hasattr(system, attr)]
    if missing:
        raise ConfigError(f"config key 'control.system.name': {name} lacks the system interface: {', '.join(missing)}")
    return system
