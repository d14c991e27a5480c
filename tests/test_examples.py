"""The example scripts run as they are (so they cannot rot)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parents[1] / "examples"


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("custom_reasoner.py", "The object rests on the floor."),
        ("local_openai_server.py", "3 keyframes; 6 requests served"),
    ],
)
def test_an_example_runs_and_prints_its_result(tmp_path, script, expected):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert expected in result.stdout
