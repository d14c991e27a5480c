"""A static HTML page comparing a suite's variants side by side: videos, keyframes, captions, scores.

`write_report(root, output_html)` reads every run folder below `root` and writes one page (inline style,
a few lines of inline script, nothing fetched from the network) that links the videos and keyframes by
relative paths: it works opened from disk, served by any static server, or copied together with the runs.
Each case (with several seeds: each case and seed) is a row; its variants are columns in the order of the
paper's Table 1, and one control plays, pauses and scrubs all of the row's videos together. Under each
judge's scores are the frames that judge saw (thumbnails written to `<page>_files/` beside the page), and
the judge summary is drawn as a chart: per dimension, each variant's mean with its 95% interval (inline
SVG). Prompts, captions and reasons are user or model text, so the template escapes everything it prints.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import numpy as np
from markupsafe import Markup, escape

from vchain import _io
from vchain.chain import CHAIN_FILE, ThoughtChain
from vchain.errors import ConfigurationError, VChainError
from vchain.judging import (
    DIMENSIONS,
    FinishedRun,
    SummaryRow,
    VideoScores,
    check_root,
    frame_indices,
    judge_label,
    read_scores,
    summarize,
)
from vchain.run import VIDEO_FILE, check_output_file, file_digest, iter_runs, read_manifest
from vchain.search import SearchOutcome, search_outcome
from vchain.variants import VARIANTS
from vchain.video import read_video

logger = logging.getLogger(__name__)

THUMBNAIL_WIDTH = 160  # the frames the judge saw, shown in a strip under its scores

TEMPLATE = """\
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>vchain report: {{ title }}</title>
<link rel="icon" href="data:,">
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5rem; color: #1d1d1f; background: #fafafa; }
  h1 { margin: 0 0 .25rem; font-size: 1.5rem; }
  h2 { font-size: 1.1rem; margin: 0 0 .75rem; }
  h3 { font-size: 1rem; margin: 0 0 .5rem; }
  table { border-collapse: collapse; margin: .5rem 0 1rem; background: #fff; }
  th, td { border: 1px solid #ddd; padding: .25rem .5rem; text-align: left; vertical-align: top; }
  caption { text-align: left; font-weight: 600; padding: .25rem 0; }
  .note, small, .missing { color: #666; }
  .case { background: #fff; border: 1px solid #ddd; border-radius: 8px; padding: 1rem; margin: 1rem 0; }
  .variants { display: grid; gap: 1rem; overflow-x: auto;
              grid-template-columns: repeat({{ variants|length }}, minmax(240px, 360px)); }
  .run { min-width: 0; }
  video { width: 100%; background: #000; border-radius: 4px; }
  .status { font-size: .75rem; font-weight: normal; padding: 0 .4rem; border-radius: 4px; background: #eee; }
  .status-done { background: #d8f0dc; } .status-failed { background: #f6d5d5; }
  .keyframes { display: flex; gap: .5rem; overflow-x: auto; list-style: none; padding: 0; margin: .5rem 0; }
  .keyframes li { flex: 1 1 0; min-width: 88px; max-width: 160px; }
  .keyframes figure { margin: 0; }
  .keyframes img { width: 100%; display: block; border-radius: 3px; }
  figcaption { font-size: .75rem; color: #444; }
  .scores { font-size: .8rem; width: 100%; }
  .score { font-weight: 600; text-align: center; }
  .score-1, .score-2 { background: #f6d5d5; } .score-3 { background: #f6efcf; }
  .score-4, .score-5 { background: #d8f0dc; }
  .sync { display: flex; gap: .5rem; align-items: center; margin: 0 0 .75rem; }
  .sync input { flex: 1; max-width: 480px; }
  .seed { font-size: .85rem; color: #444; margin: .5rem 0; }
  .judge-frames { display: flex; gap: 2px; margin: .25rem 0 .75rem; }
  .judge-frames img { flex: 1 1 0; min-width: 0; display: block; }
  .chart { display: block; margin: .5rem 0 1rem; }
</style>
</head>
<body>
<header>
  <h1>vchain report</h1>
  <p class="note">{{ title }}: {{ cases|length }} case(s) under {{ variants|length }} variant(s).</p>
</header>
{% if summary %}
<section>
  <h2>Judge summary</h2>
  {% for judge, rows in summary %}
  <table>
    <caption>{{ judge }}</caption>
    <tr>
      <th>variant</th><th>n</th>{% for d in dimensions %}<th>{{ d.title }}</th>{% endfor %}
      <th>requests</th><th>tokens in / out</th>
    </tr>
    {% for row in rows %}
    <tr>
      <td>{{ row.variant }}</td><td>{{ row.n }}</td>
      {% for d in dimensions %}{% set e = row.estimates.get(d.name) %}
      <td>{% if e %}{{ "%.2f"|format(e.mean) }}
        <small>{% if e.low is not none %}[{{ "%.2f"|format(e.low) }}, {{ "%.2f"|format(e.high) }}]
        {%- else %}[—]{% endif %}</small>{% else %}—{% endif %}</td>
      {% endfor %}
      <td>{{ row.requests }}</td><td>{{ row.input_tokens }} / {{ row.output_tokens }}</td>
    </tr>
    {% endfor %}
  </table>
  <p class="note">{{ agreements[judge] }}</p>
  {{ charts[judge] }}
  {% endfor %}
  <p class="note">Scores 1 to 5: the mean over cases (a case's seeds averaged first), in brackets its 95%
    bootstrap confidence interval ([—]: fewer than two cases); the charts draw the same numbers.</p>
</section>
{% endif %}
{% if search %}
<section>
  <h2>Test-time search</h2>
  <table>
    <tr>
      <th>variant</th><th>runs</th><th>candidates</th><th>objective</th><th>no search</th><th>spread</th>
      {% for d in dimensions %}<th>{{ d.title }}</th>{% endfor %}
    </tr>
    {% for row in search %}
    <tr>
      <td>{{ row.variant }}</td><td>{{ row.runs }}</td><td>{{ "%g"|format(row.candidates) }}</td>
      <td>{{ "%.2f"|format(row.chosen) }}</td><td>{{ "%.2f"|format(row.first) }}</td>
      <td>{{ "%.2f"|format(row.low) }} to {{ "%.2f"|format(row.high) }}</td>
      {% for d in dimensions %}{% set value = row.scores[d.name] %}
      <td>{% if value is none %}—{% else %}{{ "%.2f"|format(value) }}{% endif %}</td>{% endfor %}
    </tr>
    {% endfor %}
  </table>
  <p class="note">best-of-n: the chosen candidate of each searched run (by the search judge's objective), averaged
    over runs; "no search" is the first candidate (the run's own seed); the spread is the lowest and highest
    objective over all candidates, averaged over runs.</p>
</section>
{% endif %}
{% for case in cases %}
<section class="case">
  <h2>{{ case.prompt }}</h2>
  {% for row in case.rows.values() %}
  <div class="sync-group">
  {% if case.rows|length > 1 %}
  <p class="seed">seed {{ row.seed }}{% if row.where %} ({{ row.where }}){% endif %}</p>
  {% endif %}
  <div class="sync">
    <button type="button" class="play">Play all</button>
    <input type="range" class="scrub" min="0" max="1000" value="0" aria-label="position of every video in this row">
  </div>
  <div class="variants">
    {% for variant in variants %}{% set run = row.runs.get(variant) %}
    <article class="run">
      <h3>{{ variant }}
        {% if run %}<span class="status status-{{ run.status }}">{{ run.status }}</span>{% endif %}</h3>
      {% if not run %}
      <p class="missing">not run</p>
      {% else %}
      {% if run.video %}
      <video src="{{ run.video }}" controls muted loop playsinline preload="auto"></video>
      {% else %}
      <p class="missing">no video</p>
      {% endif %}
      {% if run.sampled_prompt and run.sampled_prompt != case.prompt %}
      <details><summary>Sampled from</summary><p>{{ run.sampled_prompt }}</p></details>
      {% endif %}
      {% if run.keyframes %}
      <ol class="keyframes">
        {% for keyframe in run.keyframes %}
        <li><figure>
          <img src="{{ keyframe.src }}" alt="keyframe {{ loop.index0 }}">
          <figcaption>{{ keyframe.caption }}</figcaption>
        </figure></li>
        {% endfor %}
      </ol>
      {% endif %}
      {% if run.candidates %}
      <details><summary>Search: {{ run.candidates|length }} candidates</summary>
        <ol class="candidates">
          {% for c in run.candidates %}
          <li><a href="{{ c.video }}">round {{ c.round }}, seed {{ c.seed }}</a>: {{ "%.2f"|format(c.objective) }}
            {% if c.chosen %}<strong>(chosen)</strong>{% endif %}</li>
          {% endfor %}
        </ol>
      </details>
      {% endif %}
      {% for judged in run.scores %}
      <table class="scores">
        <caption>{{ judged.judge }}</caption>
        {% for d in dimensions %}
        {% set value = judged.scores.score(d.name) %}
        {% if value is none %}
        <tr><th>{{ d.title }}</th><td class="score">—</td><td class="missing">not scored by this judge</td></tr>
        {% else %}
        <tr><th>{{ d.title }}</th><td class="score score-{{ value }}">{{ value }}</td>
          <td>{{ judged.scores.reason(d.name) }}</td></tr>
        {% endif %}
        {% endfor %}
      </table>
      {% if judged.frames %}
      <div class="judge-frames" title="the frames {{ judged.judge }} saw">
        {% for frame in judged.frames %}
        <img src="{{ frame.src }}" alt="frame {{ frame.index }} the judge saw">
        {% endfor %}
      </div>
      {% endif %}
      {% endfor %}
      {% endif %}
    </article>
    {% endfor %}
  </div>
  </div>
  {% endfor %}
</section>
{% endfor %}
<script>
// One control per row: play, pause and scrub every variant's video together (at the same fraction of
// its length, since variants may differ in length).
for (const group of document.querySelectorAll(".sync-group")) {
  const videos = [...group.querySelectorAll("video")];
  const button = group.querySelector(".play");
  const scrub = group.querySelector(".scrub");
  if (!videos.length) { group.querySelector(".sync").hidden = true; continue; }
  const lead = videos[0];
  const seek = (fraction) => videos.forEach((v) => { if (v.duration > 0) v.currentTime = fraction * v.duration; });
  button.addEventListener("click", () => {
    if (lead.paused) {
      seek(lead.duration > 0 ? lead.currentTime / lead.duration : 0);
      videos.forEach((v) => v.play());
      button.textContent = "Pause all";
    } else {
      videos.forEach((v) => v.pause());
      button.textContent = "Play all";
    }
  });
  scrub.addEventListener("input", () => seek(scrub.value / 1000));
  lead.addEventListener("timeupdate", () => {
    if (lead.duration > 0) scrub.value = Math.round((lead.currentTime / lead.duration) * 1000);
  });
}
</script>
</body>
</html>
"""


@dataclass(frozen=True)
class _Keyframe:
    src: str
    caption: str


@dataclass(frozen=True)
class _Frame:
    src: str
    index: int


@dataclass
class _Judged:
    judge: str
    scores: VideoScores
    frames: list[_Frame]


@dataclass(frozen=True)
class _Candidate:
    round: int
    seed: int
    video: str
    objective: float
    chosen: bool


@dataclass
class _RunView:
    variant: str
    status: str
    video: str | None
    sampled_prompt: str | None
    keyframes: list[_Keyframe]
    scores: list[_Judged]
    candidates: list[_Candidate] = field(default_factory=list)


@dataclass
class _SeedRow:
    seed: int | None
    runs: dict[str, _RunView] = field(default_factory=dict)
    where: str = ""  # the folder, when another row holds the same case, seed and variant


@dataclass(frozen=True)
class _SearchRow:
    """A `best-of-n` row: a variant's searched runs, averaged."""

    variant: str
    runs: int
    candidates: float
    chosen: float
    first: float
    low: float
    high: float
    scores: dict[str, float | None]  # None: the search judge does not score that dimension


@dataclass
class _CaseView:
    prompt: str
    rows: dict[tuple[int | None, int], _SeedRow] = field(default_factory=dict)  # (seed, copy) -> row


@dataclass(frozen=True)
class _Dimension:
    name: str
    title: str


def write_report(root: str | Path, output_html: str | Path) -> Path:
    """Write the page comparing every run below `root` to `output_html`; returns its path.

    The frames each judge saw are written as thumbnails into `<output_html's stem>_files/` beside it.

    Raises:
        ConfigurationError: `root` does not exist or holds no run folder, or `output_html` is no file vchain
            may write (a folder, a link, a device, a FIFO, or a path inside a run folder).
    """
    import jinja2

    from vchain.evaluation import agreement_line, read_calibration, run_case

    root = check_root(root)
    output = check_output_file(output_html, "output_html")
    base = output.parent.absolute()
    frames_dir = base / f"{output.stem}_files"
    cases: dict[str, _CaseView] = {}
    finished: list[FinishedRun] = []
    outcomes: list[SearchOutcome] = []
    for folder in iter_runs(root):
        try:
            manifest = read_manifest(folder)
        except VChainError as e:
            logger.warning("Leaving %s out of the report: %s", folder, e)
            continue
        video = folder / VIDEO_FILE
        if not video.is_file():
            video = None
        elif manifest.status() == "done":
            finished.append(FinishedRun(folder, manifest))
        case_id, seed, _ = run_case(manifest)
        case = cases.setdefault(case_id, _CaseView(manifest.prompt))
        # A second run of one case, seed and variant (another tree, a copy) gets a row of its own: every
        # video the summary counts is shown.
        copy = 0
        while manifest.variant in case.rows.get((seed, copy), _SeedRow(seed)).runs:
            copy += 1
        row = case.rows.setdefault((seed, copy), _SeedRow(seed, where=os.path.relpath(folder, root) if copy else ""))
        row.runs[manifest.variant] = _RunView(
            variant=manifest.variant,
            status=manifest.status(),
            video=_href(video, base) if video else None,
            sampled_prompt=manifest.stages.sampling.prompt,
            keyframes=_keyframes(folder, base),
            scores=_scores(folder, video, frames_dir / folder.relative_to(root), base),
            candidates=_candidates(manifest, folder, base),
        )
        outcome = search_outcome(manifest)
        if outcome is not None:
            outcomes.append(outcome)
    if not cases:
        raise ConfigurationError(f"root {str(root)!r} holds no run folder (a folder with manifest.json)")
    present = {variant for case in cases.values() for row in case.rows.values() for variant in row.runs}
    variants = [v for v in VARIANTS if v in present] + sorted(present - set(VARIANTS))
    summary = _by_judge(summarize(finished)) if finished else []
    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    html = environment.from_string(TEMPLATE).render(
        title=root.absolute().name,
        cases=[
            _CaseView(c.prompt, {k: c.rows[k] for k in sorted(c.rows, key=lambda k: (k[0] is None, k[0] or 0, k[1]))})
            for c in cases.values()
        ],
        variants=variants,
        dimensions=[_Dimension(d, d.replace("_", " ")) for d in DIMENSIONS],
        summary=summary,
        charts={judge: chart(rows) for judge, rows in summary},
        agreements={judge: agreement_line(judge, read_calibration(root)) for judge, _ in summary},
        search=_search_rows(outcomes, variants),
    )
    return _io.write_text(output, html)


def _href(path: Path, base: Path) -> str:
    """A relative URL from the page's folder to `path`, percent-encoded (names may hold any character)."""
    return quote(Path(os.path.relpath(path.absolute(), base)).as_posix())


def _keyframes(folder: Path, base: Path) -> list[_Keyframe]:
    if not (folder / CHAIN_FILE).is_file():
        return []
    try:
        chain = ThoughtChain.load(folder, with_images=False)
    except VChainError as e:
        logger.warning("Showing %s without its keyframes: %s", folder, e)
        return []
    return [
        _Keyframe(_href(folder / name, base), caption)
        for name, caption in zip(chain.file_names, chain.captions, strict=True)
        if (folder / name).is_file()
    ]


def _scores(folder: Path, video: Path | None, frames_dir: Path, base: Path) -> list[_Judged]:
    """Each judge's scores of the video as it is now (scores of an earlier video are not shown), with the
    frames it saw written as thumbnails into `frames_dir`."""
    if video is None:
        return []
    try:
        entries = read_scores(folder).current(file_digest(video))
    except VChainError as e:
        logger.warning("Showing %s without scores: %s", folder, e)
        return []
    frames: list | None = None
    judged = []
    for entry in entries:
        if frames is None:
            try:
                frames = read_video(video)
            except VChainError as e:
                logger.warning("Showing %s without the frames its judges saw: %s", folder, e)
                frames = []
        thumbnails = []
        for index in frame_indices(len(frames), entry.frames) if frames else []:
            path = frames_dir / f"frame_{index:04d}.jpg"
            if not path.is_file():
                thumbnail = frames[index].copy()
                thumbnail.thumbnail((THUMBNAIL_WIDTH, THUMBNAIL_WIDTH))
                _io.atomic_write(path, lambda f, image=thumbnail: image.save(f, format="JPEG", quality=85))
            thumbnails.append(_Frame(_href(path, base), index))
        judged.append(_Judged(judge_label(entry), entry.scores, thumbnails))
    return judged


def _candidates(manifest, folder: Path, base: Path) -> list[_Candidate]:
    state = manifest.stages.sampling.search
    if state is None or manifest.stages.sampling.status != "done":
        return []
    return [
        _Candidate(
            r.round,
            c.seed,
            _href(folder / c.video, base),
            c.objective,
            (r.round, c.seed) == (state.winner_round, state.winner_seed),
        )
        for r in state.rounds
        for c in r.candidates
        if c.objective is not None
    ]


def _search_rows(outcomes: list[SearchOutcome], variants: list[str]) -> list[_SearchRow]:
    """One `best-of-n` row per variant that searched, in the page's variant order."""
    rows = []
    for variant in variants:
        mine = [o for o in outcomes if o.variant == variant]
        if not mine:
            continue
        label = "best-of-n" if len({o.variant for o in outcomes}) == 1 else f"{variant} best-of-n"
        rows.append(
            _SearchRow(
                label,
                len(mine),
                float(np.mean([o.candidates for o in mine])),
                float(np.mean([o.chosen.objective for o in mine])),
                float(np.mean([o.first.objective for o in mine])),
                float(np.mean([o.lowest for o in mine])),
                float(np.mean([o.highest for o in mine])),
                {d: _mean([o.chosen.scores[d] for o in mine if d in o.chosen.scores]) for d in DIMENSIONS},
            )
        )
    return rows


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _by_judge(rows: list[SummaryRow]) -> list[tuple[str, list[SummaryRow]]]:
    judges = dict.fromkeys(row.judge for row in rows)
    return [(judge, [row for row in rows if row.judge == judge]) for judge in judges]


# Colours that stay apart for the usual colour-vision deficiencies (Okabe and Ito), one per variant.
PALETTE = ("#0072b2", "#e69f00", "#009e73", "#cc79a7", "#d55e00", "#56b4e9", "#f0e442", "#000000")


def chart(rows: list[SummaryRow]) -> Markup:
    """An inline SVG: per dimension, each variant's mean score (dot) and its 95% interval (bar), on 1 to 5."""
    variants = [row for row in rows if row.estimates]
    if not variants:
        return Markup("")
    # A dimension the judge does not score gets no group (an empty one would read as a missing result).
    dimensions = [d for d in DIMENSIONS if any(d in row.estimates for row in variants)]
    top, plot_height, left, group_width = 16, 180, 36, max(112, 18 * len(variants) + 24)
    width, height = left + group_width * len(dimensions) + 8, top + plot_height + 40 + 18 * len(variants)

    def y(score: float) -> float:
        return top + (5 - score) / 4 * plot_height

    parts = [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="mean score per dimension and variant, '
        'with 95% intervals" font-size="11" font-family="system-ui, sans-serif">'
    ]
    for score in range(1, 6):
        parts.append(
            f'<line x1="{left}" x2="{width - 8}" y1="{y(score):.1f}" y2="{y(score):.1f}" stroke="#ddd"/>'
            f'<text x="{left - 8}" y="{y(score) + 4:.1f}" text-anchor="end">{score}</text>'
        )
    for i, dimension in enumerate(dimensions):
        x0 = left + i * group_width
        parts.append(
            f'<text x="{x0 + group_width / 2:.1f}" y="{top + plot_height + 16}" text-anchor="middle">'
            f"{escape(dimension.replace('_', ' '))}</text>"
        )
        for j, row in enumerate(variants):
            e, colour = row.estimates.get(dimension), PALETTE[j % len(PALETTE)]
            if e is None:
                continue
            x = x0 + 12 + (j + 0.5) * (group_width - 24) / len(variants)
            interval = "no interval" if e.low is None else f"[{e.low:.2f}, {e.high:.2f}]"
            parts.append(
                f'<g class="estimate"><title>{escape(row.variant)}, {escape(dimension)}: {e.mean:.2f} '
                f"{interval}</title>"
            )
            if e.low is not None:
                parts.append(
                    f'<line class="interval" x1="{x:.1f}" x2="{x:.1f}" y1="{y(e.high):.1f}" '
                    f'y2="{y(e.low):.1f}" stroke="{colour}" stroke-width="2"/>'
                )
            parts.append(f'<circle cx="{x:.1f}" cy="{y(e.mean):.1f}" r="4" fill="{colour}"/></g>')
    for j, row in enumerate(variants):
        ly = top + plot_height + 34 + 18 * j
        parts.append(
            f'<circle cx="{left + 6}" cy="{ly - 4}" r="4" fill="{PALETTE[j % len(PALETTE)]}"/>'
            f'<text x="{left + 16}" y="{ly}">{escape(row.variant)} (n {row.n})</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))
