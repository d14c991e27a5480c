"""Hub identity: every `from_pretrained` takes the hub keywords, and the commit the weights came from is
recorded (and fingerprinted) without the token. A hub cache is laid out by hand, so nothing goes online."""

import json
import shutil

import pytest

from vchain.backends.diffusers_image import DiffusersImageBackend
from vchain.backends.transformers import TransformersReasoner
from vchain.backends.wan import WanVideoGenerator
from vchain.errors import ConfigurationError
from vchain.pipeline import VChainPipeline
from vchain.testing import tiny_wan_pipeline
from vchain.testing.tiny_image import tiny_image_checkpoint
from vchain.testing.tiny_vlm import tiny_vlm

SIZE = dict(height=32, width=32, num_frames=1, num_inference_steps=2, max_sequence_length=32)
TOKEN = "hf_SECRETtoken0123456789"
MAIN, V1 = "a" * 40, "b" * 40


def cached(cache, repo_id, folders):
    """Lay `folders` ({ref: (commit, checkpoint folder)}) out as the hub cache does."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    for ref, (commit, folder) in folders.items():
        shutil.copytree(folder, repo / "snapshots" / commit, dirs_exist_ok=True)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return cache


@pytest.fixture(scope="module")
def wan_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    main, v1 = root / "main", root / "v1"
    tiny_wan_pipeline(seed=0).save_pretrained(main)
    tiny_wan_pipeline(seed=1).save_pretrained(v1)
    return cached(root / "cache", "vchain-test/tiny-wan", {"main": (MAIN, main), "v1": (V1, v1)})


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    import huggingface_hub

    def refuse(*args, **kwargs):
        raise AssertionError("a test must not reach the hub")

    monkeypatch.setattr(huggingface_hub, "model_info", refuse)


def load_wan(cache, **hub):
    return WanVideoGenerator.from_pretrained(
        "vchain-test/tiny-wan", cache_dir=cache, local_files_only=True, dtype="float32", **hub, **SIZE
    )


def test_the_resolved_commit_is_recorded_and_the_token_is_not(wan_cache):
    main = load_wan(wan_cache, token=TOKEN)
    assert main.describe()["weights"] == {"hub": "vchain-test/tiny-wan", "revision": "main", "commit": MAIN}
    assert TOKEN not in json.dumps(main.describe())
    v1 = load_wan(wan_cache, revision="v1")
    assert v1.describe()["weights"] == {"hub": "vchain-test/tiny-wan", "revision": "v1", "commit": V1}
    # The revision reached diffusers: the v1 snapshot holds other weights.
    first = next(main.pipeline.transformer.parameters())
    assert not (first == next(v1.pipeline.transformer.parameters())).all()


def test_a_run_folder_records_the_commit_and_samples_again_when_it_changes(wan_cache, tmp_path):
    prompt = "an egg falls onto a pillow"
    out = VChainPipeline(generator=load_wan(wan_cache, token=TOKEN))(prompt, tmp_path, variant="t2v")
    manifest = (tmp_path / "manifest.json").read_text()
    assert json.loads(manifest)["stages"]["sampling"]["inputs"]["generator"]["weights"]["commit"] == MAIN
    assert TOKEN not in manifest and "sampling" in out.ran
    again = VChainPipeline(generator=load_wan(wan_cache))(prompt, tmp_path, variant="t2v")
    assert "sampling" not in again.ran  # the same commit: nothing to redo (the token is no input)
    moved = VChainPipeline(generator=load_wan(wan_cache, revision="v1"))(prompt, tmp_path, variant="t2v")
    assert "sampling" in moved.ran
    assert (
        json.loads((tmp_path / "manifest.json").read_text())["stages"]["sampling"]["inputs"]["generator"]["weights"][
            "commit"
        ]
        == V1
    )


def test_a_local_folder_is_recorded_by_its_path_and_takes_no_revision(tmp_path):
    tiny_wan_pipeline().save_pretrained(tmp_path / "wan")
    generator = WanVideoGenerator.from_pretrained(tmp_path / "wan", dtype="float32", **SIZE)
    assert generator.describe()["weights"] == {"path": str((tmp_path / "wan").resolve())}
    with pytest.raises(ConfigurationError, match=r"revision applies to hub ids, not to the local folder"):
        WanVideoGenerator.from_pretrained(tmp_path / "wan", revision="v1")
    assert "weights" not in WanVideoGenerator(tiny_wan_pipeline(), **SIZE).describe()  # a wrapped pipeline


@pytest.mark.parametrize(
    ("hub", "message"),
    [
        ({"revision": 3}, "revision must be a non-empty string or None, got 3"),
        ({"variant": ""}, "variant must be a non-empty string or None, got ''"),
        ({"local_files_only": "yes"}, "local_files_only must be True, False or None, got 'yes'"),
        ({"token": 1234}, "token must be a string, True .* got a int"),
    ],
)
def test_hub_keywords_of_the_wrong_kind_are_named_before_anything_loads(hub, message):
    with pytest.raises(ConfigurationError, match=message):
        WanVideoGenerator.from_pretrained("vchain-test/tiny-wan", **hub)


def test_local_files_only_names_itself_when_the_weights_are_not_cached(tmp_path):
    with pytest.raises(ConfigurationError, match=r"at revision 'v2' are not in the cache .*local_files_only=True"):
        WanVideoGenerator.from_pretrained(
            "vchain-test/tiny-wan", revision="v2", cache_dir=tmp_path, local_files_only=True
        )


def test_the_image_backend_and_the_local_reasoner_record_their_commits(tmp_path):
    cache = cached(tmp_path, "vchain-test/tiny-flux", {"main": (MAIN, tiny_image_checkpoint("Flux2KleinPipeline"))})
    cached(cache, "vchain-test/tiny-qwen", {"main": (V1, tiny_vlm("qwen2_5_vl"))})
    hub = dict(cache_dir=cache, local_files_only=True, token=TOKEN)
    images = DiffusersImageBackend.from_pretrained("vchain-test/tiny-flux", dtype="float32", **hub)
    assert images.describe()["weights"] == {"hub": "vchain-test/tiny-flux", "revision": "main", "commit": MAIN}
    reasoner = TransformersReasoner.from_pretrained("vchain-test/tiny-qwen", **hub)
    assert reasoner.describe()["weights"] == {"hub": "vchain-test/tiny-qwen", "revision": "main", "commit": V1}
    assert TOKEN not in json.dumps([images.describe(), reasoner.describe()])
