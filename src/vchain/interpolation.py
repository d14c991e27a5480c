"""Keyframes straight to frames, for the `no-sparse-tuning` ablation.

The paper used AMT, a learned frame interpolator. `CrossfadeInterpolator` is the simple built-in. To plug a
learned one in, subclass `vchain.interfaces.Interpolator` and pass it as `VChainPipeline(interpolator=...)`::

    class MyInterpolator(Interpolator):
        def interpolate(self, keyframes, num_frames):
            return my_model.interpolate(keyframes, num_frames)  # list of PIL images
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image

from vchain.errors import ConfigurationError
from vchain.interfaces import Interpolator


class CrossfadeInterpolator(Interpolator):
    """Linear cross-fades between consecutive keyframes, spread evenly over the video."""

    def interpolate(self, keyframes: Sequence[Image.Image], num_frames: int) -> list[Image.Image]:
        if not keyframes:
            raise ConfigurationError("keyframes must hold at least one image, got none")
        if num_frames < len(keyframes):
            raise ConfigurationError(f"num_frames must be at least the {len(keyframes)} keyframes, got {num_frames}")
        keyframes = [k.convert("RGB").resize(keyframes[0].size) for k in keyframes]
        if len(keyframes) == 1:
            return [keyframes[0].copy() for _ in range(num_frames)]
        frames = []
        for i in range(num_frames):
            position = i * (len(keyframes) - 1) / (num_frames - 1)
            left = min(int(position), len(keyframes) - 2)
            frames.append(Image.blend(keyframes[left], keyframes[left + 1], position - left))
        return frames
