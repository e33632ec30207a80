"""Text prompts describing a scene (what a user would type to a video generator)."""

from __future__ import annotations

from envs.newton.assets import BACKGROUND_WORDS, SHAPE_NOUNS, color_name
from envs.newton.spec import SceneSpec

_MOTION = {
    "free_fall": "falls freely from rest",
    "horizontal_throw": "is thrown horizontally to the {side}",
    "parabolic_throw": "is thrown upward at an angle to the {side}",
    "ramp_down": "slides down a ramp to the {side}",
    "ramp_up": "is pushed up a ramp to the {side}",
}


def describe(spec: SceneSpec) -> str:
    """E.g. 'a red ball falls freely from rest on a wooden background'."""
    side = "right" if spec.direction > 0 else "left"
    noun = SHAPE_NOUNS.get(spec.shape, spec.shape)
    place = BACKGROUND_WORDS.get(spec.background, spec.background)
    return f"a {color_name(spec.color)} {noun} {_MOTION[spec.primitive].format(side=side)} on a {place} background"
