import csv
import json

import pytest
from PIL import Image

from vchain import ThoughtChain
from vchain.chain import ScenePlan, chain_name
from vchain.errors import ConfigurationError, VChainError
from vchain.testing import draw_image


def make_chain(n_images=3, prompt="Concentrated sulfuric acid is poured onto a wooden table."):
    plan = ScenePlan(thoughts="t", consequences="c", context_frame="cf", concise_prompt="A wooden table.")
    chain = ThoughtChain.from_plan(prompt, plan)
    chain.images.append(draw_image("0", 32, 16))
    for i in range(1, n_images):
        chain.append(f'Keyframe {i}, with a comma, and "quotes".', draw_image(str(i), 32, 16))
    return chain


@pytest.mark.parametrize(
    "prompt",
    [
        "../../etc/passwd",
        "a/b\\c",
        "..",
        "   x   ",
        "Émile's café — über!",
        "日本語のみ",
        "A" * 500,
        "a\x00b",
    ],
)
def test_chain_name_is_a_safe_bounded_slug(prompt):
    name = chain_name(prompt)
    assert name and len(name) <= 40
    assert set(name) <= set("abcdefghijklmnopqrstuvwxyz0123456789_")
    assert ".." not in name and "/" not in name
    assert chain_name(prompt) == name  # stable


def test_chain_name_reads_like_the_prompt_and_keeps_long_prompts_apart():
    assert chain_name("An egg falls onto Concrete!") == "an_egg_falls_onto_concrete"
    a, b = chain_name("x " * 40 + "one"), chain_name("x " * 40 + "two")
    assert a != b and len(a) <= 40


def test_captions_pairs_and_composite_prompt():
    chain = make_chain(3)
    assert chain.captions == ["A wooden table.", *chain.key_frames]
    pairs = chain.training_pairs()
    assert [caption for _, caption in pairs] == chain.captions
    assert [image for image, _ in pairs] == chain.images
    assert chain.composite_prompt == " ".join(chain.captions)


def test_training_pairs_refuse_an_unfinished_chain():
    chain = make_chain(1)
    chain.images.clear()
    with pytest.raises(VChainError, match="1 captions"):
        chain.training_pairs()


def test_mismatched_images_rejected():
    with pytest.raises(ConfigurationError, match="needs 2 images"):
        ThoughtChain("p", "t", "c", "cf", "cp", key_frames=["k"], images=[draw_image("x", 4, 4)] * 3)


def test_empty_prompt_rejected():
    with pytest.raises(ConfigurationError, match="input_prompt"):
        ThoughtChain("  ", "t", "c", "cf", "cp")


def test_save_writes_the_paper_layout_and_load_round_trips(tmp_path):
    chain = make_chain(3)
    chain.save(tmp_path)
    name = chain.name
    data = json.loads((tmp_path / "chain.json").read_text())
    assert list(data) == [name]
    assert list(data[name]) == [
        "input_prompt",
        "thoughts",
        "consequences",
        "context_frame",
        "concise_prompt",
        "key_frames",
        "times",
        "times_from",
    ]
    assert data[name]["key_frames"] == chain.key_frames
    assert (data[name]["times"], data[name]["times_from"]) == ([0.0, 0.5, 1.0], "even")

    lines = (tmp_path / "metadata.csv").read_text().splitlines()
    assert lines[0] == '"file_name","text"'
    assert lines[1] == f'"{name}_0.png","A wooden table."'
    rows = list(csv.reader((tmp_path / "metadata.csv").open()))
    assert rows[1:] == [[f"{name}_{i}.png", c] for i, c in enumerate(chain.captions)]
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [f"{name}_{i}.png" for i in range(3)]
    assert oct((tmp_path / "chain.json").stat().st_mode & 0o777) == oct(0o644)

    loaded = ThoughtChain.load(tmp_path)
    assert loaded.to_json() == chain.to_json()
    assert loaded.name == name
    for a, b in zip(loaded.images, chain.images, strict=True):
        assert a.tobytes() == b.tobytes()


def test_load_refuses_a_chain_whose_image_is_missing(tmp_path):
    chain = make_chain(3)
    chain.save(tmp_path)
    (tmp_path / f"{chain.name}_1.png").unlink()
    with pytest.raises(VChainError, match=rf"{chain.name}_1\.png' does not exist.*--overwrite"):
        ThoughtChain.load(tmp_path)


def test_load_reports_missing_and_unreadable_files(tmp_path):
    with pytest.raises(VChainError, match=r"no chain\.json"):
        ThoughtChain.load(tmp_path)
    chain = make_chain(2)
    chain.save(tmp_path)
    (tmp_path / f"{chain.name}_1.png").write_bytes(b"not a png")
    with pytest.raises(VChainError, match="does not decode"):
        ThoughtChain.load(tmp_path)


def test_save_overwrites_an_older_image_of_the_same_name(tmp_path):
    chain = make_chain(2)
    stale = draw_image("stale", 32, 16)
    stale.save(tmp_path / f"{chain.name}_1.png")
    chain.save(tmp_path)
    assert ThoughtChain.load(tmp_path).images[1].tobytes() == chain.images[1].tobytes()


def test_plan_only_chain_saves_and_loads(tmp_path):
    chain = make_chain(1)
    chain.images.clear()
    chain.save(tmp_path)
    assert not (tmp_path / "metadata.csv").exists()
    assert ThoughtChain.load(tmp_path).images == []


def test_loaded_images_are_rgb(tmp_path):
    chain = make_chain(1)
    chain.images[0] = Image.new("RGBA", (8, 8))
    chain.save(tmp_path)
    assert ThoughtChain.load(tmp_path).images[0].mode == "RGB"
