"""`ToyGenerator`: a video generator small enough to read in one sitting, tunable by `vchain.tuning`.

It renders 4x4 single-frame "videos" with a three-layer MLP denoiser, embeds captions from their hash,
and trains with its own objective (predict the clean latents of a variance-preserving mix), not Wan's.
It exists to show, and to test, that the tuner and the run folder need nothing from any real model:
it implements `vchain.interfaces.TunableGenerator` from scratch, with no diffusers at all.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from PIL import Image

from vchain.errors import NumericalError
from vchain.interfaces import TunableGenerator
from vchain.tuning import TrainingObjective


class X0Objective(TrainingObjective):
    """`x_t = sqrt(1 - s^2) x0 + s noise`; the model predicts `x0`."""

    def levels(self, u: torch.Tensor) -> torch.Tensor:
        return u

    def corrupt(self, x0, noise, level):
        s = level.view(-1, *([1] * (x0.dim() - 1)))
        return (1 - s**2).sqrt() * x0 + s * noise, level * 999, x0


class ToyDenoiser(torch.nn.Module):
    def __init__(self, dim: int = 48, text: int = 16):
        super().__init__()
        self.proj_in = torch.nn.Linear(dim + text + 1, 64)
        self.mix = torch.nn.Linear(64, 64)
        self.proj_out = torch.nn.Linear(64, dim)

    def forward(self, x, t, context):
        h = torch.cat([x, context.mean(1), t[:, None] / 1000], dim=-1)
        return self.proj_out(torch.tanh(self.mix(torch.tanh(self.proj_in(h)))))


class ToyGenerator(TunableGenerator):
    """4x4 RGB one-frame videos from a random MLP; deterministic for a seed."""

    lora_targets = ("proj_in", "mix", "proj_out")
    width = height = 4
    num_frames = fps = 1

    def __init__(self, seed: int = 0):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.denoiser = ToyDenoiser().eval().requires_grad_(False)

    def describe(self) -> dict:
        return {"class": type(self).__name__, "model_id": "toy", "config": {"width": 4, "height": 4}}

    def denoisers(self) -> list[torch.nn.Module]:
        return [self.denoiser]

    def training_objective(self) -> X0Objective:
        return X0Objective()

    def encode_keyframes(self, images, *, height, width) -> torch.Tensor:
        pixels = [torch.from_numpy(np.asarray(im.convert("RGB").resize((4, 4)), dtype=np.float32)) for im in images]
        return torch.stack(pixels).flatten(1) / 127.5 - 1

    def encode_captions(self, captions) -> torch.Tensor:
        digests = [list(hashlib.sha256(c.encode()).digest()) for c in captions]
        return torch.tensor(digests, dtype=torch.float32).view(len(captions), 2, 16) / 127.5 - 1

    def predict(self, denoiser, noisy, timestep, context) -> torch.Tensor:
        return denoiser(noisy, timestep, context)

    def prompt_tokens(self, prompt: str) -> tuple[int, int]:
        return len(prompt.split()), 77

    @torch.no_grad()
    def sample_latent(self, prompt: str, seed: int = 0) -> torch.Tensor:
        context = self.encode_captions([prompt])
        noise = torch.randn(1, 48, generator=torch.Generator().manual_seed(seed))
        return self.denoiser(noise, torch.full((1,), 999.0), context)

    def sample(self, prompt: str, *, seed: int | None = None, **overrides) -> list[Image.Image]:
        latent = self.sample_latent(prompt, 0 if seed is None else seed)
        if not torch.isfinite(latent).all():
            raise NumericalError(f"the sampled video of {type(self).__name__} is not finite (NaN or inf)")
        pixels = ((latent.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).view(4, 4, 3).numpy()
        return [Image.fromarray(pixels)]
