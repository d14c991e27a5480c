"""Test-time search on the tiny stack, with a judge whose scores the tests set: the choice, the resume,
the re-planning round and what each costs."""

import json
import logging

import pytest

from vchain import SearchConfig, VChainPipeline, prompts
from vchain.backends.wan import WanLoRATuner, WanVideoGenerator
from vchain.errors import ConfigurationError, StageError, VChainError
from vchain.interfaces import Adapter, Tuner
from vchain.judging import DIMENSIONS, judge_runs
from vchain.testing import (
    DEMO_CAPTIONS,
    DEMO_PROMPT,
    DrawingImageBackend,
    ScriptedJudge,
    ScriptedReasoner,
    tiny_wan_pipeline,
)


@pytest.fixture(scope="module")
def wan():
    return tiny_wan_pipeline()


class Counting(Tuner):
    """A tuner whose adapters count how often they are applied (a merge each time)."""

    def __init__(self, inner):
        self.inner, self.tunes, self.applied = inner, 0, 0

    def describe(self):
        return self.inner.describe()

    def tune(self, generator, pairs):
        self.tunes += 1
        return _CountedAdapter(self.inner.tune(generator, pairs), self)

    def load_adapter(self, directory):
        return _CountedAdapter(self.inner.load_adapter(directory), self)


class _CountedAdapter(Adapter):
    def __init__(self, inner, tuner):
        self.inner, self.tuner, self.report = inner, tuner, inner.report

    def apply(self, generator):
        self.tuner.applied += 1
        return self.inner.apply(generator)

    def save(self, directory):
        return self.inner.save(directory)


def make_pipe(wan, judge=None, reasoner=None):
    generator = WanVideoGenerator(
        wan, height=32, width=32, num_frames=5, num_inference_steps=2, max_sequence_length=256, fps=8
    )
    real, seeds = generator.sample, []

    def sample(prompt, *, seed=None, **overrides):
        seeds.append(seed)
        return real(prompt, seed=seed, **overrides)

    generator.sample = sample
    pipe = VChainPipeline(
        reasoner or ScriptedReasoner(DEMO_CAPTIONS),
        DrawingImageBackend(),
        generator,
        Counting(WanLoRATuner(steps=2, learning_rate=1e-3, seed=0)),
        judge=judge,
    )
    pipe.seeds = seeds
    pipe.set_progress_bar_config(disable=True)
    return pipe


def manifest(path):
    return json.loads((path / "manifest.json").read_text())


def judge_calls(m):
    return [(c["index"], c["outcome"]) for c in m["calls"] if c["step"] == "judge"]


def test_the_best_candidate_is_chosen_copied_and_every_candidate_is_kept(wan, tmp_path):
    judge = ScriptedJudge([2, {"physics": 5, "commonsense": 4, "causality": 4}, 4])
    pipe = make_pipe(wan, judge)
    out = pipe(DEMO_PROMPT, tmp_path, seed=10, search=SearchConfig(candidates=3))

    assert pipe.seeds == [10, 11, 12] and pipe.tuner.tunes == 1 and pipe.tuner.applied == 1
    assert len(judge.calls) == 3 and all(call == (DEMO_PROMPT, 5) for call in judge.calls)
    # seed 11: (5 + 4 + 4) / 3 beats seed 12's 4.0 and seed 10's 2.0
    video = (tmp_path / "video.mp4").read_bytes()
    assert video == (tmp_path / "candidates" / "seed-11.mp4").read_bytes()
    assert (
        out.video_path == tmp_path / "video.mp4" and len(out.frames) == 5 and out.prompt == out.chain.composite_prompt
    )
    m = manifest(tmp_path)
    sampling = m["stages"]["sampling"]
    search = sampling["search"]
    assert (search["winner_round"], search["winner_seed"], sampling["seed"]) == (0, 11, 11)
    candidates = search["rounds"][0]["candidates"]
    assert [c["seed"] for c in candidates] == [10, 11, 12]
    assert [c["video"] for c in candidates] == [f"candidates/seed-{s}.mp4" for s in (10, 11, 12)]
    assert [c["objective"] for c in candidates] == [2.0, pytest.approx(13 / 3), 4.0]
    assert candidates[1]["scores"]["frame_quality"] == 3 and candidates[1]["reasons"]["physics"] == (
        "physics scored 5 on call 2."
    )
    assert {f"candidates/seed-{s}.mp4" for s in (10, 11, 12)} | {"video.mp4"} == set(sampling["outputs"])
    assert {"sampling", "judging", "save"} <= set(sampling["seconds"]) and "replanning" not in sampling["seconds"]
    assert judge_calls(m) == [(10, "ok"), (11, "ok"), (12, "ok")]
    assert sampling["inputs"]["search"] == {
        "candidates": 3,
        "objective": ["physics", "commonsense", "causality"],
        "rounds": 0,
        "accept": None,
    }
    # the winner's scores are the judge's entry for video.mp4: judging the run with the same judge asks nothing
    (judged,) = judge_runs(tmp_path, judge).runs
    assert judged.cached and judged.scores.physics == 5 and len(judge.calls) == 3


def test_ties_go_to_the_lower_seed_then_the_earlier_round_and_the_objective_picks_the_dimensions():
    from vchain.run import CandidateRecord, RoundRecord
    from vchain.search import best_candidate, objective_score

    def candidate(seed, objective=None, **scores):
        return CandidateRecord(seed=seed, video=f"candidates/seed-{seed}.mp4", objective=objective, scores=scores)

    rounds = [
        RoundRecord(round=0, candidates=[candidate(3, 4.0), candidate(1, 4.0), candidate(2, 3.5), candidate(0)]),
        RoundRecord(round=1, candidates=[candidate(1, 4.0), candidate(5, 2.0)]),
    ]
    chosen_round, chosen = best_candidate(rounds)
    assert (chosen_round.round, chosen.seed) == (0, 1)  # seed 0 is not judged yet; seed 1 of round 0 first
    scores = dict.fromkeys(DIMENSIONS, 3) | {"frame_quality": 5, "physics": 2}
    assert objective_score(scores, ("physics",)) == 2.0
    assert objective_score(scores, ("frame_quality", "physics")) == 3.5
    assert objective_score(scores, SearchConfig().objective) == pytest.approx(8 / 3)
    with pytest.raises(VChainError, match="no candidate of the search has been judged"):
        best_candidate([RoundRecord(round=0, candidates=[candidate(0)])])


def test_a_judge_failure_fails_the_run_and_the_rerun_judges_only_what_is_left(wan, tmp_path):
    class Failing(ScriptedJudge):
        """Fails on its second call when told to (one judge class: the search's identity stays the same)."""

        fail = True

        def score(self, prompt, frames):
            if self.fail and len(self.calls) == 1:
                self.calls.append((prompt, len(frames)))
                raise RuntimeError("judge server down")
            return super().score(prompt, frames)

    pipe = make_pipe(wan, Failing([3, 3, 5, 2]))
    with pytest.raises(StageError, match="judge server down"):
        pipe(DEMO_PROMPT, tmp_path, search=SearchConfig(candidates=3))
    m = manifest(tmp_path)
    assert m["stages"]["sampling"]["status"] == "failed" and not (tmp_path / "video.mp4").exists()
    assert [c["objective"] for c in m["stages"]["sampling"]["search"]["rounds"][0]["candidates"]] == [3.0, None, None]
    assert judge_calls(m) == [(0, "ok"), (1, "failed")]

    pipe.judge = Failing([5, 2])
    pipe.judge.fail = False
    pipe(DEMO_PROMPT, tmp_path, search=SearchConfig(candidates=3))
    assert pipe.seeds == [0, 1, 2] and pipe.tuner.tunes == 1  # nothing sampled or tuned twice
    assert len(pipe.judge.calls) == 2  # seeds 1 and 2 only
    m = manifest(tmp_path)
    assert judge_calls(m) == [(0, "ok"), (1, "failed"), (1, "ok"), (2, "ok")]
    assert m["usage"]["requests"] == len(m["calls"]) and m["stages"]["sampling"]["search"]["winner_seed"] == 1


def test_a_search_killed_while_sampling_resumes_the_missing_candidates_only(wan, tmp_path):
    pipe = make_pipe(wan, ScriptedJudge([4, 3, 3]))
    real = pipe.generator.sample

    def crash_on_seed_2(prompt, *, seed=None, **overrides):
        if seed == 2:
            raise KeyboardInterrupt
        return real(prompt, seed=seed, **overrides)

    pipe.generator.sample = crash_on_seed_2
    with pytest.raises(KeyboardInterrupt):
        pipe(DEMO_PROMPT, tmp_path, search=SearchConfig(candidates=4))
    (tmp_path / "candidates" / "seed-9.mp4").write_bytes(b"a file no record names")
    pipe.generator.sample = real
    pipe(DEMO_PROMPT, tmp_path, search=SearchConfig(candidates=4))
    assert pipe.seeds == [0, 1, 2, 3]  # seeds 0 and 1 were on disk: each seed sampled once
    assert len(pipe.judge.calls) == 4 and pipe.tuner.tunes == 1
    assert sorted(p.name for p in (tmp_path / "candidates").iterdir()) == [f"seed-{s}.mp4" for s in range(4)]


def test_a_finished_search_is_reused_and_a_changed_one_searches_again(wan, tmp_path, caplog):
    pipe = make_pipe(wan, ScriptedJudge([3, 4]))
    pipe(DEMO_PROMPT, tmp_path, search=SearchConfig(candidates=2))
    record = (tmp_path / "manifest.json").read_bytes()
    out = pipe(DEMO_PROMPT, tmp_path, search=SearchConfig(candidates=2))
    assert (tmp_path / "manifest.json").read_bytes() == record and len(pipe.judge.calls) == 2 and out.ran == ()
    assert len(out.frames) == 5 and pipe.seeds == [0, 1]
    with caplog.at_level(logging.INFO):
        pipe(DEMO_PROMPT, tmp_path, search=SearchConfig(candidates=3))
    assert "search.candidates: 2 -> 3" in caplog.text and len(pipe.judge.calls) == 5 and pipe.tuner.tunes == 1
    assert len(manifest(tmp_path)["stages"]["sampling"]["search"]["rounds"][0]["candidates"]) == 3


def test_a_round_below_accept_replans_from_the_judges_critique(wan, tmp_path):
    reasoner = ScriptedReasoner(DEMO_CAPTIONS)
    judge = ScriptedJudge([{"physics": 2, "causality": 1}, {"physics": 3}, 3, {"physics": 5, "commonsense": 5}])
    pipe = make_pipe(wan, judge, reasoner)
    out = pipe(DEMO_PROMPT, tmp_path, search=SearchConfig(candidates=2, rounds=2, accept=4.0))

    asked = [name for name, _ in reasoner.calls]
    assert asked == ["plan", "next_keyframe", "next_keyframe", "revise", "next_keyframe", "next_keyframe"]
    critique = reasoner.calls[3][1]
    # round 0's best (seed 1: physics 3, commonsense 3, causality 3) is what the reasoner is told about
    assert "physics: 3/5. physics scored 3 on call 2." in critique and "call 1" not in critique
    assert len(judge.calls) == 4 and pipe.tuner.tunes == 2 and pipe.tuner.applied == 2
    assert pipe.seeds == [0, 1, 0, 1]
    assert out.chain.concise_prompt.startswith("Revision 1") and out.prompt == out.chain.composite_prompt
    m = manifest(tmp_path)
    search = m["stages"]["sampling"]["search"]
    assert (search["winner_round"], search["winner_seed"]) == (1, 1) and len(search["rounds"]) == 2
    assert search["rounds"][1]["critique"] == critique and search["rounds"][1]["folder"] == "rounds/1"
    assert (tmp_path / "video.mp4").read_bytes() == (tmp_path / "rounds/1/candidates/seed-1.mp4").read_bytes()
    assert (tmp_path / "rounds/1/chain.json").is_file() and (tmp_path / "rounds/1/lora").is_dir()
    assert (tmp_path / "candidates/seed-0.mp4").is_file()  # every round stays on disk
    assert m["stages"]["sampling"]["prompt"] == out.chain.composite_prompt
    assert {"sampling", "judging", "replanning", "tuning"} <= set(m["stages"]["sampling"]["seconds"])
    steps = [c["step"] for c in m["calls"]]
    assert steps.count("revise") == 1 and steps.count("judge") == 4 and steps.count("perception") == 4

    again = make_pipe(wan, ScriptedJudge([1]), ScriptedReasoner(DEMO_CAPTIONS))
    reused = again(DEMO_PROMPT, tmp_path, search=SearchConfig(candidates=2, rounds=2, accept=4.0))
    assert again.reasoner.calls == [] and again.judge.calls == [] and again.seeds == []
    assert reused.chain.concise_prompt == out.chain.concise_prompt


def test_a_round_that_reaches_accept_stops_the_search(wan, tmp_path):
    reasoner = ScriptedReasoner(DEMO_CAPTIONS)
    pipe = make_pipe(wan, ScriptedJudge([2, 4]), reasoner)
    pipe(DEMO_PROMPT, tmp_path, search=SearchConfig(candidates=2, rounds=3, accept=4.0))
    assert "revise" not in [name for name, _ in reasoner.calls] and not (tmp_path / "rounds").exists()


def test_a_search_killed_while_replanning_asks_nothing_it_paid_for(wan, tmp_path):
    class CrashAfterRevise(ScriptedReasoner):
        crashed = False

        def next_keyframe(self, chain, composite):
            if chain.concise_prompt.startswith("Revision") and len(chain.images) == 2 and not self.crashed:
                self.crashed = True
                raise RuntimeError("connection lost")
            return super().next_keyframe(chain, composite)

    reasoner = CrashAfterRevise(DEMO_CAPTIONS)
    pipe = make_pipe(wan, ScriptedJudge([2, 2, 5, 3]), reasoner)
    search = SearchConfig(candidates=2, rounds=1, accept=4.0)
    with pytest.raises(StageError, match="connection lost"):
        pipe(DEMO_PROMPT, tmp_path, search=search)
    before = [name for name, _ in reasoner.calls]
    assert before.count("revise") == 1 and len(pipe.judge.calls) == 2
    pipe(DEMO_PROMPT, tmp_path, search=search)
    after = [name for name, _ in reasoner.calls][len(before) :]
    assert after == ["next_keyframe"]  # the revised plan and the first caption were paid for already
    assert len(pipe.judge.calls) == 4 and pipe.tuner.tunes == 2
    assert manifest(tmp_path)["stages"]["sampling"]["search"]["winner_round"] == 1


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"candidates": 0}, "candidates must be greater than or equal to 1, got 0"),
        ({"candidates": 2.0}, "candidates must be a valid integer, got 2.0"),
        ({"candidates": "4"}, "candidates must be a valid integer, got '4'"),
        ({"objective": ("physics", "gravity")}, "unknown dimension(s) ['gravity']"),
        ({"objective": "physics"}, "must be a tuple of dimension names such as ('physics',)"),
        ({"objective": ()}, "must name at least one dimension"),
        ({"rounds": 1, "accept": 5.5}, "accept must be less than or equal to 5, got 5.5"),
        ({"rounds": 1, "accept": 0}, "accept must be greater than or equal to 1, got 0"),
        ({"candidates": 2, "accept": 4.0}, "accept=4.0 applies only to re-planning"),
    ],
)
def test_bad_search_settings_are_named(settings, message):
    with pytest.raises(ConfigurationError, match="invalid SearchConfig") as error:
        SearchConfig(**settings)
    assert message in str(error.value)


@pytest.mark.parametrize(
    ("judge", "kwargs", "message"),
    [
        (None, {"search": SearchConfig(candidates=2)}, "needs a judge to score the candidates"),
        (ScriptedJudge(), {"search": {"candidates": 2}}, r"search must be a SearchConfig, got dict; use SearchConfig"),
        (ScriptedJudge(), {"search": SearchConfig(candidates=2), "seed": None}, "search needs a seed"),
        (ScriptedJudge(), {"search": SearchConfig(candidates=2), "variant": "no-sparse-tuning"}, "does not apply"),
        (ScriptedJudge(), {"search": SearchConfig(rounds=1), "variant": "t2v"}, "'t2v' has none"),
        (ScriptedJudge(), {"search": SearchConfig(candidates=2), "stop_after": "tuning"}, "ends the run before"),
    ],
)
def test_a_search_that_cannot_run_is_refused_before_any_work(wan, tmp_path, judge, kwargs, message):
    pipe = make_pipe(wan, judge)
    with pytest.raises(ConfigurationError, match=message):
        pipe(DEMO_PROMPT, tmp_path / "run", **kwargs)
    assert pipe.reasoner.calls == [] and pipe.seeds == [] and not (tmp_path / "run").exists()


def test_search_needs_a_folder_and_rounds_need_a_reasoner_that_revises(wan, tmp_path):
    from vchain.chain import NextKeyframe
    from vchain.interfaces import Reasoner
    from vchain.testing import example_plan

    class NoRevise(Reasoner):
        def plan(self, prompt):
            return example_plan(prompt)

        def next_keyframe(self, chain, composite):
            return NextKeyframe(caption="x", is_last=True)

    with pytest.raises(ConfigurationError, match="search needs output_dir"):
        make_pipe(wan, ScriptedJudge())(DEMO_PROMPT, search=SearchConfig(candidates=2))
    pipe = make_pipe(wan, ScriptedJudge(), NoRevise())
    with pytest.raises(ConfigurationError, match="NoRevise does not implement revise"):
        pipe(DEMO_PROMPT, tmp_path, search=SearchConfig(rounds=1))
    assert not (tmp_path / "manifest.json").exists()
    with pytest.raises(ConfigurationError, match=r"judge must be a vchain\.interfaces\.Judge, got ScriptedReasoner"):
        VChainPipeline(judge=ScriptedReasoner())


def test_one_candidate_and_no_round_is_a_plain_run(wan, tmp_path):
    pipe = make_pipe(wan, ScriptedJudge())
    pipe(DEMO_PROMPT, tmp_path, search=SearchConfig())
    assert pipe.judge.calls == [] and manifest(tmp_path)["stages"]["sampling"]["search"] is None
    assert not (tmp_path / "candidates").exists()


# -- the summary, the report and the command line


def test_the_suite_summary_and_the_report_show_a_best_of_n_row(wan, tmp_path):
    from vchain.report import write_report
    from vchain.suite import run_suite

    judge = ScriptedJudge([2, 4, {"physics": 5}, 1])  # vchain: seeds 0, 1; then t2v: seeds 0, 1
    root = tmp_path / "suite"
    run_suite(
        lambda: make_pipe(wan, judge),
        root,
        cases=[13],
        variants=["vchain", "t2v", "no-sparse-tuning"],
        search=SearchConfig(candidates=2, rounds=1, accept=3.0),
    )
    with open(root / "summary.csv") as f:
        rows = {(row["run"].split("/")[-1], row["variant"]): row for row in __import__("csv").DictReader(f)}
    assert len(rows) == 5 and all(row["status"] == "done" for row in rows.values())
    best = rows[("vchain", "best-of-n")]
    assert (best["candidates"], best["chosen_round"], best["chosen_seed"]) == ("2", "0", "1")
    assert (best["objective"], best["first_objective"], best["objective_min"], best["objective_max"]) == (
        "4.0",
        "2.0",
        "2.0",
        "4.0",
    )
    assert best["physics"] == "4" and rows[("vchain", "vchain")]["objective"] == ""
    # t2v searches seeds but cannot re-plan; the interpolated variant has no seed to search
    t2v = rows[("t2v", "best-of-n")]
    assert (t2v["chosen_seed"], t2v["objective"], t2v["first_objective"]) == ("0", "3.667", "3.667")
    assert ("no-sparse-tuning", "best-of-n") not in rows and len(judge.calls) == 4
    assert "best-of-n" in (root / "summary.md").read_text()

    page = write_report(root, root / "report.html").read_text()
    assert "Test-time search" in page and "vchain best-of-n" in page and "t2v best-of-n" in page
    assert 'href="13_an_egg_is_dropped_onto_a_pillow/vchain/candidates/seed-1.mp4"' in page


TINY = ["--height", "32", "--width", "32", "--frames", "5", "--steps", "2", "--dtype", "float32", "--tune-steps", "2"]


@pytest.fixture(scope="module")
def tiny_wan(tmp_path_factory, wan):
    folder = tmp_path_factory.mktemp("tiny_wan")
    wan.save_pretrained(folder)
    return str(folder)


def test_generate_searches_and_replans_through_the_openai_stand_in(server, tiny_wan, tmp_path, capsys):
    from vchain.cli import main
    from vchain.testing.openai_server import scripted_scores

    urls = ["--base-url", server.base_url, "--image-base-url", server.base_url, "--judge-base-url", server.base_url]
    run = tmp_path / "run"
    args = ["generate", DEMO_PROMPT, "-o", str(run), "--model", tiny_wan, *TINY, *urls]
    assert main([*args, "--candidates", "2", "--rounds", "1", "--accept", "5", "--objective", "physics"]) == 0
    m = manifest(run)
    search = m["stages"]["sampling"]["search"]
    judged = [c for r in search["rounds"] for c in r["candidates"]]
    assert len(search["rounds"]) == 2 and len(judged) == 4  # scripted scores stay below 5: both rounds ran
    assert m["stages"]["sampling"]["inputs"]["judge"]["judge"]["model"] == "gpt-4o"
    chats = server.requests_to("chat")
    judges = [r for r in chats if r.body["response_format"]["json_schema"]["name"] == "VideoScores"]
    revisions = [r for r in chats if r.body["messages"][0]["content"] == prompts.REVISE_SYSTEM]
    assert len(judges) == 4 and len(revisions) == 1
    # what the server scored is what the manifest says, and the critique carries round 0's best reasons
    assert [c["scores"]["physics"] for c in judged] == [scripted_scores(r.body).physics for r in judges]
    leader = max(search["rounds"][0]["candidates"], key=lambda c: (c["objective"], -c["seed"]))
    sent = revisions[0].body["messages"][1]["content"]
    assert (
        search["rounds"][1]["critique"]
        == f"- physics: {leader['scores']['physics']}/5. {leader['reasons']['physics']}"
    )
    assert search["rounds"][1]["critique"] in (sent if isinstance(sent, str) else sent[0]["text"])
    out = capsys.readouterr().out
    assert f"round {search['winner_round']}, seed {search['winner_seed']} is the best of 4 candidate(s)" in out
    assert main([*args, "--candidates", "2", "--rounds", "1", "--accept", "5", "--objective", "physics"]) == 0
    assert len(server.requests_to("chat")) == len(chats)  # a re-run asks nothing


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--judge", "openai"], "--judge does not apply without --candidates above 1 or --rounds"),
        (["--candidates", "0"], "candidates must be greater than or equal to 1, got 0"),
        (["--rounds", "1", "--accept", "6"], "accept must be less than or equal to 5, got 6.0"),
        (["--candidates", "2", "--objective", "gravity"], "unknown dimension(s) ['gravity']"),
        (["--candidates", "2", "--variant", "no-sparse-tuning"], "search does not apply to 'no-sparse-tuning'"),
        (["--candidates", "2", "--judge", "claude"], "--judge must be openai or transformers:ID_OR_DIR"),
    ],
)
def test_generate_refuses_a_bad_search_before_loading_any_model(tmp_path, capsys, monkeypatch, flags, message):
    from vchain.cli import main

    monkeypatch.setattr("vchain.backends.wan.WanVideoGenerator.from_pretrained", lambda *a, **k: pytest.fail())
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    assert main(["generate", DEMO_PROMPT, "-o", str(tmp_path / "run"), *flags]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "run").exists()


# -- Reasoner.revise in the built-in reasoners


def test_the_openai_reasoner_revises_with_the_chain_and_the_critique(server, client):
    from vchain.backends.openai import OpenAIReasoner
    from vchain.chain import ScenePlan, ThoughtChain
    from vchain.testing import example_plan

    chain = ThoughtChain.from_plan(DEMO_PROMPT, example_plan(DEMO_PROMPT))
    chain.key_frames = list(DEMO_CAPTIONS)
    plan = OpenAIReasoner(client=client).revise(chain, "- physics: 2/5. The egg bounces like rubber.")
    assert isinstance(plan, ScenePlan)
    (request,) = server.requests_to("chat")
    system, user = request.body["messages"]
    assert system["content"] == prompts.REVISE_SYSTEM and request.body["response_format"]["json_schema"]["name"] == (
        "ScenePlan"
    )
    assert "The egg bounces like rubber." in user["content"] and chain.consequences in user["content"]
    assert all(caption in user["content"] for caption in chain.captions)


def test_the_local_reasoner_revises_within_the_plan_schema():
    from vchain.backends.transformers import TransformersReasoner
    from vchain.chain import ScenePlan, ThoughtChain
    from vchain.testing import example_plan
    from vchain.testing.tiny_vlm import tiny_vlm

    reasoner = TransformersReasoner.from_pretrained(tiny_vlm("qwen2_5_vl"), max_new_tokens=160, max_string_length=16)
    chain = ThoughtChain.from_plan(DEMO_PROMPT, example_plan(DEMO_PROMPT))
    plan = reasoner.revise(chain, "- physics: 2/5. The egg bounces like rubber.")
    assert isinstance(plan, ScenePlan) and all(0 < len(text) <= 16 for text in plan.model_dump().values())
    assert reasoner.supports("revise")


def test_the_suite_takes_the_same_search_options_and_refuses_the_same_mistakes(tmp_path, capsys, monkeypatch):
    from vchain.cli import main

    monkeypatch.setattr("vchain.suite.run_suite", lambda *a, **k: pytest.fail("nothing may run"))
    root = str(tmp_path / "suite")
    assert main(["suite", "-o", root, "--demo", "--judge", "openai"]) == 2
    assert "--judge does not apply without --candidates above 1 or --rounds" in capsys.readouterr().err
    assert main(["suite", "-o", root, "--demo", "--candidates", "2", "--accept", "4"]) == 2
    assert "accept=4.0 applies only to re-planning" in capsys.readouterr().err
    assert main(["suite", "-o", root, "--demo", "--candidates", "2"]) == 2  # no key, no judge server
    assert "OPENAI_API_KEY" in capsys.readouterr().err and not (tmp_path / "suite").exists()
