"""What the bundled voice plugins share: the settings of an OpenAI-compatible audio API
(``{base_url}/audio/transcriptions``, ``{base_url}/audio/speech``: OpenAI, Groq, a local
faster-whisper or Kokoro server, a LiteLLM proxy) and one HTTP client per engine for it,
through the one HTTP layer (:mod:`tgmux.http`).
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

from pydantic import Field, SecretStr, field_validator

from tgmux.backend import ProxySettings, api_root, optional_secret
from tgmux.http import HttpClient

if TYPE_CHECKING:
    from tgmux.engine import Engine

DEFAULT_BASE_URL = "https://api.openai.com/v1"
#: The endpoints a base_url must not already name (tgmux adds them).
ENDPOINTS = ("/audio/transcriptions", "/audio/speech")


class AudioApiSettings(ProxySettings):
    """``base_url``, ``api_key``, ``model``, ``proxy``, ``trust_env``: as for an ``openai``
    backend."""

    base_url: str = Field(DEFAULT_BASE_URL, description="the API root (…/v1): tgmux adds "
                          "/audio/transcriptions or /audio/speech")
    api_key: SecretStr | None = Field(None, description="sent as Authorization: Bearer KEY "
                                      "(optional: local servers need none)")
    model: str = Field(min_length=1, description="the model id the server knows")

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        return api_root(value, ENDPOINTS)

    @field_validator("api_key")
    @classmethod
    def _key(cls, value: SecretStr | None) -> SecretStr | None:
        return optional_secret(value)


def make_client(settings: AudioApiSettings, *, name: str, timeout: float,
                max_response_bytes: int) -> HttpClient:
    key = settings.api_key.get_secret_value() if settings.api_key is not None else None
    return HttpClient(settings.base_url, timeout=timeout, name=name,
                      headers={"Authorization": f"Bearer {key}"} if key else None,
                      max_response_bytes=max_response_bytes,
                      proxy=settings.proxy_route(settings.base_url),
                      # a handful of voice messages at once; more wait for a connection
                      max_connections=16)


class EngineClients:
    """One HTTP client per running engine (a process may run several: tests, the demo):
    made at ``tgmux_startup``, closed at ``tgmux_shutdown``."""

    def __init__(self) -> None:
        self._clients: weakref.WeakKeyDictionary[Engine, HttpClient] = \
            weakref.WeakKeyDictionary()

    def open(self, engine: Engine, client: HttpClient) -> None:
        self._clients[engine] = client

    def get(self, engine: Engine) -> HttpClient | None:
        return self._clients.get(engine)

    async def close(self, engine: Engine) -> None:
        client = self._clients.pop(engine, None)
        if client is not None:
            await client.aclose()
