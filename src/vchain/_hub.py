"""Finding a pretrained model (a local folder or a Hugging Face hub id) before loading it.

Loading a hub id through diffusers or transformers with no network retries for half a minute and then
blames a missing `config.json`. `resolve_pretrained` answers first, in well under a second: a local
folder is used as is, a cached model is loaded without touching the network, and otherwise one request
to the hub tells no network / no such model / gated apart, each with the command that fixes it.

Every vchain `from_pretrained` takes the hub keywords of diffusers and transformers (`HUB_OPTIONS`:
`revision`, `variant`, `cache_dir`, `token`, `local_files_only`) and passes them through; `weights_identity`
then names the weights that were loaded (the commit a hub revision resolved to, or a local folder's path)
for manifests and fingerprints. The token is passed on, never recorded.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from vchain._redact import register_secret
from vchain.errors import ConfigurationError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}$")
LOGIN = "run `hf auth login` (or set HF_TOKEN)"


HUB_OPTIONS = ("revision", "variant", "cache_dir", "token", "local_files_only")


def check_hub_options(revision=None, variant=None, cache_dir=None, token=None, local_files_only=None) -> None:
    """A `ConfigurationError` naming the first hub keyword of the wrong kind (the token's value is not shown)."""
    for name, value in (("revision", revision), ("variant", variant)):
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ConfigurationError(f"{name} must be a non-empty string or None, got {value!r}")
    if cache_dir is not None and (not isinstance(cache_dir, (str, os.PathLike)) or not str(cache_dir).strip()):
        raise ConfigurationError(f"cache_dir must be a folder path or None, got {cache_dir!r}")
    if token is not None and not isinstance(token, (str, bool)):
        raise ConfigurationError(
            f"token must be a string, True (the saved login) or None, got a {type(token).__name__}"
        )
    if local_files_only is not None and not isinstance(local_files_only, bool):
        raise ConfigurationError(f"local_files_only must be True, False or None, got {local_files_only!r}")


def resolve_pretrained(
    model_id: object,
    *,
    what: str,
    marker: str,
    argument: str = "model_id",
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    local_files_only: bool | None = None,
) -> dict:
    """Keyword arguments for `from_pretrained(model_id, **kwargs)`, or a `ConfigurationError` saying why not.

    Args:
        model_id: a folder laid out like a hub checkpoint, or a hub id such as `"Wan-AI/Wan2.1-T2V-1.3B-Diffusers"`.
        what: what the model is, for messages ("Wan weights").
        marker: a file every such checkpoint has at its top (`model_index.json`, `config.json`).
        argument: the name of the argument the id came from, for messages.
        revision, cache_dir, token, local_files_only: the hub's keywords, checked here and passed on in the
            result (a local folder takes none of the first three: it has no revisions and no cache).
    """
    check_hub_options(revision=revision, cache_dir=cache_dir, token=token, local_files_only=local_files_only)
    if isinstance(token, str):
        register_secret(token)  # kept out of every log line and error message vchain writes
    if not isinstance(model_id, (str, os.PathLike)) or not str(model_id).strip():
        raise ConfigurationError(f"{argument} must be a hub id or a folder, got {model_id!r}")
    path = Path(model_id).expanduser()
    if path.is_dir():
        if not (path / marker).is_file():
            raise ConfigurationError(
                f"{argument} {str(model_id)!r} is a folder without {marker}: not a saved {what} checkpoint"
            )
        given = [
            name
            for name, value in (("revision", revision), ("cache_dir", cache_dir), ("token", token))
            if value is not None
        ]
        if given:
            raise ConfigurationError(
                f"{given[0]} applies to hub ids, not to the local folder {str(model_id)!r}; leave it out"
            )
        return {"pretrained_model_name_or_path": str(path)}
    text = str(model_id)
    if path.exists() or not _HUB_ID.match(text) or text.startswith((".", "/", "~")):
        raise ConfigurationError(
            f"{argument} {text!r} is neither an existing folder nor a hub id of the form owner/name"
        )

    from huggingface_hub import constants, model_info, try_to_load_from_cache
    from huggingface_hub import errors as hub_errors

    hub = {k: v for k, v in (("revision", revision), ("cache_dir", cache_dir), ("token", token)) if v is not None}
    at = f" at revision {revision!r}" if revision else ""
    cached = try_to_load_from_cache(text, marker, cache_dir=cache_dir, revision=revision)
    offline = constants.HF_HUB_OFFLINE or local_files_only is True
    if isinstance(cached, str):
        reachable = not offline and _reachable(text, revision, token)
        return {"pretrained_model_name_or_path": text, **hub, "local_files_only": not reachable}
    cache = cache_dir or constants.HF_HUB_CACHE
    if offline:
        why = "local_files_only=True" if local_files_only else "HF_HUB_OFFLINE=1"
        raise ConfigurationError(
            f"{what} {text!r}{at} are not in the cache ({cache}) and {why} forbids downloading them; "
            "download them on a machine with network, or pass a local folder"
        )
    try:
        model_info(text, revision=revision, token=token, timeout=10)
    except hub_errors.RevisionNotFoundError:
        raise ConfigurationError(f"{what} {text!r} have no revision {revision!r} on the hub; check revision") from None
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
    return {
        "pretrained_model_name_or_path": text,
        **hub,
        **({} if local_files_only is None else {"local_files_only": local_files_only}),
    }


def _reachable(model_id: str, revision: str | None = None, token: str | bool | None = None) -> bool:
    """Whether the hub answers for `model_id` (a cached model then checks for updates, as usual)."""
    from huggingface_hub import model_info

    try:
        model_info(model_id, revision=revision, token=token, timeout=5)
    except Exception:
        return False
    return True


def weights_identity(source: dict, marker: str, variant: str | None = None) -> dict:
    """Which weights `source` (from `resolve_pretrained`) loaded: a local folder's absolute path, or the hub
    id, the revision asked for and the commit it resolved to in the cache; the variant if one was asked for.

    Read after the load, so the commit is the snapshot that was actually read. No token in it.
    """
    name = source["pretrained_model_name_or_path"]
    if Path(name).is_dir():
        identity = {"path": str(Path(name).resolve())}
    else:
        from huggingface_hub import try_to_load_from_cache

        revision = source.get("revision")
        cached = try_to_load_from_cache(name, marker, cache_dir=source.get("cache_dir"), revision=revision)
        # A cached file lives at <cache>/models--owner--name/snapshots/<commit>/<marker>.
        commit = Path(cached).parent.name if isinstance(cached, str) else None
        identity = {"hub": name, "revision": revision or "main", "commit": commit}
    return {**identity, "variant": variant} if variant else identity
