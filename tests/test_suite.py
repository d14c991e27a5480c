import csv
import json

import pytest

from vchain.cases import Case
from vchain.cli import main
from vchain.errors import ConfigurationError
from vchain.pipeline import VChainPipeline
from vchain.run import read_manifest
from vchain.suite import parse_seeds, plan_runs, run_cost, run_suite, shard
from vchain.testing.toy import ToyGenerator
from vchain.variants import VARIANTS

CASES = [
    Case("ball", "A ball is dropped onto a pillow.", {"main_category": "Mechanics"}),
    Case("ice", "Ice melts in the sun.", {"main_category": "Thermal"}),
]


def test_every_case_variant_and_seed_runs_in_its_folder_and_records_its_case(tmp_path):
    runs = run_suite(
        lambda: VChainPipeline(generator=ToyGenerator()), tmp_path, variants=["t2v"], prompts=CASES, seeds=[0, 3]
    )
    assert [run.id for run in runs] == [
        "00_a_ball_is_dropped_onto_a_pillow/t2v/seed-0",
        "00_a_ball_is_dropped_onto_a_pillow/t2v/seed-3",
        "01_ice_melts_in_the_sun/t2v/seed-0",
        "01_ice_melts_in_the_sun/t2v/seed-3",
    ]
    manifests = [read_manifest(run.path) for run in runs]
    assert [(m.case.id, m.case.index, m.case.seed, m.stages.sampling.seed) for m in manifests] == [
        ("ball", 0, 0, 0),
        ("ball", 0, 3, 3),
        ("ice", 1, 0, 0),
        ("ice", 1, 3, 3),
    ]
    assert manifests[2].case.meta == {"main_category": "Thermal"} and all(m.status() == "done" for m in manifests)
    videos = [(run.path / "video.mp4").read_bytes() for run in runs]
    assert videos[0] != videos[1]  # another seed, another video
    rows = list(csv.DictReader((tmp_path / "summary.csv").open()))
    assert [(r["case_id"], r["seed"], r["status"]) for r in rows] == [
        ("ball", "0", "done"),
        ("ball", "3", "done"),
        ("ice", "0", "done"),
        ("ice", "3", "done"),
    ]


def test_without_seeds_the_layout_is_one_folder_per_case_and_variant(tmp_path):
    (run,) = plan_runs(tmp_path, [1], ["vchain"], ["A.", "B."], seed=7)
    assert run.id == "01_b/vchain" and run.seed == 7 and run.case_id == "01"


def test_bad_seeds_and_cases_are_refused_before_any_run(tmp_path):
    for text in ("0,x", "", "1,1", "-1", str(2**63)):
        with pytest.raises(ConfigurationError, match="--seeds"):
            parse_seeds(text)
    with pytest.raises(ConfigurationError, match="seeds must be distinct integers"):
        plan_runs(tmp_path, [0], ["t2v"], CASES, seeds=[])
    with pytest.raises(ConfigurationError, match=r"cases must be distinct numbers in 0\.\.1, got \[2\]"):
        plan_runs(tmp_path, [2], ["t2v"], CASES)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--prompts", "{csv}"], "has no prompt column"),
        (["--prompts", "{json}", "--cases", "2"], "--cases must be case numbers 0-1"),
        (["--seeds", "0,1", "--seed", "3"], "--seed and --seeds do not go together"),
        (["--seeds", "0,zero"], "--seeds must be comma-separated integers"),
    ],
)
def test_the_cli_refuses_bad_prompts_cases_and_seeds_before_any_work(tmp_path, capsys, args, message):
    (tmp_path / "bad.csv").write_text("title\nA.\n")
    (tmp_path / "p.json").write_text(json.dumps([{"caption": "A."}, {"caption": "B."}]))
    args = [a.format(csv=tmp_path / "bad.csv", json=tmp_path / "p.json") for a in args]
    assert main(["suite", "-o", str(tmp_path / "suite"), "--demo", *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "suite").exists()


def test_the_cli_runs_a_prompt_file_with_seeds(tmp_path, monkeypatch, capsys):
    import vchain.testing

    # The CLI's own glue on the toy generator: --demo's tiny Wan would only make this slower.
    monkeypatch.setattr(vchain.testing, "demo_pipeline", lambda seed, steps: VChainPipeline(generator=ToyGenerator()))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"caption": "A rock falls.", "law": "gravity"}\n{"caption": "Ice melts.", "law": "melting"}\n')
    root = tmp_path / "suite"
    args = ["suite", "-o", str(root), "--demo", "--prompts", str(prompts), "--cases", "1", "--variants", "t2v"]
    assert main([*args, "--seeds", "2,5"]) == 0
    assert "this process ran 2 run(s)" in capsys.readouterr().out
    records = [read_manifest(root / "01_ice_melts" / "t2v" / f"seed-{s}").case for s in (2, 5)]
    assert [(r.id, r.index, r.meta, r.seed) for r in records] == [
        ("01", 1, {"law": "melting"}, 2),
        ("01", 1, {"law": "melting"}, 5),
    ]


def test_the_tuned_runs_spread_over_all_processes_and_every_run_is_taken_once(tmp_path):
    runs = plan_runs(tmp_path, range(20), list(VARIANTS))
    shares = shard(runs, 5)
    # Striding over cases x variants (runs[i::5]) would give process 4 all twenty vchain runs.
    assert [sum(r.variant == "vchain" for r in share) for share in shares] == [4, 4, 4, 4, 4]
    assert sorted(r.id for share in shares for r in share) == sorted(r.id for r in runs)
    loads = [sum(run_cost(r.variant) for r in share) for share in shares]
    assert max(loads) - min(loads) <= max(run_cost(v) for v in VARIANTS)
    assert all(share == sorted(share, key=runs.index) for share in shares)  # plan order within a process


def test_two_processes_and_two_variants_each_get_half_the_tuning(tmp_path):
    runs = plan_runs(tmp_path, [4, 13], ["vchain", "t2v"])
    assert [[(r.case, r.variant) for r in share] for share in shard(runs, 2)] == [
        [(4, "vchain"), (4, "t2v")],
        [(13, "vchain"), (13, "t2v")],
    ]
    assert run_cost("vchain") > run_cost("no-visual-thought") > run_cost("t2v") > run_cost("no-sparse-tuning")


def test_sharding_is_the_same_in_every_process_and_covers_more_processes_than_runs(tmp_path):
    runs = plan_runs(tmp_path, [0, 1], ["vchain"])
    assert shard(runs, 3) == shard(runs, 3) == [[runs[0]], [runs[1]], []]
    with pytest.raises(ConfigurationError, match="num_processes must be a positive number, got 0"):
        shard(runs, 0)
