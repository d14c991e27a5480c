"""`LoRAConfig`, the settings of `vchain.tuning.LoRATuner`, in a module of its own that imports no torch, so
the command line reads and checks its tuning flags before any heavy import."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

from pydantic import Field, model_validator

from vchain.config import Config


class LoRAConfig(Config):
    """Settings of `LoRATuner`. Rank, alpha and learning rate are the paper's.

    The default step count: the paper gives none ("limited iterations"). 300 steps with five keyframes
    are about 60 visits each: enough at lr 1e-4 for a rank-16 LoRA to take on the keyframes' content,
    short of the point where a few stills start to freeze the video's motion (the trade-off the paper
    names). Raise it for stronger adherence to the keyframes, lower it for more motion.
    """

    rank: int = Field(16, ge=1, le=1024, description="LoRA rank")
    alpha: float = Field(16.0, gt=0, le=10_000, description="LoRA alpha; the update is scaled by alpha / rank")
    learning_rate: float = Field(1e-4, gt=0, le=1.0, description="AdamW learning rate of the LoRA")
    steps: int = Field(300, ge=1, le=1_000_000, description="optimizer steps")
    batch_size: int = Field(1, ge=1, le=64, description="keyframes per step")
    weighting_scheme: Literal["logit_normal", "uniform"] = Field(
        "logit_normal", description="how noise levels are drawn, before the objective's shift"
    )
    logit_mean: float = Field(0.0, description="mean of the logit-normal draw")
    logit_std: float = Field(1.0, gt=0, description="standard deviation of the logit-normal draw")
    height: int | None = Field(None, gt=0, description="training height; None takes the generator's")
    width: int | None = Field(None, gt=0, description="training width; None takes the generator's")
    gradient_checkpointing: bool = Field(False, description="recompute activations in backward (less memory)")
    max_grad_norm: float | None = Field(1.0, gt=0, description="gradient clipping; None disables it")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    target_modules: Annotated[tuple[str, ...] | None, Field(strict=False, min_length=1)] = Field(
        None, description="module-name suffixes that get the LoRA; None takes the generator's"
    )
    log_every: int = Field(10, ge=1, description="steps between loss reads (each waits for the device)")
    compile: bool = Field(
        False,
        description="regional torch.compile of the denoiser's repeated blocks while tuning (the first steps "
        "pay the compilation; later runs in the process reuse it)",
    )
    compile_backend: str = Field(
        "inductor", min_length=1, description="the torch.compile backend ('eager' or 'aot_eager' test the plumbing)"
    )
    fused_adamw: bool | None = Field(
        None, description="AdamW's fused kernel (one launch per step for all LoRA tensors); None: on CUDA only"
    )
    seed: int = Field(0, ge=0, lt=2**63, description="seeds LoRA init, keyframe order, noise and levels")
    merge_for_sampling: bool = Field(
        True,
        description="fold the LoRA into the weights while sampling (restored from a snapshot); "
        "False adds peft layers instead; on a quantized model always layers",
    )

    @model_validator(mode="after")
    def _names(self):
        if self.target_modules is not None and not all(name.strip() for name in self.target_modules):
            raise ValueError(f"target_modules must be non-empty names, got {self.target_modules!r}")
        return self

    def lora_config(self, target_modules: Sequence[str]):
        """The peft `LoraConfig` these settings describe."""
        from peft import LoraConfig

        return LoraConfig(
            r=self.rank, lora_alpha=self.alpha, target_modules=list(target_modules), init_lora_weights=True
        )
