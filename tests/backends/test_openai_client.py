"""The pure OpenAI-compatible client against the simulator: the exact requests it sends, what
it reads of JSON and streamed answers (and what it never shows), and how errors map onto
tgmux's error kinds."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from tgmux.backends.openai.client import (
    ChatChunk,
    OpenAIClient,
    chat_body,
    parse_chunk,
    parse_duration,
    parse_error,
    retry_after_from,
)
from tgmux.backends.openai.simulator import REASONING_TOKENS, Model, OpenAISimulator
from tgmux.errors import (
    AuthError,
    BadRequestError,
    NotFoundError,
    QuotaExceededError,
    RateLimitedError,
    UnavailableError,
)

KEY = "sk-test-1234567890"
HELLO = [{"role": "user", "content": "Hello!"}]


@pytest.fixture
async def sim() -> AsyncIterator[OpenAISimulator]:
    models = [Model("small", context_tokens=200), Model("eyes", vision=True)]
    async with OpenAISimulator(api_keys={KEY}, models=models, chunk_size=5) as server:
        yield server  # type: ignore[misc]


def client(sim: OpenAISimulator, **kwargs: object) -> OpenAIClient:
    options = {"api_key": KEY, "http_options": {"retries": 0}, **kwargs}
    return OpenAIClient(sim.base_url, **options)  # type: ignore[arg-type]


async def test_a_json_completion_sends_exactly_the_body_and_headers(
        sim: OpenAISimulator) -> None:
    async with client(sim, extra_headers={"HTTP-Referer": "https://example.org",
                                          "X-Title": "tgmux"}) as api:
        body = chat_body("small", HELLO, temperature=0.7, max_tokens=50, top_p=None)
        answer = await api.complete(body)
    assert answer.text == "You said: Hello!"
    assert answer.finish_reason == "stop"
    assert answer.usage == {
        "prompt_tokens": 6, "completion_tokens": 4, "total_tokens": 10,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                      "accepted_prediction_tokens": 0,
                                      "rejected_prediction_tokens": 0}}
    assert answer.model == "small"
    (request,) = sim.requests
    assert (request.method, request.path) == ("POST", "/v1/chat/completions")
    assert request.json == {"model": "small", "messages": HELLO, "stream": False,
                            "temperature": 0.7, "max_tokens": 50}
    assert request.header("Authorization") == f"Bearer {KEY}"
    assert request.header("Accept") == "application/json"
    assert request.header("HTTP-Referer") == "https://example.org"
    assert request.header("X-Title") == "tgmux"


async def test_no_key_no_authorization_header(sim: OpenAISimulator) -> None:
    sim.api_keys = None  # a local server
    async with client(sim, api_key=None) as api:
        assert (await api.complete(chat_body("small", HELLO))).text == "You said: Hello!"
    assert sim.requests[0].header("Authorization") is None


async def test_a_stream_yields_the_text_in_pieces_and_the_finish(sim: OpenAISimulator) -> None:
    async with client(sim) as api:
        chunks = [c async for c in api.stream(chat_body("small", HELLO))]
    assert [c.content for c in chunks] == ["You s", "aid: ", "Hello", "!", ""]
    assert chunks[-1] == ChatChunk("", "stop", None)
    assert sim.requests[0].json["stream"] is True
    assert sim.requests[0].header("Accept") == "text/event-stream"


async def test_usage_chunk_when_asked_and_reasoning_never_shown(sim: OpenAISimulator) -> None:
    sim.reasoning = True  # reasoning_content deltas and a tool-call delta come first
    async with client(sim) as api:
        body = {**chat_body("small", HELLO), "stream_options": {"include_usage": True}}
        chunks = [c async for c in api.stream(body)]
    assert "".join(c.content for c in chunks) == "You said: Hello!"
    assert not any("think" in c.content for c in chunks)
    # as OpenAI: the last chunk has no choices, the usage (reasoning counted in completion)
    assert chunks[-1] == ChatChunk("", None, {
        "prompt_tokens": 6, "completion_tokens": 4 + REASONING_TOKENS,
        "total_tokens": 10 + REASONING_TOKENS,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": REASONING_TOKENS, "audio_tokens": 0,
                                      "accepted_prediction_tokens": 0,
                                      "rejected_prediction_tokens": 0}}, "small")
    assert REASONING_TOKENS == 6


async def test_no_usage_chunk_unless_asked(sim: OpenAISimulator) -> None:
    async with client(sim) as api:
        chunks = [c async for c in api.stream(chat_body("small", HELLO))]
    assert "".join(c.content for c in chunks) == "You said: Hello!"
    assert [c.usage for c in chunks] == [None] * len(chunks)
    assert "stream_options" not in sim.requests[0].json


def test_chat_body_asks_a_stream_for_its_usage() -> None:
    assert chat_body("m", HELLO, stream=True, stream_usage=True)["stream_options"] == \
        {"include_usage": True}
    assert "stream_options" not in chat_body("m", HELLO, stream=False, stream_usage=True)


async def test_cached_tokens_as_openai_counts_them() -> None:
    """The simulator serves a prompt's repeated leading messages from its cache, in whole
    blocks and above a minimum (OpenAI: 1024 tokens, blocks of 128); here 1 and 1."""
    async with OpenAISimulator(models=[Model("small")], cache_min_tokens=0,
                               cache_block_tokens=1) as server:
        async with OpenAIClient(server.base_url) as api:
            system = {"role": "system", "content": "x" * 40}  # 4 + 10 tokens
            first = await api.complete(chat_body("small", [system, *HELLO]))
            again = await api.complete(chat_body("small", [system, *HELLO]))
    assert first.usage is not None and again.usage is not None
    assert first.usage["prompt_tokens_details"]["cached_tokens"] == 0
    assert again.usage["prompt_tokens"] == 20
    assert again.usage["prompt_tokens_details"]["cached_tokens"] == 14


def test_chunks_that_carry_no_answer_text() -> None:
    for data in ('{"choices":[{"delta":{"role":"assistant"}}]}',
                 '{"choices":[{"delta":{"reasoning":"hmm"}}]}',
                 '{"choices":[{"delta":{"reasoning_content":"hmm","content":null}}]}',
                 '{"choices":[{"delta":{"tool_calls":[{"index":0}]}}]}',
                 '{"choices":[]}', "not json", "[1]"):
        assert parse_chunk(data) is None, data
    assert parse_chunk('{"choices":[{"delta":{"content":[{"type":"text","text":"a"}]}}]}') \
        == ChatChunk("a")
    with pytest.raises(UnavailableError) as info:  # OpenRouter's error event mid-stream
        parse_chunk('{"error":{"message":"upstream died","code":502}}')
    assert info.value.provider_message == "upstream died"


async def test_a_stream_cut_by_an_error_event(sim: OpenAISimulator) -> None:
    sim.fail_stream(after=2, message="overloaded")
    seen: list[str] = []
    async with client(sim) as api:
        with pytest.raises(UnavailableError) as info:
            async for chunk in api.stream(chat_body("small", HELLO)):
                seen.append(chunk.content)
    assert seen == ["You s", "aid: "]
    assert info.value.provider_message == "overloaded"
    assert info.value.request_id and info.value.request_id.startswith("req_")


async def test_a_dropped_stream_is_unavailable(sim: OpenAISimulator) -> None:
    sim.fail_stream(after=1, drop=True)
    async with client(sim) as api:
        with pytest.raises(UnavailableError):
            _ = [c async for c in api.stream(chat_body("small", HELLO))]


# -- errors ------------------------------------------------------------------------------------


async def test_bad_key_is_auth_with_the_provider_message_kept_for_logs(
        sim: OpenAISimulator) -> None:
    async with client(sim, api_key="sk-wrong-key-0000") as api:
        with pytest.raises(AuthError) as info:
            await api.complete(chat_body("small", HELLO))
    assert info.value.status == 401
    assert info.value.details["code"] == "invalid_api_key"
    assert "Incorrect API key" in (info.value.provider_message or "")
    assert info.value.request_id and info.value.request_id.startswith("req_")
    assert "Incorrect" not in info.value.user_message


async def test_unknown_model_is_not_found_and_marked(sim: OpenAISimulator) -> None:
    async with client(sim) as api:
        with pytest.raises(NotFoundError) as info:
            await api.complete(chat_body("gpt-9", HELLO))
    assert info.value.details == {"code": "model_not_found", "type": "invalid_request_error",
                                  "model_missing": True}


async def test_context_too_long_is_marked(sim: OpenAISimulator) -> None:
    async with client(sim) as api:
        with pytest.raises(BadRequestError) as info:
            await api.complete(chat_body("small", [{"role": "user", "content": "x" * 1000}]))
    assert info.value.details["context_exceeded"] is True
    assert "maximum context length is 200 tokens" in (info.value.provider_message or "")


async def test_unknown_parameter_and_image_for_a_text_model(sim: OpenAISimulator) -> None:
    async with client(sim) as api:
        with pytest.raises(BadRequestError) as info:
            await api.complete({**chat_body("small", HELLO), "temprature": 1})
        assert "Unrecognized request argument supplied: temprature" in str(
            info.value.provider_message)
        image = [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]
        with pytest.raises(BadRequestError):
            await api.complete(chat_body("small", image))
        assert (await api.complete(chat_body("eyes", image))).text == \
            "You sent no text [I see 1 image]"


async def test_rate_limit_with_retry_after_is_waited_out(sim: OpenAISimulator) -> None:
    sim.fail(429, "Rate limit reached", type="requests", code="rate_limit_exceeded",
             headers={"Retry-After": "0.05"})
    async with client(sim, http_options={"retries": 1}) as api:
        assert (await api.complete(chat_body("small", HELLO))).text == "You said: Hello!"
    assert len(sim.requests) == 2


async def test_the_simulator_rate_limit_answers_429_with_retry_after(
        sim: OpenAISimulator) -> None:
    sim.rate_limit, sim.rate_window = 1, 120.0
    async with client(sim) as api:
        await api.complete(chat_body("small", HELLO))
        with pytest.raises(RateLimitedError) as info:
            await api.complete(chat_body("small", HELLO))
    assert info.value.details["code"] == "rate_limit_exceeded"
    assert 100 <= (info.value.retry_after or 0) <= 120
    assert info.value.user_message == "The AI provider is busy; please try again in about 2 min."


@pytest.mark.parametrize(("status", "body", "kind", "detail"), [
    (400, {"error": {"message": "400: {'error': 'Invalid model name passed in model=gpt-x'}",
                     "type": "None", "param": "None", "code": "400"}},
     NotFoundError, "model_missing"),  # a LiteLLM proxy
    (404, {"error": {"message": 'model "llama9" not found, try pulling it first',
                     "type": "api_error", "param": None, "code": None}},
     NotFoundError, "model_missing"),  # Ollama
    (400, {"object": "error", "message": "This model's maximum context length is 4096 tokens. "
           "However, you requested 5000 tokens", "type": "BadRequestError", "code": 400},
     BadRequestError, None),  # vLLM (no "error" wrapper: read from the text, below)
    (429, {"error": {"message": "You exceeded your current quota", "type": "insufficient_quota",
                     "code": "insufficient_quota"}}, QuotaExceededError, None),
    (503, {"error": {"message": "overloaded", "type": "server_error", "code": None}},
     UnavailableError, None),
    (500, "<html>oops</html>", UnavailableError, None),
])
def test_error_bodies_of_compatible_servers(status: int, body: object, kind: type,
                                            detail: str | None) -> None:
    response = (httpx.Response(status, json=body) if not isinstance(body, str)
                else httpx.Response(status, text=body))
    error = parse_error(response)
    assert type(error) is kind
    assert error.status == status
    if detail:
        assert error.details[detail] is True
    assert error.provider_message  # for the logs


def test_vllm_context_error_without_the_error_wrapper() -> None:
    body = {"object": "error", "message": "This model's maximum context length is 4096 tokens."}
    error = parse_error(httpx.Response(400, json=body))
    assert error.details.get("context_exceeded") is True


def test_quota_user_message_survives_the_http_layer_calling_it_rate_limited() -> None:
    body = {"error": {"message": "quota", "type": "insufficient_quota",
                      "code": "insufficient_quota"}}
    error = parse_error(httpx.Response(429, json=body))
    assert error.user_message == "The AI provider's credits for this bot are used up."
    assert error.has_own_user_message


@pytest.mark.parametrize(("text", "seconds"), [
    ("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("1h2m3.5s", 3723.5), ("0.5s", 0.5),
    ("30", 30.0), ("", None), ("soon", None), ("5x", None), ("1s2", None),
])
def test_rate_limit_reset_durations(text: str, seconds: float | None) -> None:
    assert parse_duration(text) == (None if seconds is None else pytest.approx(seconds))


def test_retry_after_from_headers() -> None:
    assert retry_after_from({"retry-after": "7"}) == 7.0
    assert retry_after_from({"retry-after-ms": "1500"}) == 1.5
    # the limit that is used up decides
    assert retry_after_from(httpx.Headers({
        "x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-remaining-tokens": "5000", "x-ratelimit-reset-tokens": "6m0s"})) == 1.0
    assert retry_after_from(httpx.Headers({
        "x-ratelimit-remaining-requests": "3", "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "6m0s"})) == 360.0
    # neither says so: the later one, to be safe
    assert retry_after_from(httpx.Headers({"x-ratelimit-reset-requests": "20ms",
                                           "x-ratelimit-reset-tokens": "2s"})) == 2.0
    assert retry_after_from({}) is None


def test_a_429_with_reset_headers_tells_the_user_when() -> None:
    response = httpx.Response(
        429, json={"error": {"message": "Rate limit reached", "code": "rate_limit_exceeded"}},
        headers={"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "6m0s",
                 "x-request-id": "req_abc"})
    error = parse_error(response)
    assert isinstance(error, RateLimitedError)
    assert error.retry_after == 360.0
    assert error.request_id == "req_abc"
    assert error.user_message == "The AI provider is busy; please try again in about 6 min."


def test_chat_body_refuses_unknown_sampling_settings() -> None:
    with pytest.raises(ValueError, match="temprature"):
        chat_body("m", HELLO, temprature=1)


@pytest.mark.parametrize("headers", [
    {"retry-after": "inf"}, {"retry-after-ms": "1e400"},
    {"x-ratelimit-reset-requests": "inf", "x-ratelimit-remaining-requests": "0"},
])
def test_an_absurd_rate_limit_reset_is_clamped_and_said_as_a_date(headers) -> None:
    from tgmux.backends.openai.client import parse_error_body
    from tgmux.errors import MAX_WAIT

    error = parse_error_body(429, {"error": {"message": "slow down"}}, headers)
    assert error.retry_after == MAX_WAIT
    assert error.user_message.startswith("The AI provider is busy; please try again after ")
