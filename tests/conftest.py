from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tiny models gain nothing from intra-op threads, and on a busy machine the threads mostly wait for each
# other (the suite runs twice as fast on one). Set before torch is imported, here and in subprocesses.
os.environ.setdefault("OMP_NUM_THREADS", "1")

SCHEMA = Path(__file__).parent / "data" / "openapi-subset.json"
API_KEY = "sk-test-SECRET-0123456789"


@pytest.fixture(autouse=True)
def _no_ambient_openai_env(monkeypatch):
    """Tests never see a developer's real key or server."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


@pytest.fixture(scope="session")
def tiny_wan_dir(tmp_path_factory) -> str:
    """A tiny random Wan saved like a hub checkpoint, for `--model` and `from_pretrained` (never written to)."""
    from vchain.testing import tiny_wan_pipeline

    folder = tmp_path_factory.mktemp("tiny_wan")
    tiny_wan_pipeline().save_pretrained(folder)
    return str(folder)


@pytest.fixture
def server():
    from vchain.testing import FakeOpenAIServer

    with FakeOpenAIServer(schema_path=SCHEMA) as fake:
        yield fake
    assert all(not r.schema_errors for r in fake.requests), [r.schema_errors for r in fake.requests]


@pytest.fixture
def client(server):
    import openai

    return openai.OpenAI(api_key=API_KEY, base_url=server.base_url, max_retries=2, timeout=5.0)
