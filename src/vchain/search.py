"""Test-time search: several seeds sampled with the one tuned adapter, a judge as the verifier, and rounds
that re-plan the keyframes from the judge's critique.

Sampling is cheap next to reasoning and tuning: once the adapter is tuned, each extra seed costs one
sampling call and one judge call. `SearchConfig(candidates=N)` samples seeds `seed, seed+1, ...` with the
adapter applied once for all of them, has the judge score each, and keeps the best by the mean of the
`objective` dimensions (ties: the lower seed) as `video.mp4`. With `rounds`, while the best is below
`accept` the judge's reasons for the latest round's best go to `Reasoner.revise`, whose new plan is drawn,
tuned and searched like the first; the winner is the best over all rounds.

In the run folder (`vchain.run` keeps the records, `docs/search.md` shows the layout):
- `candidates/seed-<s>.mp4`, and for a re-planned round `rounds/<r>/` with its chain, `lora/` and
  `candidates/`; `video.mp4` is the winner copied byte for byte, never sampled again;
- the sampling stage's `search` record: every round (its critique, paid answers and candidates with their
  seeds, scores and reasons) and the winning round and seed; its `seconds` split sampling, judging,
  re-planning and tuning;
- every judge and reasoner request in the manifest's `calls`. A resumed search samples and judges only
  the candidates not yet recorded, and asks nothing it has paid for.
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from PIL import Image
from pydantic import Field, field_validator, model_validator

from vchain import _io, prompts
from vchain.chain import ThoughtChain
from vchain.config import Config
from vchain.errors import ConfigurationError, VChainError
from vchain.interfaces import Adapter
from vchain.judging import (
    DIMENSIONS,
    SCORES_FILE,
    JudgingConfig,
    ScoreEntry,
    VideoScores,
    ask_judge,
    judge_dimensions,
    judge_identity,
    read_scores,
)
from vchain.run import (
    CANDIDATES_DIR,
    LORA_DIR,
    ROUNDS_DIR,
    CandidateRecord,
    Manifest,
    RoundRecord,
    SamplingRecord,
    SearchRecord,
    chain_files,
    file_digest,
    fingerprint,
)

if TYPE_CHECKING:
    from vchain.run import RunDirectory
    from vchain.variants import Variant

logger = logging.getLogger(__name__)

# The judge's scale tops out at 5: a round whose best scores that has nothing left to fix.
TOP_SCORE = 5.0


class SearchConfig(Config):
    """Settings of the test-time search (`pipe(prompt, output_dir, search=SearchConfig(...))`)."""

    candidates: int = Field(
        1, ge=1, description="seeds sampled per round (seed, seed+1, ...), each scored by the judge; 1: no search"
    )
    objective: tuple[str, ...] = Field(
        ("physics", "commonsense", "causality"),
        description="the judge's dimensions whose mean ranks the candidates",
    )
    rounds: int = Field(
        0, ge=0, description="re-planning rounds: the reasoner revises the keyframes from the judge's critique"
    )
    accept: float | None = Field(
        None,
        ge=1,
        le=5,
        description="re-plan only while the best objective score is below this (1-5; None: until it scores 5)",
    )

    @field_validator("objective", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        # A list is as good as a tuple here; a bare string would be read letter by letter.
        if isinstance(value, str):
            raise ValueError(f"must be a tuple of dimension names such as ({value!r},)")
        return tuple(value) if isinstance(value, list) else value

    @field_validator("objective")
    @classmethod
    def _known(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [name for name in value if name not in DIMENSIONS]
        if unknown:
            raise ValueError(f"names unknown dimension(s) {unknown}; the judge scores {list(DIMENSIONS)}")
        if not value or len(set(value)) != len(value):
            raise ValueError("must name at least one dimension, each once")
        return value

    @model_validator(mode="after")
    def _accept_needs_rounds(self) -> SearchConfig:
        if self.accept is not None and self.rounds == 0:
            raise ValueError(f"accept={self.accept} applies only to re-planning; give rounds >= 1 or leave it None")
        return self

    @property
    def searches(self) -> bool:
        """Whether there is anything to search (more than one candidate, or re-planning)."""
        return self.candidates > 1 or self.rounds > 0

    def seeds(self, seed: int) -> list[int]:
        return [seed + i for i in range(self.candidates)]


def objective_score(scores: dict[str, int], objective: tuple[str, ...]) -> float:
    """The mean of `scores` over the objective's dimensions (a `VChainError` if the judge left one out)."""
    missing = [d for d in objective if d not in scores]
    if missing:
        raise VChainError(f"the judge did not score the objective's {missing}; it scored {list(scores)}")
    return sum(scores[d] for d in objective) / len(objective)


def best_candidate(rounds: list[RoundRecord]) -> tuple[RoundRecord, CandidateRecord]:
    """The judged candidate with the highest objective; ties go to the lower seed, then the earlier round."""
    judged = [(r, c) for r in rounds for c in r.candidates if c.objective is not None]
    if not judged:
        raise VChainError("no candidate of the search has been judged")
    return min(judged, key=lambda rc: (-rc[1].objective, rc[1].seed, rc[0].round))


@dataclass
class SearchResult:
    """What a search made: the winner's frames and prompt, and the final round's chain and adapter."""

    frames: list[Image.Image]
    prompt: str
    chain: ThoughtChain | None
    adapter: Adapter | None


class Search:
    """One search in a run folder, resumable from its `SearchRecord` (the sampling stage's `search`).

    `pipe` is the `VChainPipeline` that runs it (its components and its stage steps), which imports this module.
    """

    judging = JudgingConfig()

    def __init__(
        self, pipe: Any, run: RunDirectory, record: SamplingRecord, config: SearchConfig, seed: int, prompt: str
    ):
        self.pipe, self.run, self.record, self.config, self.seed, self.prompt = pipe, run, record, config, seed, prompt
        if record.search is None:
            record.search = SearchRecord(judge=judge_identity(pipe.judge, self.judging))
        self.state = record.search
        self.meter = run.meter()

    def __call__(self, chain: ThoughtChain | None, adapter: Adapter | None, text: str) -> SearchResult:
        threshold = self.config.accept if self.config.accept is not None else TOP_SCORE
        number = 0
        while True:
            current = self._round(number)
            if number > 0:
                chain = self._replan(current, chain)
                adapter = self._tune(current, chain) if self.pipe.tuner is not None and adapter is not None else None
                text = self.pipe.composite_prompt(chain)
            self._sample(current, text, adapter)
            self._judge(current)
            _, best = best_candidate(self.state.rounds)
            logger.info("Search round %d: best so far %.2f (seed %d)", number, best.objective, best.seed)
            if best.objective >= threshold or number == self.config.rounds:
                break
            number += 1
            if len(self.state.rounds) <= number:
                _, leader = best_candidate([current])
                critique = prompts.critique_text(leader.scores, leader.reasons, self.config.objective)
                self.state.rounds.append(RoundRecord(round=number, folder=f"{ROUNDS_DIR}/{number}", critique=critique))
                self.run.save()
        return self._finish(chain, adapter)

    # -- a round

    def _round(self, number: int) -> RoundRecord:
        if not self.state.rounds:
            self.state.rounds.append(RoundRecord(round=0))
        return self.state.rounds[number]

    def _where(self, current: RoundRecord, name: str) -> str:
        return f"{current.folder}/{name}" if current.folder else name

    def _replan(self, current: RoundRecord, previous: ThoughtChain) -> ThoughtChain:
        from vchain.reasoning import keyframe_frame, reason, revise

        pipe, start = self.pipe, time.perf_counter()
        log = self.run.reasoning_log(current, current.folder)
        try:
            chain = self.run.partial_chain(current.folder, current)
            if chain is None:
                logger.info("Search round %d: revising the plan from the critique", current.round)
                plan = revise(
                    previous, current.critique, pipe.reasoner, pipe.reasoning, meter=self.meter, index=current.round
                )
                chain = ThoughtChain.from_plan(self.prompt, plan)
                log.commit(chain)
            if not current.reasoned:
                result = reason(
                    self.prompt,
                    pipe.reasoner,
                    pipe.image_backend,
                    pipe.reasoning,
                    chain=chain,
                    log=log,
                    frame=keyframe_frame(pipe.reasoning, pipe.generator),
                    meter=self.meter,
                )
                chain, current.stop_reason, current.reasoned = result.chain, result.stop_reason, True
                self.run.add_outputs("sampling", [self._where(current, name) for name in chain_files(chain)])
        finally:
            self._spent("replanning", start)
        return chain

    def _tune(self, current: RoundRecord, chain: ThoughtChain) -> Adapter:
        start, lora = time.perf_counter(), self.run.path / current.folder / LORA_DIR
        try:
            if current.tuned and self._intact(self._where(current, LORA_DIR)):
                logger.info("Search round %d: loading the adapter tuned earlier from %s", current.round, lora)
                return self.pipe.tuner.load_adapter(lora)
            adapter = self.pipe._tune(chain)
            if self.pipe.save_adapter:
                self.run.write_adapter(adapter, current.folder)
                current.tuned = True
            return adapter
        finally:
            self._spent("tuning", start)

    def _intact(self, prefix: str) -> bool:
        """Whether the recorded artifacts under `prefix` (a file or a folder) are all on disk unchanged."""
        names = [n for n in self.record.outputs if n == prefix or n.startswith(f"{prefix}/")]
        return bool(names) and all(
            (self.run.path / n).is_file() and file_digest(self.run.path / n) == self.record.outputs[n] for n in names
        )

    def _sample(self, current: RoundRecord, text: str, adapter: Adapter | None) -> None:
        """Every seed of the round not yet on disk, sampled with the adapter applied once for all of them."""
        from vchain.sampling import render

        current.candidates = [c for c in current.candidates if self._intact(c.video)]
        done = {c.seed for c in current.candidates}
        missing = [s for s in self.config.seeds(self.seed) if s not in done]
        if not missing:
            return
        generator, start = self.pipe.generator, time.perf_counter()
        try:
            with adapter.apply(generator) if adapter is not None else nullcontext():
                for seed in missing:
                    rendered = render(generator, text, None, seed=seed)
                    name = self._where(current, f"{CANDIDATES_DIR}/seed-{seed}.mp4")
                    self.run.write_video(rendered.frames, generator.fps, name)
                    current.candidates.append(CandidateRecord(seed=seed, video=name))
                    current.candidates.sort(key=lambda c: c.seed)
                    self.run.save()
        finally:
            self._spent("sampling", start)

    def _judge(self, current: RoundRecord) -> None:
        start = time.perf_counter()
        try:
            for candidate in current.candidates:
                if candidate.objective is not None:
                    continue
                scores = ask_judge(
                    self.pipe.judge,
                    self.prompt,
                    self.run.path / candidate.video,
                    self.judging,
                    self.meter,
                    index=candidate.seed,
                )
                candidate.scores = {d: scores.score(d) for d in scores.dimensions}
                candidate.reasons = {d: scores.reason(d) for d in scores.dimensions}
                candidate.objective = objective_score(candidate.scores, self.config.objective)
                self.run.save()
        finally:
            self._spent("judging", start)

    def _spent(self, what: str, start: float) -> None:
        seconds = self.record.seconds
        seconds[what] = round(seconds.get(what, 0.0) + time.perf_counter() - start, 3)

    # -- the winner

    def _finish(self, chain: ThoughtChain | None, adapter: Adapter | None) -> SearchResult:
        from vchain.video import read_video

        winning_round, winner = best_candidate(self.state.rounds)
        self.state.winner_round, self.state.winner_seed = winning_round.round, winner.seed
        self.record.seconds["save"] = self.run.copy_video(winner.video)
        self._keep_scores(winner)
        frames = read_video(self.run.video_path)
        prompt = self._prompt(winning_round, chain)
        self.record.prompt, self.record.seed = prompt, winner.seed
        self.record.frames, self.record.size = len(frames), frames[0].size
        logger.info(
            "Search: round %d, seed %d wins with %.2f over %s",
            winning_round.round,
            winner.seed,
            winner.objective,
            ", ".join(self.config.objective),
        )
        return SearchResult(frames, prompt, chain, adapter)

    def _keep_scores(self, winner: CandidateRecord) -> None:
        """The winner's scores go into `scores.json` as this judge's entry for `video.mp4` (the same bytes), so
        `vchain judge` with the same judge asks nothing again; the calls they cost are in the manifest."""
        identity = judge_identity(self.pipe.judge, self.judging)
        key = fingerprint(identity)
        scores = VideoScores.partial(winner.scores, winner.reasons)
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        entry = ScoreEntry(
            key=key,
            judge=identity["judge"],
            frames=self.judging.frames,
            scores=scores,
            video_sha256=file_digest(self.run.video_path),
            judged=now,
        )
        scores_file = read_scores(self.run.path)
        scores_file.entries = [e for e in scores_file.entries if e.key != key] + [entry]
        _io.write_json(self.run.path / SCORES_FILE, scores_file.model_dump(mode="json"))

    def _prompt(self, winning: RoundRecord, chain: ThoughtChain | None) -> str:
        """What the winning round sampled from: its chain's composite prompt (or the run's text)."""
        if winning.round == 0:
            return self.record.inputs["prompt"]
        if winning.round == self.state.rounds[-1].round and chain is not None:
            return self.pipe.composite_prompt(chain)
        return self.pipe.composite_prompt(ThoughtChain.load(self.run.path / winning.folder, with_images=False))


def check_search(search: object, judge: object, seed: object) -> SearchConfig | None:
    """The search to run (None when there is nothing to search), refused before any work if it cannot run."""
    if search is None:
        return None
    if not isinstance(search, SearchConfig):
        hint = f"; use SearchConfig(**{search!r})" if isinstance(search, dict) else ""
        raise ConfigurationError(f"search must be a SearchConfig, got {type(search).__name__}{hint}")
    if not search.searches:
        return None
    if judge is None:
        raise ConfigurationError(
            f"search with candidates={search.candidates}, rounds={search.rounds} needs a judge to score the "
            "candidates: VChainPipeline(..., judge=OpenAIJudge()) (CLI: --judge)"
        )
    check_objective(search.objective, judge_dimensions(judge), type(judge).__name__)
    if seed is None:
        raise ConfigurationError("search needs a seed (its candidates are seed, seed+1, ...), got seed=None")
    if seed + search.candidates - 1 >= 2**63:
        raise ConfigurationError(f"seed={seed} leaves no room for {search.candidates} candidate seeds below 2**63")
    return search


def check_objective(objective: tuple[str, ...], scored: tuple[str, ...], judge: str) -> None:
    """A `ConfigurationError` if the objective names a dimension the judge (named `judge`) does not score.

    The objective ranks candidates by the judge's scores: a dimension the judge never scores cannot rank
    them, and quietly dropping it would search for something else than was asked.
    """
    unscored = [d for d in objective if d not in scored]
    if unscored:
        usable = tuple(d for d in objective if d in scored) or tuple(scored)
        raise ConfigurationError(
            f"search objective {list(objective)} names {unscored}, which the judge {judge} does not score "
            f"(it scores {list(scored)}); pass SearchConfig(objective={usable!r}) "
            f"(CLI: --objective {' '.join(usable)})"
        )


def check_applies(search: SearchConfig, spec: Variant, output_dir: object, stop_after: str | None = None) -> None:
    """A search that cannot run for variant `spec` is refused before any work, naming why."""
    if output_dir is None:
        raise ConfigurationError(
            "search needs output_dir: every candidate's video and scores are kept in the "
            "run folder, and a stopped search resumes from it"
        )
    if spec.render != "generator":
        raise ConfigurationError(f"search does not apply to {spec.name!r}, whose frames do not depend on a seed")
    if stop_after is not None:
        raise ConfigurationError(f"search samples and judges; stop_after={stop_after!r} ends the run before that")
    if search.rounds and spec.reasoning != "chain":
        raise ConfigurationError(
            f"search rounds={search.rounds} re-plan the keyframes; {spec.name!r} has none (use candidates only)"
        )


def for_variant(search: SearchConfig | None, spec: Variant) -> SearchConfig | None:
    """The part of `search` that variant `spec` can run (a suite searches each variant as far as it can).

    An interpolated video has no seed to search; a variant without keyframes searches seeds but does not
    re-plan.
    """
    if search is None or spec.render != "generator":
        return None
    if search.rounds and spec.reasoning != "chain":
        search = search.replace(rounds=0, accept=None)
    return search if search.searches else None


# -- summaries


@dataclass
class SearchOutcome:
    """A finished search as summaries show it: the chosen candidate, the first one and the spread.

    `first` is round 0's candidate of the run's own seed: the video the run would have made without search.
    """

    variant: str
    candidates: int
    winner_round: int
    winner_seed: int
    chosen: CandidateRecord
    first: CandidateRecord
    lowest: float
    highest: float
    objective: tuple[str, ...]


def search_outcome(manifest: Manifest) -> SearchOutcome | None:
    """The outcome of a run's finished search, or None if the run did not search (or has not finished)."""
    record = manifest.stages.sampling
    state = record.search
    if state is None or state.winner_round is None or record.status != "done":
        return None
    judged = [c for r in state.rounds for c in r.candidates if c.objective is not None]
    chosen = next(c for c in state.rounds[state.winner_round].candidates if c.seed == state.winner_seed)
    first = min(state.rounds[0].candidates, key=lambda c: c.seed)
    objective = tuple(record.inputs.get("search", {}).get("objective", ()))
    return SearchOutcome(
        manifest.variant,
        len(judged),
        state.winner_round,
        state.winner_seed,
        chosen,
        first,
        min(c.objective for c in judged),
        max(c.objective for c in judged),
        objective,
    )
