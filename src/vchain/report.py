"""A static HTML page comparing a suite's variants side by side: videos, keyframes, captions, scores.

`write_report(root, output_html)` reads every run folder below `root` and writes one self-contained
page (inline style, no script, nothing fetched from the network) that links the videos and keyframes
by relative paths: it works opened from disk, served by any static server, or copied together with
the runs. Each case (prompt) is a row; its variants are columns in the order of the paper's Table 1.
Prompts, captions and reasons are user or model text, so the template escapes everything it prints.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from vchain import _io
from vchain.chain import CHAIN_FILE, ThoughtChain
from vchain.errors import ConfigurationError, VChainError
from vchain.judging import (
    DIMENSIONS,
    FinishedRun,
    SummaryRow,
    VideoScores,
    check_root,
    judge_label,
    read_scores,
    summarize,
)
from vchain.run import VIDEO_FILE, check_output_file, file_digest, iter_runs, read_manifest
from vchain.variants import VARIANTS

logger = logging.getLogger(__name__)

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
        <small>[{{ "%.2f"|format(e.low) }}, {{ "%.2f"|format(e.high) }}]</small>{% else %}-{% endif %}</td>
      {% endfor %}
      <td>{{ row.requests }}</td><td>{{ row.input_tokens }} / {{ row.output_tokens }}</td>
    </tr>
    {% endfor %}
  </table>
  {% endfor %}
  <p class="note">Scores 1 to 5: the mean over runs, in brackets its 95% bootstrap confidence interval.</p>
</section>
{% endif %}
{% for case in cases %}
<section class="case">
  <h2>{{ case.prompt }}</h2>{% if case.where %}<p class="note">{{ case.where }}</p>{% endif %}
  <div class="variants">
    {% for variant in variants %}{% set run = case.runs.get(variant) %}
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
      {% for judge, scores in run.scores %}
      <table class="scores">
        <caption>{{ judge }}</caption>
        {% for d in dimensions %}
        {% set value = scores.score(d.name) %}
        <tr><th>{{ d.title }}</th><td class="score score-{{ value }}">{{ value }}</td>
          <td>{{ scores.reason(d.name) }}</td></tr>
        {% endfor %}
      </table>
      {% endfor %}
      {% endif %}
    </article>
    {% endfor %}
  </div>
</section>
{% endfor %}
</body>
</html>
"""


@dataclass(frozen=True)
class _Keyframe:
    src: str
    caption: str


@dataclass
class _RunView:
    variant: str
    status: str
    video: str | None
    sampled_prompt: str | None
    keyframes: list[_Keyframe]
    scores: list[tuple[str, VideoScores]]


@dataclass
class _CaseView:
    prompt: str
    runs: dict[str, _RunView] = field(default_factory=dict)
    where: str = ""


@dataclass(frozen=True)
class _Dimension:
    name: str
    title: str


def write_report(root: str | Path, output_html: str | Path) -> Path:
    """Write the page comparing every run below `root` to `output_html`; returns its path.

    Raises:
        ConfigurationError: `root` does not exist or holds no run folder, or `output_html` is no file vchain
            may write (a folder, a link, a device, a FIFO, or a path inside a run folder).
    """
    import jinja2

    root = check_root(root)
    output = check_output_file(output_html, "output_html")
    base = output.parent.absolute()
    cases: dict[tuple[str, Path], _CaseView] = {}
    finished: list[FinishedRun] = []
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
        # Runs of one prompt in different folders (another seed, another tree) are separate cases: each
        # video shown is one the summary counts.
        case = cases.setdefault((manifest.prompt, folder.parent), _CaseView(manifest.prompt))
        case.runs[manifest.variant] = _RunView(
            variant=manifest.variant,
            status=manifest.status(),
            video=_href(video, base) if video else None,
            sampled_prompt=manifest.stages.sampling.prompt,
            keyframes=_keyframes(folder, base),
            scores=_scores(folder, video),
        )
    if not cases:
        raise ConfigurationError(f"root {str(root)!r} holds no run folder (a folder with manifest.json)")
    prompts = [prompt for prompt, _ in cases]
    for (prompt, parent), case in cases.items():
        if prompts.count(prompt) > 1:
            case.where = os.path.relpath(parent, root)
    present = {variant for case in cases.values() for variant in case.runs}
    variants = [v for v in VARIANTS if v in present] + sorted(present - set(VARIANTS))
    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    html = environment.from_string(TEMPLATE).render(
        title=root.absolute().name,
        cases=list(cases.values()),
        variants=variants,
        dimensions=[_Dimension(d, d.replace("_", " ")) for d in DIMENSIONS],
        summary=_by_judge(summarize(finished)) if finished else [],
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


def _scores(folder: Path, video: Path | None) -> list[tuple[str, VideoScores]]:
    """Each judge's scores of the video as it is now (scores of an earlier video are not shown)."""
    if video is None:
        return []
    try:
        entries = read_scores(folder).current(file_digest(video))
    except VChainError as e:
        logger.warning("Showing %s without scores: %s", folder, e)
        return []
    return [(judge_label(entry), entry.scores) for entry in entries]


def _by_judge(rows: list[SummaryRow]) -> list[tuple[str, list[SummaryRow]]]:
    judges = dict.fromkeys(row.judge for row in rows)
    return [(judge, [row for row in rows if row.judge == judge]) for judge in judges]
