"""The OpenAI-compatible routes, checked by PyPI's `openai` SDK against `myelin serve` and `myelin local`:
the examples (text-generator: chat and completions, streamed or not; sentence-embedding: embeddings) and a
scripted generator (tests/protocols/apis/chatter) for stop sequences, errors, overload, API keys and the
streaming guarantees (a disconnect closes the generator, the slot is held to the last byte, time to first
item is measured)."""

from __future__ import annotations

import json
import threading
import time

import httpx
import numpy as np
import openai
import pytest
from openai import OpenAI

from conftest import ServerProcess

from .conftest import scripted_api


def sdk(server: ServerProcess, endpoint: str, key: str = "unused", retries: int = 0) -> OpenAI:
    return OpenAI(base_url=f"{server.base}/{endpoint}/v1", api_key=key, max_retries=retries, timeout=30)


def metric(server: ServerProcess, line_start: str) -> float:
    for line in httpx.get(server.base + "/metrics").text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def wait_for(condition, what: str, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"{what} not seen within {timeout}s")


@pytest.fixture(params=["serve", "local"])
def generator_server(request, serve_example, local_examples):
    return serve_example("text-generator") if request.param == "serve" else local_examples


@pytest.fixture(params=["serve", "local"])
def embedding_server(request, serve_example, local_examples):
    return serve_example("sentence-embedding") if request.param == "serve" else local_examples


# ------------------------------------------------------------------------------------------- the examples
def test_text_generator_completions_and_chat(generator_server):
    client = sdk(generator_server, "text-generator")
    assert [m.id for m in client.models.list().data] == ["text-generator"]
    assert client.models.retrieve("text-generator").owned_by == "myelin"
    native = httpx.post(generator_server.base + "/text-generator",
                        json={"prompt": "A generator function", "max_tokens": 12, "seed": 7}).text
    want = "".join(json.loads(line).get("token", "") for line in native.splitlines())
    done = client.completions.create(model="text-generator", prompt="A generator function", max_tokens=12, seed=7)
    assert done.choices[0].text == want and done.choices[0].finish_reason == "length"
    assert done.object == "text_completion" and done.model == "text-generator"
    assert (done.usage.prompt_tokens, done.usage.completion_tokens, done.usage.total_tokens) == (3, 12, 15)
    chat = client.chat.completions.create(model="text-generator", seed=7, max_completion_tokens=12,
                                          messages=[{"role": "user", "content": "A generator function"}])
    assert chat.choices[0].message.content == want and chat.choices[0].message.role == "assistant"
    assert chat.choices[0].finish_reason == "length" and chat.object == "chat.completion"
    # Without max_tokens the predictor's own limit ends the text; its last item gives the finish reason and usage.
    free = client.completions.create(model="text-generator", prompt="The import statement", seed=1)
    assert free.choices[0].finish_reason == "length" and free.usage.completion_tokens == 40
    # temperature and seed reach the predictor: temperature 0 is the same text whatever the seed.
    greedy = {client.completions.create(model="text-generator", prompt="The import statement", max_tokens=10,
                                        temperature=0, seed=s).choices[0].text for s in range(3)}
    assert len(greedy) == 1


def test_text_generator_streams_chunks_then_done(generator_server):
    client = sdk(generator_server, "text-generator")
    want = client.completions.create(model="text-generator", prompt="A generator function", max_tokens=9,
                                     seed=3).choices[0].text
    chunks = list(client.completions.create(model="text-generator", prompt="A generator function", max_tokens=9,
                                            seed=3, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == want
    assert [c.choices[0].finish_reason for c in chunks][-1] == "length" and len(chunks) == 10
    stream = client.chat.completions.create(model="text-generator", seed=3, max_tokens=9, stream=True,
                                            stream_options={"include_usage": True},
                                            messages=[{"role": "system", "content": "Be brief."},
                                                      {"role": "user", "content": "A generator function"}])
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 9
    assert chunks[-2].choices[0].finish_reason == "length"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == want  # the chat prompt is the messages' text; the model continues its last words
    # The wire format: `data: {chunk}` events, then `data: [DONE]`.
    with httpx.stream("POST", generator_server.base + "/text-generator/v1/completions", json={
            "model": "text-generator", "prompt": "A generator", "max_tokens": 3, "stream": True}) as raw:
        assert raw.headers["content-type"].startswith("text/event-stream")
        events = [e for e in raw.read().decode().split("\n\n") if e]
    assert events[-1] == "data: [DONE]" and all(e.startswith("data: {") for e in events[:-1])


def test_sentence_embedding_embeddings(embedding_server):
    client = sdk(embedding_server, "sentence-embedding")
    texts = ["A cat sat on the mat.", "Serving models is fun", "A kitten rested on the rug."]
    answer = client.embeddings.create(model="sentence-embedding", input=texts)  # the SDK asks for base64
    assert [d.index for d in answer.data] == [0, 1, 2] and answer.model == "sentence-embedding"
    vectors = np.array([d.embedding for d in answer.data])
    assert vectors.shape == (3, 384) and answer.usage.prompt_tokens == 6 + 4 + 6  # words
    for text, vector in zip(texts, vectors):
        native = httpx.post(embedding_server.base + "/sentence-embedding", content=text,
                            headers={"content-type": "text/plain"}).json()["embedding"]
        assert np.allclose(vector, native, atol=1e-5)
    floats = client.embeddings.create(model="sentence-embedding", input=texts[0], encoding_format="float")
    assert np.allclose(floats.data[0].embedding, vectors[0], atol=1e-6)
    assert vectors[0] @ vectors[2] > vectors[0] @ vectors[1]
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model="sentence-embedding", input=["fine", "   "])
    assert "input[1]: text must not be empty" in err.value.message
    assert err.value.body["code"] == "predictor_error"
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model="sentence-embedding", input="x", dimensions=12)
    assert err.value.body["param"] == "dimensions"


def test_errors_in_openai_shape(serve_example):
    server = serve_example("text-generator")
    client = sdk(server, "text-generator")
    with pytest.raises(openai.NotFoundError) as err:
        client.completions.create(model="gpt-4", prompt="x")
    assert err.value.body == {"message": "the model 'gpt-4' does not exist here; this API serves 'text-generator'",
                              "type": "invalid_request_error", "param": "model", "code": "model_not_found"}
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="text-generator", prompt="x", n=2)
    assert err.value.body["param"] == "n" and "n > 1 is not supported" in err.value.message
    with pytest.raises(openai.BadRequestError) as err:  # the predictor's own 400, before the stream starts
        list(client.completions.create(model="text-generator", prompt="x", max_tokens=1000, stream=True))
    assert err.value.body["code"] == "predictor_error" and "max_tokens" in err.value.message
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="text-generator", messages=[])
    with pytest.raises(openai.NotFoundError):  # an API serving chat and completions has no embeddings
        client.embeddings.create(model="text-generator", input="x")
    assert err.value.response.headers["x-request-id"]


# ------------------------------------------------------------------------------------------- scripted
@pytest.fixture
def chatter(tmp_path):
    state = tmp_path / "state"

    def start(class_name: str = "Predictor", env: dict | None = None, **overrides) -> tuple[ServerProcess, object]:
        folder = scripted_api("chatter", tmp_path, state, class_name, **overrides)
        server = ServerProcess(["serve", str(folder)], tmp_path, env=env)
        servers.append(server)
        server.wait_ready()
        return server, state

    servers: list[ServerProcess] = []
    yield start
    for server in servers:
        server.stop()


def test_stop_sequences_end_the_text_and_close_the_generator(chatter):
    server, state = chatter()
    # One slot, no queue: the slot of a generator closed at a stop sequence is free once its close has run in
    # the thread pool, just after the answer; a request sent at once may get the 503 + Retry-After the SDK retries.
    client = sdk(server, "chatter", retries=3)
    done = client.completions.create(model="chatter", prompt="one two three four five", stop=["thr", "zzz"],
                                     max_tokens=50, temperature=0.5, seed=4, top_p=0.9)
    assert done.choices[0].text == " one two " and done.choices[0].finish_reason == "stop"
    payload = json.loads((state / "payload.json").read_text())
    assert payload == {"prompt": "one two three four five", "max_tokens": 50, "stop": ["thr", "zzz"],
                       "temperature": 0.5, "top_p": 0.9, "seed": 4}
    closed = state / "closed-1"
    deadline = time.monotonic() + 20
    while not closed.exists() and time.monotonic() < deadline:  # written by the close, in the thread pool
        time.sleep(0.02)
    assert closed.read_text() == "exit"  # the generator was closed at the stop, not run to its end
    chunks = list(client.completions.create(model="chatter", prompt="one two three four", stop="o t", stream=True))
    assert "".join(c.choices[0].text for c in chunks) == " one tw" and chunks[-1].choices[0].finish_reason == "stop"
    chunks = list(client.completions.create(model="chatter", prompt="a b c d e f", max_tokens=2, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == " a b" and chunks[-1].choices[0].finish_reason == "length"
    chat = client.chat.completions.create(model="chatter", messages=[
        {"role": "system", "content": [{"type": "text", "text": "x y"}]}, {"role": "user", "content": "z"}])
    assert chat.choices[0].message.content == " x y z" and chat.choices[0].finish_reason == "stop"
    assert json.loads((state / "payload.json").read_text())["messages"][1] == {"role": "user", "content": "z"}
    assert chat.usage.completion_tokens == 3 and chat.usage.prompt_tokens == 3  # items, and the prompt's words


def test_a_failure_after_the_first_chunk_ends_the_stream_with_an_error_event(chatter):
    server, state = chatter()
    client = sdk(server, "chatter")
    stream = client.completions.create(model="chatter", prompt="one two fail", stream=True)
    got = []
    with pytest.raises(openai.APIError) as err:
        for chunk in stream:
            got.append(chunk.choices[0].text)
    assert got == [" one", " two"] and err.value.body["code"] == "predictor_failure"
    with pytest.raises(openai.InternalServerError):  # not streamed: the same failure is an ordinary 500
        client.completions.create(model="chatter", prompt="one fail")


def test_plain_predict_and_its_usage(chatter):
    server, _ = chatter("Whole")
    client = sdk(server, "chatter")
    done = client.completions.create(model="chatter", prompt="shout this")
    assert done.choices[0].text == "SHOUT THIS" and done.usage.prompt_tokens == 7 and done.usage.completion_tokens == 2
    chunks = list(client.chat.completions.create(model="chatter", messages=[{"role": "user", "content": "hi you"}],
                                                 stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "HI YOU"
    assert chunks[-1].usage.total_tokens == 9


def test_disconnect_closes_the_generator_and_the_slot_is_held_to_the_last_byte(chatter):
    server, state = chatter()
    client = sdk(server, "chatter")
    first_items = metric(server, 'myelin_time_to_first_item_seconds_count{api="chatter"}')
    stream = client.chat.completions.create(model="chatter", stream=True,
                                            messages=[{"role": "user", "content": "hello wait world and more"}])
    chunks = iter(stream)
    assert next(chunks).choices[0].delta.content == " hello"
    # The generator waits: the request holds its ticket and the one slot (max_concurrency 1, no queue).
    assert metric(server, 'myelin_in_flight_requests{api="chatter"}') == 1
    with pytest.raises(openai.InternalServerError) as err:  # a second request finds no slot: 503, Retry-After
        client.completions.create(model="chatter", prompt="x")
    assert err.value.status_code == 503 and err.value.response.headers["retry-after"] == "1"
    assert err.value.body["code"] == "overloaded"
    assert metric(server, 'myelin_time_to_first_item_seconds_count{api="chatter"}') == first_items + 1
    stream.close()  # the client goes away mid-stream
    log = wait_for(lambda: [l for l in server.log_lines() if l.get("status") == 499], "the 499 log line")
    assert log[0]["path"] == "/chatter/v1/chat/completions"
    # The step under way (a sync next() in a thread) cannot be interrupted: until it returns, the call holds its
    # slot and its ticket; then the generator is closed (its finally runs) and both are freed.
    assert metric(server, 'myelin_in_flight_requests{api="chatter"}') == 1 and not (state / "closed-1").exists()
    (state / "go").write_text("1")
    wait_for(lambda: (state / "closed-1").exists(), "the generator closed after the disconnect")
    assert (state / "closed-1").read_text() == "exit"  # closed, not run to its end
    wait_for(lambda: metric(server, 'myelin_in_flight_requests{api="chatter"}') == 0, "the slot freed")
    # Not streamed: a client that gives up (timeout) closes the generator too.
    (state / "go").unlink()
    with pytest.raises(openai.APITimeoutError):
        sdk(server, "chatter").with_options(timeout=1.0).completions.create(model="chatter", prompt="a wait b c")
    (state / "go").write_text("1")
    wait_for(lambda: (state / "closed-2").exists(), "the generator closed after the client's timeout")
    assert (state / "closed-2").read_text() == "exit"
    wait_for(lambda: metric(server, 'myelin_in_flight_requests{api="chatter"}') == 0, "the slot freed")


def test_overload_is_retried_by_the_sdk(chatter):
    server, state = chatter()
    holder = threading.Thread(target=lambda: sdk(server, "chatter").completions.create(model="chatter",
                                                                                     prompt="a wait b"))
    holder.start()
    wait_for(lambda: metric(server, 'myelin_in_flight_requests{api="chatter"}') == 1, "the slot held")
    threading.Timer(0.5, lambda: (state / "go").write_text("1")).start()
    # 503 + Retry-After: 1, retried by the SDK once the slot is free.
    done = sdk(server, "chatter", retries=5).completions.create(model="chatter", prompt="after")
    holder.join(20)
    assert done.choices[0].text == " after"
    assert metric(server, 'myelin_rejected_requests_total{api="chatter",reason="overloaded"}') >= 1


def test_bearer_keys(chatter):
    server, _ = chatter(env={"CHATTER_KEYS": "sk-one,sk-two"}, networking={"auth": {"api_keys_env": "CHATTER_KEYS"}})
    with pytest.raises(openai.AuthenticationError) as err:
        sdk(server, "chatter", key="sk-wrong").models.list()
    assert err.value.body["type"] == "authentication_error"
    with pytest.raises(openai.AuthenticationError):
        sdk(server, "chatter", key="sk-wrong").completions.create(model="chatter", prompt="x")
    assert sdk(server, "chatter", key="sk-two").completions.create(model="chatter", prompt="x y").choices[0].text == " x y"


def test_more_inputs_than_max_batch_size(serve_example):
    server = serve_example("sentence-embedding")  # batches at most 64 texts
    texts = [f"sentence number {i}" for i in range(70)]
    answer = sdk(server, "sentence-embedding").embeddings.create(model="sentence-embedding", input=texts)
    assert [d.index for d in answer.data] == list(range(70))
    last = httpx.post(server.base + "/sentence-embedding", json={"text": texts[-1]}).json()["embedding"]
    assert np.allclose(answer.data[-1].embedding, last, atol=1e-5)
