import json
import os
import subprocess
import sys

from vchain.cli import main


def test_think_in_process_against_a_local_server(server, tmp_path, capsys):
    code = main(
        ["think", "An egg is dropped onto a pillow.", "-o", str(tmp_path), "--base-url", server.base_url]
    )
    assert code == 0
    assert "3 keyframes" in capsys.readouterr().out
    assert (tmp_path / "chain.json").is_file() and (tmp_path / "metadata.csv").is_file()
    assert json.loads((tmp_path / "manifest.json").read_text())["stages"]["reasoning"]["status"] == "done"


def test_think_as_a_subprocess_without_a_key_fails_fast_naming_it(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    result = subprocess.run(
        [sys.executable, "-m", "vchain.cli", "think", "p", "-o", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 2
    assert "OPENAI_API_KEY" in result.stderr
    assert not (tmp_path / "manifest.json").exists()


def test_empty_prompt_is_a_usage_error(server, tmp_path, capsys):
    assert main(["think", "  ", "-o", str(tmp_path), "--base-url", server.base_url]) == 2
    assert "prompt must be a non-empty string" in capsys.readouterr().err
