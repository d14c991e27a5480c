import json
import shutil

import pytest

from vchain import _io
from vchain.cases import Case
from vchain.cli import main
from vchain.errors import ConfigurationError
from vchain.export import EXPORT_FILE, LAYOUTS, export_videos
from vchain.pipeline import VChainPipeline
from vchain.run import MANIFEST_FILE, read_manifest
from vchain.suite import run_suite
from vchain.testing.toy import ToyGenerator

PROMPTS = [Case("a", "A rock falls."), Case("b", "Ice melts."), Case("c", "Milk is poured.")]


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    """Cases 0 and 2 of three prompts, two seeds, on the toy generator."""
    root = tmp_path_factory.mktemp("export") / "suite"
    run_suite(lambda: VChainPipeline(generator=ToyGenerator()), root, [0, 2], ["t2v"], prompts=PROMPTS, seeds=[0, 1])
    return root


def test_phygenbench_names_each_video_by_its_index_in_the_prompt_file(suite, tmp_path):
    exported = export_videos(suite, tmp_path / "out", "phygenbench", seed=1)
    out = tmp_path / "out"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.mp4")) == [
        "t2v/output_video_1.mp4",
        "t2v/output_video_3.mp4",
    ]
    for video in exported:
        source = video.run / "video.mp4"
        assert not video.path.is_symlink() and video.path.read_bytes() == source.read_bytes()
        assert video.seed == 1 and video.run.name == "seed-1"
    record = json.loads((out / EXPORT_FILE).read_text())
    assert [(v["file"], v["case_id"], v["index"]) for v in record["videos"]] == [
        ("t2v/output_video_1.mp4", "a", 0),
        ("t2v/output_video_3.mp4", "c", 2),
    ]


def test_several_seeds_need_a_seed_and_a_layout_must_exist(suite, tmp_path):
    with pytest.raises(ConfigurationError, match=r"several seeds \[0, 1\]: choose one with seed"):
        export_videos(suite, tmp_path / "out")
    with pytest.raises(ConfigurationError, match=r"seed 5 is not among the runs' seeds \[0, 1\]"):
        export_videos(suite, tmp_path / "out", seed=5)
    with pytest.raises(ConfigurationError, match=r"layout must be one of \['phygenbench'\], got 'vbench'"):
        export_videos(suite, tmp_path / "out", "vbench")
    assert not (tmp_path / "out").exists()
    assert LAYOUTS["phygenbench"].path("vchain", 159, "x").as_posix() == "vchain/output_video_160.mp4"


def test_the_cli_exports_and_refuses_without_a_seed(suite, tmp_path, capsys):
    assert main(["export", str(suite), "--layout", "phygenbench", "-o", str(tmp_path / "out")]) == 2
    assert "several seeds [0, 1]" in capsys.readouterr().err
    assert main(["export", str(suite), "--layout", "phygenbench", "-o", str(tmp_path / "out"), "--seed", "0"]) == 0
    assert "2 video(s) of t2v copied" in capsys.readouterr().out
    assert (tmp_path / "out" / "t2v" / "output_video_3.mp4").is_file()


def test_a_run_outside_a_suite_has_no_index_and_is_refused(suite, tmp_path):
    run = tmp_path / "tree" / "loose"
    shutil.copytree(suite / "00_a_rock_falls" / "t2v" / "seed-0", run)
    manifest = read_manifest(run).model_copy(update={"case": None})
    _io.write_json(run / MANIFEST_FILE, manifest.model_dump(mode="json"))
    with pytest.raises(ConfigurationError, match=r"record no suite case, so their index in the prompt file"):
        export_videos(tmp_path / "tree", tmp_path / "out")
