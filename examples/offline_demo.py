"""The whole pipeline offline, from Python: tiny random models, a scripted reasoner, drawn keyframes.

python examples/offline_demo.py runs/example_demo
"""

import sys

from vchain.testing import DEMO_PROMPT, demo_pipeline

output = sys.argv[1] if len(sys.argv) > 1 else "runs/example_demo"
pipe = demo_pipeline()
for variant in ("vchain", "t2v", "no-sparse-tuning"):
    out = pipe(DEMO_PROMPT, output_dir=f"{output}/{variant}", variant=variant)
    print(f"{variant:>17}: {len(out.frames)} frames -> {out.video_path}")
