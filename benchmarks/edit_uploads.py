"""How many reference images (and bytes) the edits of one chain upload, with and without a reference limit.

    python benchmarks/edit_uploads.py
    python benchmarks/edit_uploads.py --mb-per-image 0.64

Every edit sends the chain so far (`edit_inputs="chain"`), so the uploads of an N-keyframe chain grow as
N^2 / 2. `ImageBackend.max_references` caps each edit: vchain keeps keyframe 0 and the latest ones
(`vchain.reasoning.edit_references`). The byte figures multiply the image counts by one PNG keyframe's
size (default 0.64 MB, a 832x480 photographic keyframe); the counts are exact.
"""

from __future__ import annotations

import argparse

from vchain.reasoning import edit_references

LIMITS = {"none (before)": None, "16 (gpt-image-1)": 16, "3 (Qwen-Image-Edit-Plus)": 3, "1 (FLUX.1 Kontext)": 1}


def uploads(keyframes: int, limit: int | None) -> int:
    """Reference images sent over the edits of a chain of `keyframes` images (keyframe 0 is generated)."""
    return sum(len(edit_references(list(range(i)), limit)) for i in range(1, keyframes))


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb-per-image", type=float, default=0.64)
    parser.add_argument("--lengths", type=int, nargs="+", default=[4, 6, 8, 12, 17, 24])
    args = parser.parse_args(argv)
    header = "| keyframes | " + " | ".join(f"limit {name}" for name in LIMITS) + " |"
    rows = [header, "|---|" + "---|" * len(LIMITS)]
    for n in args.lengths:
        cells = [
            f"{uploads(n, limit)} images, {uploads(n, limit) * args.mb_per_image:.0f} MB" for limit in LIMITS.values()
        ]
        rows.append(f"| {n} | " + " | ".join(cells) + " |")
    table = "\n".join(rows)
    print(table)
    return table


if __name__ == "__main__":
    main()
