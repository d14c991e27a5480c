"""Measure what one judge call of a test-time search sends and is billed, against the local OpenAI stand-in.

    python benchmarks/judge_bill.py                        # an 81-frame 832x480 video, 8 frames, both layouts
    python benchmarks/judge_bill.py --width 1280 --height 720 --frames 16

A search judges every candidate once: N candidates cost N of these calls (plus N sampling calls). The
script writes one video of the given size, has `OpenAIJudge` score it through `vchain.judging.ask_judge`
(the path the search takes) against `FakeOpenAIServer`, and prints a markdown table per layout (a frame
per image, or `grid=True`: the frames tiled into one image):

- the stand-in's input figure (it counts a quarter token per character of the request, base64 images
  included: an upper bound no real server bills);
- the text tokens of the request without its images, and of the answer (the stand-in's scores with their
  reasons), at the same quarter token a character;
- the images sent and the image tokens OpenAI's published rule for gpt-4o at high detail gives them
  (scaled to fit 2048 x 2048, then the short side to 768; 85 tokens plus 170 per 512-pixel tile).
"""

from __future__ import annotations

import argparse
import base64
import io
import math
import tempfile
from pathlib import Path

from PIL import Image

from vchain.accounting import UsageMeter
from vchain.backends.openai import OpenAIJudge
from vchain.judging import JudgingConfig, ask_judge
from vchain.testing import FakeOpenAIServer, draw_image
from vchain.video import write_video


def tile_tokens(width: int, height: int) -> int:
    """gpt-4o's high-detail image tokens: fit 2048 x 2048, short side to 768, 85 + 170 per 512 tile."""
    scale = min(1.0, 2048 / max(width, height))
    width, height = width * scale, height * scale
    scale = min(1.0, 768 / min(width, height))
    width, height = width * scale, height * scale
    return 85 + 170 * math.ceil(width / 512) * math.ceil(height / 512)


def measure(server: FakeOpenAIServer, video: Path, frames: int, grid: bool) -> dict:
    judge = OpenAIJudge(base_url=server.base_url, grid=grid)
    meter = UsageMeter()
    before = len(server.requests)
    ask_judge(judge, "A steel ball is dropped into water.", video, JudgingConfig(frames=frames), meter)
    (request,) = server.requests[before:]
    (record,) = meter.records
    images, text_chars = [], 0
    for message in request.body["messages"]:
        content = message["content"]
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        for part in parts:
            if part["type"] == "text":
                text_chars += len(part["text"])
            else:
                data = base64.b64decode(part["image_url"]["url"].split(",", 1)[1])
                images.append(Image.open(io.BytesIO(data)).size)
    return {
        "layout": "grid" if grid else "one image a frame",
        "stand-in input tokens": record.input_tokens,
        "text input tokens": text_chars // 4,
        "output tokens": record.output_tokens,
        "images": len(images),
        "image size": f"{images[0][0]}x{images[0][1]}",
        "gpt-4o image tokens": sum(tile_tokens(*size) for size in images),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--video-frames", type=int, default=81, help="frames of the judged video")
    parser.add_argument("--frames", type=int, default=JudgingConfig().frames, help="frames the judge sees")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as folder, FakeOpenAIServer() as server:
        video = Path(folder) / "candidate.mp4"
        frames = [draw_image(f"frame {i}", args.width, args.height) for i in range(args.video_frames)]
        write_video(frames, video, fps=16)
        for grid in (False, True):
            rows.append(measure(server, video, args.frames, grid))
    columns = list(rows[0])
    print(f"One judge call on a {args.video_frames}-frame {args.width}x{args.height} video, {args.frames} frames seen")
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in columns) + " |")
    return rows


if __name__ == "__main__":
    main()
