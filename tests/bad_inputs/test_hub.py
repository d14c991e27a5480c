"""Class 6, the hub: a model id that cannot be loaded (malformed, not a checkpoint, no network, offline,
gated, missing) fails fast and once, naming the id, the real cause and the command that fixes it, before
any weight is read; every loader of the library behaves the same."""

from __future__ import annotations

import socket
import threading
import warnings
from pathlib import Path

import pytest

from tests.bad_inputs import PROMPT, assert_names, assert_usage_error
from vchain.errors import ConfigurationError

WAN_ID = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"


def _wan(model_id):
    from vchain.backends.wan import WanVideoGenerator

    return WanVideoGenerator.from_pretrained(model_id)


def _cogvideox(model_id):
    from vchain.backends.cogvideox import CogVideoXVideoGenerator

    return CogVideoXVideoGenerator.from_pretrained(model_id)


def _image_backend(model_id):
    from vchain.backends.diffusers_image import DiffusersImageBackend

    return DiffusersImageBackend.from_pretrained(model_id)


def _reasoner(model_id):
    from vchain.backends.transformers import TransformersReasoner

    return TransformersReasoner.from_pretrained(model_id)


LOADERS = [
    pytest.param(_wan, id="wan"),
    pytest.param(_cogvideox, id="cogvideox"),
    pytest.param(_image_backend, id="diffusers-image"),
    pytest.param(_reasoner, id="transformers-reasoner"),
]


def _file(tmp_path: Path) -> str:
    (tmp_path / "weights.safetensors").write_bytes(b"\0" * 8)
    return str(tmp_path / "weights.safetensors")


def _empty_folder(tmp_path: Path) -> str:
    (tmp_path / "checkpoint").mkdir()
    return str(tmp_path / "checkpoint")


BAD_IDS = [
    pytest.param(lambda t: "", ["''"], id="empty"),
    pytest.param(lambda t: "   ", ["'   '"], id="blanks"),
    pytest.param(lambda t: 123, ["123"], id="a-number"),
    pytest.param(lambda t: "Wan-AI", ["'Wan-AI'", "owner/name"], id="no-owner"),
    pytest.param(lambda t: "Wan-AI/Wan2.1/T2V", ["'Wan-AI/Wan2.1/T2V'"], id="three-parts"),
    pytest.param(lambda t: "Wan-AI/Wan2.1 T2V", ["'Wan-AI/Wan2.1 T2V'"], id="a-space"),
    pytest.param(lambda t: f"https://huggingface.co/{WAN_ID}", ["https://huggingface.co/"], id="a-url"),
    pytest.param(lambda t: "../weights/wan", ["'../weights/wan'"], id="a-relative-folder-that-is-not-there"),
    pytest.param(lambda t: "/nonexistent/wan", ["'/nonexistent/wan'"], id="a-folder-that-is-not-there"),
    pytest.param(lambda t: "~/vchain-no-such-folder", ["vchain-no-such-folder"], id="a-home-folder-not-there"),
    pytest.param(_file, ["weights.safetensors"], id="a-weights-file"),
    pytest.param(_empty_folder, ["checkpoint", "without"], id="a-folder-that-is-not-a-checkpoint"),
]


@pytest.mark.parametrize("load", LOADERS)
@pytest.mark.parametrize(("make", "fragments"), BAD_IDS)
def test_a_bad_model_id_is_named_without_asking_the_hub(load, make, fragments, tmp_path):
    with pytest.raises(ConfigurationError) as error:
        load(make(tmp_path))
    assert_names(str(error.value), *fragments)


class DroppingHub:
    """A hub endpoint on 127.0.0.1 that reads each request line and drops the connection, like a network that
    is down. `asked` counts the requests about a model (the hub client also makes one of its own per process)."""

    def __init__(self):
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.lines: list[str] = []
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def asked(self) -> int:
        return sum("/api/models/" in line for line in self.lines)

    def _serve(self):
        while True:
            try:
                connection, _ = self.socket.accept()
            except OSError:
                return
            with connection:
                connection.settimeout(2)
                try:
                    self.lines.append(connection.recv(1024).split(b"\r\n")[0].decode(errors="replace"))
                except OSError:
                    self.lines.append("")


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """The real hub client, talking to a hub that drops every connection, with an empty cache."""
    import huggingface_hub
    from huggingface_hub import constants, hf_api

    hub = DroppingHub()
    monkeypatch.setattr(huggingface_hub, "model_info", hf_api.model_info)
    monkeypatch.setattr(hf_api.api, "endpoint", hub.url)
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    yield hub
    hub.socket.close()


def _hub_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if any(k in str(w.message).lower() for k in ("retry", "symlink", "hub"))]


@pytest.mark.parametrize("load", LOADERS)
def test_N11_without_network_a_hub_id_fails_once_naming_the_cause(load, no_network, no_weights_load):
    model_id = "Org/vchain-test-model"
    with warnings.catch_warnings(record=True) as caught, pytest.raises(ConfigurationError) as error:
        warnings.simplefilter("always")
        load(model_id)
    assert_names(str(error.value), repr(model_id), "cannot reach the Hugging Face hub", "pass a local folder")
    assert no_network.asked == 1 and _hub_warnings(caught) == []


@pytest.mark.parametrize("load", LOADERS)
def test_offline_a_hub_id_not_in_the_cache_is_named_without_any_connection(load, no_network, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigurationError) as error:
        load("Org/vchain-test-model")
    assert_names(str(error.value), "'Org/vchain-test-model'", "HF_HUB_OFFLINE", "not in the cache")
    assert no_network.lines == []


def _hub_error(kind):
    import httpx2
    from huggingface_hub import errors

    response = httpx2.Response(403 if kind == "gated" else 404, request=httpx2.Request("GET", "https://hf.co"))
    cls = errors.GatedRepoError if kind == "gated" else errors.RepositoryNotFoundError
    return cls(f"{kind} (injected)", response=response)


@pytest.mark.parametrize(
    ("kind", "fragments"),
    [
        pytest.param("gated", ["gated", "accept the licence", "hf auth login"], id="gated"),
        pytest.param("missing", ["do not exist on the hub", "hf auth login"], id="not-on-the-hub"),
    ],
)
@pytest.mark.parametrize("load", LOADERS[:2])
def test_a_gated_or_missing_model_names_the_fix(load, kind, fragments, monkeypatch, tmp_path):
    import huggingface_hub
    from huggingface_hub import constants

    asked = []

    def model_info(model_id, **kwargs):
        asked.append(model_id)
        raise _hub_error(kind)

    monkeypatch.setattr(huggingface_hub, "model_info", model_info)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ConfigurationError) as error:
        load("Org/vchain-test-model")
    assert_names(str(error.value), "'Org/vchain-test-model'", *fragments)
    assert "huggingface-cli" not in str(error.value) and asked == ["Org/vchain-test-model"]


def test_a_cached_model_loads_from_the_cache_when_the_hub_is_unreachable(no_network, tmp_path):
    from huggingface_hub import constants

    from vchain._hub import resolve_pretrained

    snapshot = Path(constants.HF_HUB_CACHE) / "models--Org--cached" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "model_index.json").write_text("{}")
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc123")
    source = resolve_pretrained("Org/cached", what="Wan weights", marker="model_index.json")
    assert source == {"pretrained_model_name_or_path": "Org/cached", "local_files_only": True}
    assert no_network.asked == 1


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["generate", PROMPT, "--variant", "t2v"], id="N11-generate-with-the-default-model"),
        pytest.param(["generate", PROMPT, "--variant", "t2v", "--model", WAN_ID], id="generate-with-a-hub-id"),
        pytest.param(["think", PROMPT, "--reasoner", "transformers:Org/vchain-test-vlm"], id="think-with-a-local-vlm"),
        pytest.param(
            [
                "think",
                PROMPT,
                "--reasoner",
                "transformers:Org/vchain-test-vlm",
                "--image-backend",
                "diffusers:Org/vchain-test-editor",
            ],
            id="think-with-local-models",
        ),
    ],
)
def test_N11_the_command_line_without_network_is_one_message_before_any_load(
    cli, no_network, no_weights_load, args, tmp_path
):
    result = cli(*args, "-o", tmp_path / "run")
    assert_usage_error(result, "cannot reach the Hugging Face hub")
    assert "huggingface-cli" not in result.err and no_network.asked == 1
    assert not (tmp_path / "run").exists()
