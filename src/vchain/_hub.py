"""Finding a pretrained model (a local folder or a Hugging Face hub id) before loading it.

Loading a hub id through diffusers or transformers with no network retries for half a minute and then
blames a missing `config.json`. `resolve_pretrained` answers first, in well under a second: a local
folder is used as is, a cached model is loaded without touching the network, and otherwise one request
to the hub tells no network / no such model / gated apart, each with the command that fixes it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from vchain.errors import ConfigurationError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}$")
LOGIN = "run `hf auth login` (or set HF_TOKEN)"


def resolve_pretrained(model_id: object, *, what: str, marker: str, argument: str = "model_id") -> dict:
    """Keyword arguments for `from_pretrained(model_id, **kwargs)`, or a `ConfigurationError` saying why not.

    Args:
        model_id: a folder laid out like a hub checkpoint, or a hub id such as `"Wan-AI/Wan2.1-T2V-1.3B-Diffusers"`.
        what: what the model is, for messages ("Wan weights").
        marker: a file every such checkpoint has at its top (`model_index.json`, `config.json`).
        argument: the name of the argument the id came from, for messages.
    """
    if not isinstance(model_id, (str, os.PathLike)) or not str(model_id).strip():
        raise ConfigurationError(f"{argument} must be a hub id or a folder, got {model_id!r}")
    path = Path(model_id).expanduser()
    if path.is_dir():
        if not (path / marker).is_file():
            raise ConfigurationError(
                f"{argument} {str(model_id)!r} is a folder without {marker}: not a saved {what} checkpoint"
            )
        return {"pretrained_model_name_or_path": str(path)}
    text = str(model_id)
    if path.exists() or not _HUB_ID.match(text) or text.startswith((".", "/", "~")):
        raise ConfigurationError(
            f"{argument} {text!r} is neither an existing folder nor a hub id of the form owner/name"
        )

    from huggingface_hub import constants, model_info, try_to_load_from_cache
    from huggingface_hub import errors as hub_errors

    cached = try_to_load_from_cache(text, marker)
    offline = constants.HF_HUB_OFFLINE
    if isinstance(cached, str):
        reachable = not offline and _reachable(text)
        return {"pretrained_model_name_or_path": text, "local_files_only": not reachable}
    cache = constants.HF_HUB_CACHE
    if offline:
        raise ConfigurationError(
            f"{what} {text!r} are not in the cache ({cache}) and HF_HUB_OFFLINE=1 forbids downloading them; "
            "unset HF_HUB_OFFLINE on a machine with network, or pass a local folder"
        )
    try:
        model_info(text, timeout=10)
    except hub_errors.GatedRepoError:
        raise ConfigurationError(
            f"{what} {text!r} are gated: accept the licence on https://huggingface.co/{text}, then {LOGIN}"
        ) from None
    except hub_errors.RepositoryNotFoundError:
        raise ConfigurationError(
            f"{what} {text!r} do not exist on the hub (or are private: {LOGIN}); check the id"
        ) from None
    except hub_errors.HfHubHTTPError as e:
        raise ConfigurationError(f"the hub refused {text!r}: {e}") from None
    except Exception as e:  # the hub client's transport errors (no DNS, refused, timed out)
        raise ConfigurationError(
            f"cannot reach the Hugging Face hub to download {what} {text!r} ({type(e).__name__}: {e}), and "
            f"they are not in the cache ({cache}); connect to the network, or pass a local folder"
        ) from None
    return {"pretrained_model_name_or_path": text}


def _reachable(model_id: str) -> bool:
    """Whether the hub answers for `model_id` (a cached model then checks for updates, as usual)."""
    from huggingface_hub import model_info

    try:
        model_info(model_id, timeout=5)
    except Exception:
        return False
    return True
