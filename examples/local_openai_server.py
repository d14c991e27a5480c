"""The OpenAI backends against any OpenAI-compatible server, here vchain's own local stand-in.

Point `base_url` at vLLM, Ollama or another compatible server the same way.

    python examples/local_openai_server.py
"""

from vchain import VChainPipeline
from vchain.backends.openai import OpenAIImageBackend, OpenAIReasoner
from vchain.testing import FakeOpenAIServer

with FakeOpenAIServer() as server:
    pipe = VChainPipeline(
        reasoner=OpenAIReasoner("gpt-4o", base_url=server.base_url),
        image_backend=OpenAIImageBackend("gpt-image-1", base_url=server.base_url),
    )
    chain = pipe.think("Milk is poured into a cup of black coffee.", output_dir="runs/local_server")
    print(f"{len(chain.images)} keyframes; {len(server.requests)} requests served")
