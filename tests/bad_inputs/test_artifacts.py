"""Class 4, artifacts on disk: a corrupt, foreign or incomplete `chain.json`, `manifest.json`, keyframe PNG,
video or LoRA file is a `VChainError` naming the file, what is wrong and what to do; never a raw parser
error, never used silently; and what a folder holds always matches what its record says."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from tests.bad_inputs import (
    CAPTIONS,
    NO_WORK,
    PROMPT,
    CountingGenerator,
    assert_names,
    assert_usage_error,
    read_manifest,
    toy_pipeline,
    wan_from,
    work_done,
)
from vchain import ThoughtChain, VChainPipeline
from vchain.errors import ConfigurationError, StageError, VChainError
from vchain.testing import DrawingImageBackend, ScriptedReasoner
from vchain.testing.toy import ToyGenerator
from vchain.tuning import LORA_WEIGHT_NAME, LoRAAdapter, LoRATuner

NAME = "an_egg_is_dropped_onto_a_pillow"
ENTRY = {
    "input_prompt": PROMPT,
    "thoughts": "A pillow on a table, an egg above it.",
    "consequences": "The egg falls and rests on the pillow.",
    "context_frame": "An egg held above a white pillow.",
    "concise_prompt": "An egg above a pillow.",
    "key_frames": list(CAPTIONS),
}


def _entry(**changes):
    return json.dumps({NAME: {**ENTRY, **changes}})


def _without(field):
    return json.dumps({NAME: {k: v for k, v in ENTRY.items() if k != field}})


CHAIN_FILES = [
    pytest.param("{not json", ["chain.json", "not readable JSON"], id="F01-not-json"),
    pytest.param("", ["chain.json", "not readable JSON"], id="empty"),
    pytest.param(b"\xff\xfe\x00\x01 garbage", ["chain.json", "not readable"], id="binary"),
    pytest.param("[]", ["chain.json", "one object"], id="a-list"),
    pytest.param("null", ["chain.json", "one object"], id="null"),
    pytest.param(json.dumps({NAME: ENTRY, "other": ENTRY}), ["chain.json", "one object"], id="two-chains"),
    pytest.param(json.dumps({NAME: "a caption"}), ["chain.json", "layout"], id="an-entry-that-is-text"),
    pytest.param(_without("concise_prompt"), ["chain.json", "concise_prompt"], id="a-field-missing"),
    pytest.param(_entry(key_frames="abc"), ["chain.json", "key_frames", "'abc'"], id="F04-key-frames-a-string"),
    pytest.param(_entry(thoughts=42), ["chain.json", "thoughts", "42"], id="F05-thoughts-a-number"),
    pytest.param(_entry(key_frames=[1, 2]), ["chain.json", "key_frames"], id="key-frames-numbers"),
    pytest.param(_entry(input_prompt=123), ["chain.json", "input_prompt", "123"], id="input-prompt-a-number"),
    pytest.param(_entry(input_prompt="   "), ["chain.json", "input_prompt"], id="a-blank-input-prompt"),
    pytest.param(_entry(key_frames=["a caption", "  "]), ["chain.json", "key_frames"], id="a-blank-caption"),
    pytest.param(_entry(thoughts=None), ["chain.json", "thoughts", "None"], id="thoughts-null"),
    pytest.param(f'{{"{NAME}": {{"thoughts": NaN}}}}', ["chain.json"], id="a-nan-literal"),
    pytest.param(json.dumps({"../../etc": ENTRY}), ["chain.json", "../../etc"], id="a-name-that-escapes"),
    pytest.param("[" * 100_000 + "]" * 100_000, ["chain.json", "not readable JSON"], id="deep-nesting"),
    pytest.param('{"x": 1' + "0" * 5000 + "}", ["chain.json", "not readable JSON"], id="a-5000-digit-number"),
]


def _write(path: Path, content: str | bytes) -> None:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)


@pytest.mark.parametrize(("content", "fragments"), CHAIN_FILES)
def test_a_corrupt_chain_file_is_named_with_what_to_do(finished_run, content, fragments):
    _write(finished_run / "chain.json", content)
    with pytest.raises(VChainError) as error:
        ThoughtChain.load(finished_run)
    assert_names(str(error.value), *fragments, "--overwrite")


@pytest.mark.parametrize(("content", "fragments"), CHAIN_FILES[:6])
def test_F03_a_rerun_over_a_corrupt_chain_pays_for_nothing_and_says_so(finished_run, content, fragments):
    _write(finished_run / "chain.json", content)
    pipe = toy_pipeline()
    with pytest.raises(VChainError) as error:
        pipe(PROMPT, finished_run, seed=1)
    assert_names(str(error.value), "chain.json", "--overwrite")
    assert work_done(pipe) == NO_WORK


def test_a_chain_file_that_is_a_folder_is_named(finished_run):
    (finished_run / "chain.json").unlink()
    (finished_run / "chain.json").mkdir()
    with pytest.raises(VChainError) as error:
        ThoughtChain.load(finished_run)
    assert_names(str(error.value), "chain.json", "folder")


def test_C45_tune_on_a_corrupt_chain_is_refused_before_the_model_loads(cli, no_model_load, thought_run):
    (thought_run / "chain.json").write_text("{not json")
    result = cli("tune", "-o", thought_run)
    assert result.code in (1, 2) and "Traceback" not in result.err
    assert 1 <= len(result.lines) <= 2 and "chain.json" in " ".join(result.lines), result.lines


# -------------------------------------------------------------------------------------------- keyframes


def _bomb(path: Path, bomb_png: bytes) -> None:
    path.write_bytes(bomb_png)


KEYFRAMES = [
    pytest.param(lambda p, b: p.unlink(), ["_1.png", "does not exist"], id="F13-missing"),
    pytest.param(lambda p, b: (p.unlink(), p.mkdir()), ["_1.png", "is a folder"], id="a-folder"),
    pytest.param(lambda p, b: p.write_bytes(p.read_bytes()[:60]), ["_1.png", "does not decode"], id="truncated"),
    pytest.param(lambda p, b: p.write_bytes(b""), ["_1.png", "does not decode"], id="zero-bytes"),
    pytest.param(lambda p, b: p.write_text("not an image"), ["_1.png", "does not decode"], id="text"),
    pytest.param(_bomb, ["_1.png", "400000000", "limit of 67108864"], id="a-decompression-bomb"),
]


@pytest.mark.parametrize(("damage", "fragments"), KEYFRAMES)
def test_a_bad_keyframe_file_is_named(finished_run, bomb_png, damage, fragments):
    damage(finished_run / f"{NAME}_1.png", bomb_png)
    with pytest.raises(VChainError) as error:
        ThoughtChain.load(finished_run)
    assert_names(str(error.value), *fragments)


@pytest.mark.parametrize(("damage", "fragments"), KEYFRAMES)
def test_F14_a_finished_chain_with_a_bad_keyframe_is_never_tuned_on(finished_run, bomb_png, damage, fragments):
    damage(finished_run / f"{NAME}_1.png", bomb_png)
    pipe = toy_pipeline()
    with pytest.raises(VChainError) as error:
        pipe(PROMPT, finished_run, seed=1)
    assert_names(str(error.value), f"{NAME}_1.png", "--overwrite")
    assert work_done(pipe) == NO_WORK


def test_F13_a_chain_missing_its_last_keyframes_is_not_read_as_a_shorter_one(finished_run):
    for i in (1, 2):
        (finished_run / f"{NAME}_{i}.png").unlink()
    with pytest.raises(VChainError) as error:
        ThoughtChain.load(finished_run)
    assert_names(str(error.value), f"{NAME}_1.png")


@pytest.mark.parametrize(("damage", "fragments"), KEYFRAMES)
def test_a_bad_keyframe_in_a_folder_of_the_papers_artifacts_is_named(tmp_path, bomb_png, damage, fragments):
    toy_pipeline().think(PROMPT).save(tmp_path)
    damage(tmp_path / f"{NAME}_1.png", bomb_png)
    pipe = VChainPipeline(generator=CountingGenerator(), tuner=LoRATuner(steps=1))
    with pytest.raises(VChainError) as error:
        pipe(PROMPT, tmp_path)
    assert_names(str(error.value), *fragments)
    assert pipe.generator.samples == 0 and not (tmp_path / "lora").exists()


def test_F15_metadata_csv_is_output_only_an_edit_costs_nothing_and_is_rewritten(finished_run):
    original = (finished_run / "metadata.csv").read_text()
    (finished_run / "metadata.csv").write_text('"file_name","text"\n"nothing.png","a caption of mine"\n')
    pipe = toy_pipeline()
    out = pipe(PROMPT, finished_run)
    assert out.statuses["reasoning"] == "done" and work_done(pipe)["reasoner"] == work_done(pipe)["images"] == 0
    assert (finished_run / "metadata.csv").read_text() == original


# --------------------------------------------------------------------------------------------- manifest

MANIFESTS = [
    pytest.param("{broken", "not readable JSON", id="F20-broken"),
    pytest.param("", "not readable JSON", id="F23-empty"),
    pytest.param(b"\x00\xff\xfe", "not readable", id="binary"),
    pytest.param("null", "not a vchain manifest", id="null"),
    pytest.param("[]", "not a vchain manifest", id="a-list"),
    pytest.param('{"variant": "vchain"}', "prompt", id="F22-no-prompt"),
    pytest.param('{"prompt": 3}', "prompt", id="a-number-for-the-prompt"),
    pytest.param(
        json.dumps({"prompt": PROMPT, "stages": {"reasoning": {"status": "finished"}}}),
        "status",
        id="an-unknown-status",
    ),
    pytest.param(json.dumps({"prompt": PROMPT, "calls": "many"}), "calls", id="calls-not-a-list"),
    pytest.param(json.dumps({"prompt": PROMPT, "usage": {"requests": "six"}}), "requests", id="usage-not-a-number"),
    pytest.param(json.dumps({"prompt": PROMPT, "stages": []}), "stages", id="stages-a-list"),
    pytest.param('{"prompt": ' + "1" * 5000 + "}", "not readable JSON", id="a-5000-digit-number"),
    pytest.param("[" * 100_000 + "]" * 100_000, "not readable JSON", id="deep-nesting"),
]


@pytest.mark.parametrize(("content", "what"), MANIFESTS)
def test_a_corrupt_manifest_is_named_and_nothing_runs(finished_run, content, what):
    _write(finished_run / "manifest.json", content)
    pipe = toy_pipeline()
    with pytest.raises(VChainError) as error:
        pipe(PROMPT, finished_run, seed=1)
    assert_names(str(error.value), "manifest.json", what, "aside")
    assert work_done(pipe) == NO_WORK


def test_a_manifest_that_is_a_folder_is_named(finished_run):
    (finished_run / "manifest.json").unlink()
    (finished_run / "manifest.json").mkdir()
    pipe = toy_pipeline()
    with pytest.raises(VChainError) as error:
        pipe(PROMPT, finished_run, seed=1)
    assert_names(str(error.value), "manifest.json")
    assert work_done(pipe) == NO_WORK


@pytest.mark.parametrize(("content", "what"), MANIFESTS[:3])
def test_a_corrupt_manifest_on_the_command_line_is_one_message(
    cli, toy_demo, no_model_load, finished_run, content, what
):
    _write(finished_run / "manifest.json", content)
    for command in (["demo", "-o", finished_run], ["tune", "-o", finished_run], ["sample", "-o", finished_run]):
        result = cli(*command)
        assert result.code in (1, 2) and "Traceback" not in result.err, (command, result.err[-2000:])
        assert 1 <= len(result.lines) <= 2 and "manifest.json" in result.lines[-1], (command, result.lines)


def test_F24_a_finished_chain_whose_file_is_gone_says_how_to_redo_it(finished_run):
    (finished_run / "chain.json").unlink()
    pipe = toy_pipeline()
    with pytest.raises(VChainError) as error:
        pipe(PROMPT, finished_run, seed=1)
    assert_names(str(error.value), "chain.json", "missing", "--overwrite")
    assert work_done(pipe) == NO_WORK


def test_F24_tune_on_a_folder_whose_chain_is_gone_says_how_to_redo_it(cli, no_model_load, thought_run):
    (thought_run / "chain.json").unlink()
    result = cli("tune", "-o", thought_run)
    assert_usage_error(result, "chain.json", "vchain think")


def test_E07_tune_where_reasoning_failed_says_to_finish_it_first(cli, no_model_load, tmp_path):
    class Broken(DrawingImageBackend):
        def edit(self, images, prompt, *, width, height):
            raise ConnectionError("the image server is down")

    folder = tmp_path / "run"
    with pytest.raises(StageError):
        VChainPipeline(ScriptedReasoner(CAPTIONS), Broken(), ToyGenerator()).think(PROMPT, folder)
    assert read_manifest(folder)["stages"]["reasoning"]["status"] == "failed"
    result = cli("tune", "-o", folder)
    assert_usage_error(result, "reasoning", "vchain think")
    assert "VChainPipeline" not in result.err and "image_backend" not in result.err


# ------------------------------------------------------------------------------------------------ video


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda p: p.write_bytes(b"\x00" * 64), id="F25-garbage"),
        pytest.param(lambda p: p.write_bytes(p.read_bytes()[:100]), id="truncated"),
        pytest.param(lambda p: p.unlink(), id="deleted"),
    ],
)
def test_a_damaged_video_is_sampled_again_and_nothing_else(finished_run, damage):
    damage(finished_run / "video.mp4")
    pipe = toy_pipeline()
    out = pipe(PROMPT, finished_run)
    assert work_done(pipe) == {**NO_WORK, "samples": 1}
    assert out.statuses == {"reasoning": "done", "tuning": "done", "sampling": "done"}
    assert iio.imread(finished_run / "video.mp4").shape[0] == 1


def test_a_folder_where_the_video_belongs_is_refused_not_deleted(finished_run):
    video = finished_run / "video.mp4"
    video.unlink()
    video.mkdir()
    (video / "mine.txt").write_text("not vchain's")
    with pytest.raises(ConfigurationError) as error:
        toy_pipeline()(PROMPT, finished_run)
    assert_names(str(error.value), "video.mp4", "not a file")
    assert (video / "mine.txt").read_text() == "not vchain's"


# ------------------------------------------------------------------------------------------------- LoRA


def _toy_adapter(rank=4, **changes):
    pairs = [(DrawingImageBackend().generate(c, width=4, height=4), c) for c in CAPTIONS]
    return LoRATuner(steps=2, rank=rank, **changes).tune(ToyGenerator(), pairs)


def _save_tensors(folder: Path, tensors: dict, metadata: dict | None = None) -> Path:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    header = {"lora_adapter_metadata": json.dumps(metadata)} if metadata is not None else None
    save_file(tensors, str(folder / LORA_WEIGHT_NAME), metadata=header)
    return folder / LORA_WEIGHT_NAME


def _prefixed(state_dict: dict, rename=lambda k: k, change=lambda k, v: v) -> dict:
    return {f"transformer.{rename(k)}": change(k, v).contiguous() for k, v in state_dict.items()}


def _lora_for_other_modules(folder):
    sd = _toy_adapter().state_dicts[0]
    _save_tensors(folder, _prefixed(sd, rename=lambda k: k.replace("mix", "no")))


def _lora_with_nan(folder):
    sd = _toy_adapter().state_dicts[0]
    _save_tensors(
        folder,
        _prefixed(sd, change=lambda k, v: torch.full_like(v, float("nan")) if "lora_B" in k else v),
        {"transformer.r": 4, "transformer.lora_alpha": 4.0},
    )


def _lora_with_wrong_shapes(folder):
    sd = _toy_adapter().state_dicts[0]
    _save_tensors(folder, _prefixed(sd, change=lambda k, v: v[:, :3] if "lora_A" in k else v))


def _truncated_lora(folder):
    _toy_adapter().save(folder)
    (folder / LORA_WEIGHT_NAME).write_bytes((folder / LORA_WEIGHT_NAME).read_bytes()[:200])


def _lora_with_a_false_rank(folder):
    sd = _toy_adapter(rank=4).state_dicts[0]
    _save_tensors(folder, _prefixed(sd), {"transformer.r": 16, "transformer.lora_alpha": 16.0})


LORA_FILES = [
    pytest.param(lambda f: (f.mkdir(), (f / LORA_WEIGHT_NAME).write_bytes(b"garbage")), "cannot read", id="garbage"),
    pytest.param(lambda f: (f.mkdir(), (f / LORA_WEIGHT_NAME).write_bytes(b"")), "cannot read", id="empty"),
    pytest.param(lambda f: (f / LORA_WEIGHT_NAME).mkdir(parents=True), LORA_WEIGHT_NAME, id="a-folder"),
    pytest.param(
        lambda f: _save_tensors(f, {"transformer.x.weight": torch.zeros(2, 2)}),
        "no complete lora_A/lora_B",
        id="F35-no-lora-keys",
    ),
    pytest.param(
        lambda f: _save_tensors(f, {"transformer.mix.lora_A.weight": torch.zeros(4, 64)}),
        "no complete lora_A/lora_B",
        id="lora-a-without-lora-b",
    ),
    pytest.param(_truncated_lora, "cannot read", id="truncated"),
    pytest.param(_lora_with_nan, "not finite", id="nan-weights"),
    pytest.param(_lora_with_a_false_rank, "rank", id="metadata-rank-disagrees-with-the-tensors"),
]


@pytest.mark.parametrize(("make", "what"), LORA_FILES)
def test_a_bad_lora_file_is_named_when_loaded(tmp_path, make, what):
    make(tmp_path / "lora")
    with pytest.raises(VChainError) as error:
        LoRATuner().load_adapter(tmp_path / "lora")
    assert_names(str(error.value), str(tmp_path / "lora"), what)


@pytest.mark.parametrize(
    ("make", "what"),
    [
        pytest.param(_lora_for_other_modules, ["targets", "another model"], id="F34-modules-that-do-not-exist"),
        pytest.param(_lora_with_wrong_shapes, ["has shape", "another model"], id="shapes-of-another-model"),
    ],
)
def test_a_lora_for_another_model_is_refused_before_any_weight_changes(tmp_path, make, what):
    make(tmp_path / "lora")
    toy = ToyGenerator()
    before = {k: v.clone() for k, v in toy.denoiser.state_dict().items()}
    adapter = LoRAAdapter.load(tmp_path / "lora")
    with pytest.raises(VChainError) as error, adapter.apply(toy):
        pass
    assert_names(str(error.value), *what)
    assert all(torch.equal(v, toy.denoiser.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize(
    "replace",
    [
        pytest.param(lambda f: _toy_adapter(rank=4).save(f), id="F32-a-rank-4-adapter"),
        pytest.param(_lora_for_other_modules, id="F34-an-adapter-for-other-modules"),
        pytest.param(lambda f: (f / LORA_WEIGHT_NAME).write_bytes(b"\0" * 16), id="garbage"),
    ],
)
def test_an_adapter_replaced_by_hand_is_not_trusted_and_tuned_again(finished_run, replace, caplog):
    tuned = LoRAAdapter.load(finished_run / "lora").state_dicts[0]
    shutil.rmtree(finished_run / "lora")
    (finished_run / "lora").mkdir()
    replace(finished_run / "lora")
    pipe = toy_pipeline()
    with caplog.at_level(logging.WARNING):
        out = pipe(PROMPT, finished_run)
    assert work_done(pipe)["tunes"] == 1 and work_done(pipe)["reasoner"] == work_done(pipe)["images"] == 0
    assert "lora" in caplog.text and out.statuses["tuning"] == "done"
    again = LoRAAdapter.load(finished_run / "lora").state_dicts[0]  # the same seed tunes the same adapter
    assert again.keys() == tuned.keys() and all(torch.equal(again[k], tuned[k]) for k in tuned)


# -------------------------------------------------------------------------- the record matches the folder


def test_C19_demo_with_another_seed_on_a_finished_folder_makes_that_seeds_video(cli, toy_demo, finished_run, tmp_path):
    assert cli("demo", "-o", finished_run, "--seed", "7").code == 0
    assert cli("demo", "-o", tmp_path / "fresh", "--seed", "7").code == 0
    assert read_manifest(finished_run)["stages"]["sampling"]["seed"] == 7
    assert np.array_equal(iio.imread(finished_run / "video.mp4"), iio.imread(tmp_path / "fresh" / "video.mp4"))


def test_C19_a_rerun_says_which_stages_it_reused(cli, toy_demo, finished_run):
    result = cli("demo", "-o", finished_run, "--seed", "7")
    lines = {line.split()[0]: line for line in result.out.splitlines() if line.startswith("  ")}
    assert result.code == 0 and lines.keys() >= {"reasoning", "tuning", "sampling"}, result.out
    assert "reused" in lines["reasoning"] and "reused" not in lines["sampling"], lines


def test_C44_tune_on_a_tuned_folder_says_it_reused_the_adapter_and_a_new_rank_tunes_again(cli, wan_run):
    lora = wan_run / "lora" / LORA_WEIGHT_NAME
    before = lora.read_bytes()
    same = cli("tune", "-o", wan_run)
    assert same.code == 0 and lora.read_bytes() == before, same.err[-2000:]
    assert "reused" in same.out or "already" in same.out, same.out
    again = cli("tune", "-o", wan_run, "--rank", "4")
    assert again.code == 0 and lora.read_bytes() != before, again.err[-2000:]
    assert LoRAAdapter.load(wan_run / "lora").rank == 4
    assert read_manifest(wan_run)["stages"]["tuning"]["inputs"]["tuner"]["config"]["rank"] == 4


def test_F29_a_generator_set_to_other_frames_samples_again_and_records_them(wan, tmp_path):
    from vchain.backends.wan import WanVideoGenerator

    folder = tmp_path / "run"
    five = WanVideoGenerator(wan.pipeline, **{**wan.config.to_dict(), "num_frames": 5})
    nine = WanVideoGenerator(wan.pipeline, **{**wan.config.to_dict(), "num_frames": 9})
    VChainPipeline(generator=five)(PROMPT, folder, variant="t2v")
    out = VChainPipeline(generator=nine)(PROMPT, folder, variant="t2v")
    assert len(out.frames) == 9 and iio.imread(folder / "video.mp4").shape[0] == 9
    sampling = read_manifest(folder)["stages"]["sampling"]
    assert sampling["frames"] == 9 and sampling["inputs"]["generator"]["config"]["num_frames"] == 9


def test_a_folder_of_the_papers_artifacts_can_be_tuned_from_the_command_line(cli, tiny_wan_dir, tmp_path):
    chain = VChainPipeline(ScriptedReasoner(CAPTIONS), DrawingImageBackend(), wan_from(tiny_wan_dir)).think(PROMPT)
    chain.save(tmp_path / "paper")
    result = cli(
        "tune",
        "-o",
        tmp_path / "paper",
        "--model",
        tiny_wan_dir,
        "--dtype",
        "float32",
        "--height",
        "32",
        "--width",
        "32",
        "--tune-steps",
        "2",
    )
    assert result.code == 0, result.err[-2000:]
    assert (tmp_path / "paper" / "lora" / LORA_WEIGHT_NAME).is_file()
    assert read_manifest(tmp_path / "paper")["stages"]["reasoning"]["inputs"] == {"imported": True}


def test_C54_suite_folders_are_named_by_case_and_another_selection_reuses_them(cli, toy_demo, tmp_path):
    assert cli("suite", "-o", tmp_path, "--demo", "--cases", "4", "--variants", "t2v").code == 0
    case = tmp_path / "04_a_steel_ball_is_dropped_into_water" / "t2v"
    record = (case / "manifest.json").read_bytes()
    assert cli("suite", "-o", tmp_path, "--demo", "--cases", "0,4", "--variants", "t2v").code == 0
    assert (case / "manifest.json").read_bytes() == record  # case 4 was not run again
    assert sorted(p.name for p in tmp_path.iterdir() if p.name[:2].isdigit()) == [
        "00_a_rock_and_a_feather_are_fallin_74c33925",
        "04_a_steel_ball_is_dropped_into_water",
    ]
