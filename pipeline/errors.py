"""User-facing error types.

The CLI catches :class:`NewtonRLError` (and its subclasses), prints one clear line and exits with code 2.
Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class NewtonRLError(Exception):
    """Base class for errors caused by user input (configs, files, CLI arguments)."""


class ConfigError(NewtonRLError):
    """A config key has a bad value; the message names the key and what was expected."""


class InputError(NewtonRLError):
    """Bad data or a bad run-time condition (corrupt video, unstable system, missing weights path...)."""
