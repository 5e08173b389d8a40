"""The ``openai`` backend: any OpenAI-compatible Chat Completions server (OpenAI, OpenRouter,
Ollama, vLLM, LM Studio, llama.cpp, Groq, DeepSeek, a LiteLLM proxy, …), the conversation kept by
tgmux. See docs/backends/openai.md.

Registered through the ``tgmux`` entry-point group; ``tgmux demo`` offers it on its simulator.
"""

from __future__ import annotations

from typing import Any

from tgmux.hooks import hookimpl
from tgmux.types import DemoBackend, StopFn

from .adapter import OpenAIBackend, OpenAISettings
from .client import OpenAIClient, chat_body

__all__ = ["OpenAIBackend", "OpenAIClient", "OpenAISettings", "chat_body"]


@hookimpl
def tgmux_backend_types() -> list[type[OpenAIBackend]]:
    return [OpenAIBackend]


async def _start_demo() -> tuple[dict[str, Any], StopFn]:
    from .simulator import DEMO_KEY, DEMO_MODEL, OpenAISimulator

    sim = OpenAISimulator(api_keys={DEMO_KEY}, chunk_size=3, chunk_delay=0.03)
    await sim.start()
    config = {
        "type": "openai",
        "base_url": sim.base_url,
        "api_key": DEMO_KEY,
        "model": DEMO_MODEL,
        "system_prompt": "You are a friendly assistant.",
        "history": {"max_turns": 20},
    }
    return config, sim.stop


@hookimpl
def tgmux_demo_backends() -> list[DemoBackend]:
    return [
        DemoBackend(
            "openai",
            "An OpenAI-compatible model (simulated): streamed replies; tgmux remembers the "
            "conversation (/history shows it, /reset forgets it)",
            _start_demo,
        )
    ]
