"""LoRA files as the Wan ecosystem exchanges them: diffusers', ComfyUI's (the original Wan code's names), musubi's.

vchain's adapters hold peft state dicts keyed by diffusers' module names (`blocks.0.attn1.to_q.lora_A.weight`).
ComfyUI, the original Wan code and most LoRAs published for them name the same linears after Wan's own
modules (`diffusion_model.blocks.0.self_attn.q.lora_down.weight`, with an `alpha` per module); ComfyUI
applies none of a diffusers-format Wan LoRA's keys. Writing that layout is done here; reading any of these
layouts goes through diffusers' own converters, so vchain reads a file exactly as stock
`WanPipeline.load_lora_weights` does.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import torch

from vchain import _io
from vchain.errors import ConfigurationError, VChainError

LORA_FORMATS = ("diffusers", "comfyui")
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
COMFYUI_WEIGHT_NAME = "vchain_lora.safetensors"
# Wan2.2's experts as ComfyUI users name their LoRA pairs: one file per expert, each loaded on its model.
EXPERT_SUFFIXES = ("_high_noise", "_low_noise")
# diffusers' LoRA files prefix the denoiser's keys with the pipeline component they belong to.
DIFFUSERS_PREFIX = "transformer."
COMFYUI_PREFIX = "diffusion_model."
MUSUBI_PREFIX = "lora_unet_"

_ATTENTION = {"attn1": "self_attn", "attn2": "cross_attn"}
_PROJECTIONS = {"to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "o", "add_k_proj": "k_img", "add_v_proj": "v_img"}
_FEED_FORWARD = {"net.0.proj": "0", "net.2": "2"}
_BLOCK_LINEAR = re.compile(
    r"^blocks\.(\d+)\.(?:(attn[12])\.(to_q|to_k|to_v|to_out\.0|add_k_proj|add_v_proj)|ffn\.(net\.0\.proj|net\.2))$"
)


def check_format(format: object) -> str:
    """`format` if it is one vchain writes, else a `ConfigurationError` naming it."""
    if format not in LORA_FORMATS:
        raise ConfigurationError(f"format must be one of {', '.join(map(repr, LORA_FORMATS))}, got {format!r}")
    return format


def lora_pairs(state_dict: dict[str, torch.Tensor]) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
    """(module name, lora_A weight, lora_B weight) of each LoRA'd linear in a peft state dict."""
    for key, down in state_dict.items():
        if key.endswith(".lora_A.weight"):
            module = key.removesuffix(".lora_A.weight")
            yield module, down, state_dict[f"{module}.lora_B.weight"]


def wan_name(module: str) -> str:
    """The original Wan code's name of a diffusers Wan module (`blocks.3.attn2.to_k` -> `blocks.3.cross_attn.k`)."""
    match = _BLOCK_LINEAR.match(module)
    if match is None or (match[3] in ("add_k_proj", "add_v_proj") and match[2] != "attn2"):
        raise ConfigurationError(
            f"the LoRA on {module!r} has no name in ComfyUI's / the original Wan code's layout, which covers the "
            "transformer blocks' attention and feed-forward linears; export it with format='diffusers'"
        )
    block, attention, projection, feed_forward = match.groups()
    if feed_forward is not None:
        return f"blocks.{block}.ffn.{_FEED_FORWARD[feed_forward]}"
    return f"blocks.{block}.{_ATTENTION[attention]}.{_PROJECTIONS[projection]}"


def to_comfyui(state_dict: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """A peft state dict of a diffusers Wan transformer in ComfyUI's layout: `lora_down`/`lora_up` and `alpha`."""
    converted = {}
    for module, down, up in lora_pairs(state_dict):
        name = COMFYUI_PREFIX + wan_name(module)
        converted[f"{name}.lora_down.weight"] = down.detach().to("cpu", torch.float32).contiguous()
        converted[f"{name}.lora_up.weight"] = up.detach().to("cpu", torch.float32).contiguous()
        converted[f"{name}.alpha"] = torch.tensor(float(alpha))
    return converted


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Write `tensors` to `path` atomically: a reader sees the old file or the whole new one."""
    from safetensors.torch import save

    data = save(
        {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, metadata={"format": "pt", **metadata}
    )
    return _io.atomic_write(path, lambda f: f.write(data))


def diffusers_metadata(metadata: dict) -> dict[str, str]:
    """The safetensors header diffusers' `save_lora_weights` writes for the transformer's adapter metadata."""
    from diffusers.loaders.lora_base import LORA_ADAPTER_METADATA_KEY

    prefixed = {f"{DIFFUSERS_PREFIX}{k}": v for k, v in metadata.items()}
    return {LORA_ADAPTER_METADATA_KEY: json.dumps(prefixed, indent=2, sort_keys=True)}


def comfyui_paths(path: str | Path, experts: int) -> list[Path]:
    """Where a ComfyUI export goes: `path` itself when it names a `.safetensors` file, else
    `path/vchain_lora.safetensors`; with Wan2.2's two experts, `_high_noise` / `_low_noise` files."""
    path = Path(path)
    file = path if path.suffix == ".safetensors" else path / COMFYUI_WEIGHT_NAME
    if experts == 1:
        return [file]
    if experts != len(EXPERT_SUFFIXES):
        raise ConfigurationError(f"a ComfyUI export holds one or two experts' LoRAs, this adapter has {experts}")
    return [file.with_name(f"{file.stem}{suffix}{file.suffix}") for suffix in EXPERT_SUFFIXES]


def find_lora_files(path: str | Path) -> list[Path]:
    """The file(s) of a LoRA at `path`, one per denoiser.

    `path` is a `.safetensors` file (a `..._high_noise` file brings its `..._low_noise` twin), or a folder
    holding `pytorch_lora_weights.safetensors` (and `transformer_2/` for Wan2.2's second expert), or one
    `.safetensors` file, or a `_high_noise` / `_low_noise` pair.
    """
    path = Path(path)
    if path.is_file():
        high, low = EXPERT_SUFFIXES
        twin = path.with_name(path.name.replace(high, low)) if high in path.stem else None
        return [path, twin] if twin is not None and twin.is_file() else [path]
    if not path.is_dir():
        raise VChainError(f"no LoRA at {str(path)!r}: give a .safetensors file or a folder holding {LORA_WEIGHT_NAME}")
    if (path / LORA_WEIGHT_NAME).is_file():
        second = path / "transformer_2" / LORA_WEIGHT_NAME
        return [path / LORA_WEIGHT_NAME, second] if second.is_file() else [path / LORA_WEIGHT_NAME]
    files = sorted(p for p in path.glob("*.safetensors") if p.is_file())
    if len(files) == 1:
        return files
    experts = [next((f for f in files if suffix in f.stem), None) for suffix in EXPERT_SUFFIXES]
    if len(files) == len(EXPERT_SUFFIXES) and all(experts):
        return experts
    found = ", ".join(f.name for f in files) or "none"
    raise VChainError(
        f"no {LORA_WEIGHT_NAME} in {str(path)!r}, and its .safetensors files ({found}) are not one LoRA file "
        "or a _high_noise/_low_noise pair: give the file itself"
    )


def read_lora_file(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """A peft state dict (diffusers' module names, no prefix) and its adapter metadata, from any layout.

    ComfyUI / original-Wan (`diffusion_model.`) and musubi-tuner (`lora_unet_`) files go through diffusers'
    Wan converters, which fold each module's alpha into its weights: such a LoRA reads as alpha = rank.
    """
    from diffusers.loaders.lora_base import LORA_ADAPTER_METADATA_KEY
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 - safe_open is not a dict
        metadata = json.loads(header.get(LORA_ADAPTER_METADATA_KEY, "{}"))
    except Exception as e:
        raise VChainError(f"cannot read LoRA file {str(path)!r}: {type(e).__name__}: {e}") from e
    layout = _layout(tensors)
    if layout is not None:
        tensors = _converted(tensors, layout, path)
        metadata = {}
    metadata = {k.removeprefix(DIFFUSERS_PREFIX): v for k, v in metadata.items()} if isinstance(metadata, dict) else {}
    state_dict = {k.removeprefix(DIFFUSERS_PREFIX): v for k, v in tensors.items()}
    downs = [k for k in state_dict if k.endswith(".lora_A.weight")]
    missing = [k for k in downs if k.replace(".lora_A.", ".lora_B.") not in state_dict]
    if not downs or missing:
        raise VChainError(
            f"LoRA file {str(path)!r} holds no complete lora_A/lora_B pairs "
            f"({len(downs)} lora_A, {len(missing)} without lora_B); it is not a LoRA for a denoiser"
        )
    other = sorted(k for k in state_dict if not k.endswith((".lora_A.weight", ".lora_B.weight")))
    if other:
        raise VChainError(
            f"LoRA file {str(path)!r} holds {len(other)} tensor(s) that are not LoRA weights (e.g. {other[0]!r}: "
            "a bias or full-weight difference), which vchain cannot apply"
        )
    return state_dict, metadata


def _layout(tensors: dict[str, torch.Tensor]) -> str | None:
    """`"comfyui"` or `"musubi"` for a non-diffusers Wan file (as diffusers' `WanLoraLoaderMixin` tells them
    apart), None for diffusers' own layout."""
    if any(k.startswith(COMFYUI_PREFIX) for k in tensors):
        return "comfyui"
    if any(k.startswith(MUSUBI_PREFIX) for k in tensors):
        return "musubi"
    return None


def _converted(tensors: dict[str, torch.Tensor], layout: str, path: Path) -> dict[str, torch.Tensor]:
    from diffusers.loaders.lora_conversion_utils import (
        _convert_musubi_wan_lora_to_diffusers,
        _convert_non_diffusers_wan_lora_to_diffusers,
    )

    convert = (
        _convert_non_diffusers_wan_lora_to_diffusers if layout == "comfyui" else _convert_musubi_wan_lora_to_diffusers
    )
    names = "ComfyUI / original-Wan" if layout == "comfyui" else "musubi-tuner"
    try:
        return convert(dict(tensors))
    except (KeyError, ValueError, IndexError, AttributeError) as e:
        raise VChainError(
            f"LoRA file {str(path)!r} has {names} keys that diffusers' Wan converter cannot read "
            f"({type(e).__name__}: {str(e)[:200]}); it is not a Wan LoRA in that layout"
        ) from e


def export_lora(run_dir: str | Path, output: str | Path, format: str = "comfyui") -> list[Path]:
    """Write the LoRA a run folder tuned (`lora/`) to `output` in `format`; returns the files written.

    The run folder is read under its lock and left as it is; `output` must lie outside it, and a file
    already there is never replaced. `"comfyui"` takes a `.safetensors` file or a folder, `"diffusers"` a folder.
    """
    from vchain.run import MANIFEST_FILE, RunDirectory, read_manifest
    from vchain.tuning import LoRAAdapter
    from vchain.variants import get_variant

    check_format(format)
    run_dir, output = Path(run_dir), Path(output).expanduser()
    if not (run_dir / MANIFEST_FILE).is_file():
        raise ConfigurationError(f"RUN_DIR {str(run_dir)!r} holds no vchain run ({MANIFEST_FILE} is missing)")
    if output.resolve().is_relative_to(run_dir.resolve()):
        raise ConfigurationError(
            f"-o {str(output)!r} lies inside the run folder {str(run_dir)!r}, whose files are the run's own; "
            "write the export elsewhere"
        )
    if format == "diffusers" and output.suffix == ".safetensors":
        raise ConfigurationError(
            f"-o {str(output)!r}: the diffusers format writes a folder ({LORA_WEIGHT_NAME}, and transformer_2/ for "
            "Wan2.2's second expert); give a folder, or use --format comfyui for a single file"
        )
    manifest = read_manifest(run_dir)
    if not get_variant(manifest.variant).tuning:
        raise ConfigurationError(f"{str(run_dir)!r} holds a {manifest.variant!r} run, which does not tune: no LoRA")
    with RunDirectory(run_dir, manifest.prompt, variant=None) as run:
        if not run.finished("tuning", None):
            problem = run.damaged("tuning") if run.record("tuning").status == "done" else None
            raise ConfigurationError(
                f"{str(run_dir)!r} holds no saved LoRA ({problem or 'tuning is ' + run.record('tuning').status}); "
                f"run `vchain tune -o {run_dir}` first"
            )
        adapter = LoRAAdapter.load(run.lora_path)
    experts = len(adapter.state_dicts)
    if format == "comfyui":
        targets = comfyui_paths(output, experts)
    else:
        targets = [output / LORA_WEIGHT_NAME] + [output / "transformer_2" / LORA_WEIGHT_NAME] * (experts - 1)
    nearest = next(p for p in (targets[0].parent, *targets[0].parent.parents) if p.exists())
    if not nearest.is_dir():
        raise ConfigurationError(f"-o {str(output)!r} cannot be written: {str(nearest)!r} is a file, not a folder")
    existing = [str(t) for t in targets if t.exists()]
    if existing:
        raise ConfigurationError(f"{', '.join(existing)} already exist(s); remove it or choose another -o")
    adapter.save(output, format=format)
    return targets
