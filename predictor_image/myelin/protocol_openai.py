"""OpenAI-compatible routes over an ordinary predictor: `networking.protocols: [openai]`.

Under `<endpoint>/v1` (a client sets `base_url="<host>/<endpoint>/v1"` and `model="<api name>"`):

- `POST /chat/completions`, `POST /completions` (`openai.routes: [chat, completions]`, the default);
- `POST /embeddings` (`openai.routes: [embeddings]`);
- `GET /models`, `GET /models/<api name>`.

How a request reaches `predict`:

- completions and chat: one payload `{"prompt": str, ...}` with the request's `max_tokens`, `stop`,
  `temperature`, `top_p` and `seed` when given (`max_completion_tokens` arrives as `max_tokens`); chat adds
  `messages` (the request's list) and its `prompt` is the messages' text contents joined by newlines.
  A generator `predict` streams: each item is a piece of text, a `str` or a dict whose `text` (or `token`)
  is one; a dict may also carry `finish_reason` ("stop" or "length") and `usage` (`prompt_tokens`,
  `completion_tokens`), and other keys are ignored. A plain `predict` returns the whole text, a `str` or
  such a dict. The adapter stops the text at the first `stop` sequence (finish_reason "stop") and after
  `max_tokens` items (finish_reason "length"), closing the generator either way.
- embeddings: one payload per input string (the inputs of a request join one batch on a batched API);
  each result is the vector (a list or array of numbers) or a dict with `embedding`.

Token counts (`usage`) come from the predictor when it gives them (`usage` on an item or result), else:
completion tokens are the text items yielded (one for a plain predict's whole text), prompt tokens the
whitespace-separated words of the prompt (of each input, for embeddings).

Errors take OpenAI's shape `{"error": {"message", "type", "param", "code"}}`: `type` is
`invalid_request_error` (4xx), `authentication_error` (401) or `server_error` (5xx); `code` is Myelin's
error type (`overloaded`, `timeout`, `predictor_error`, `model_not_found`...). Overload keeps Myelin's 503
with Retry-After (the SDK retries it). A stream that fails after it started ends with an event
`data: {"error": ...}` and no `[DONE]`. Streaming goes through `streaming.Stream`: a client that
disconnects closes the generator, the slot is held to the last byte, time to first item is measured.
"""

from __future__ import annotations

import base64
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from .errors import HTTPError, PredictorError
from .http_io import ClientGone, RequestHead, Send
from .endpoint import handle_predict
from .protocols import ProtocolError, check_access, extras
from .streaming import SSE, Framing, Stream

if TYPE_CHECKING:
    from .lifecycle import Ticket
    from .runtime import ApiRuntime

JSON = b"application/json"
_NUMPY = orjson.OPT_SERIALIZE_NUMPY
MAX_STOP = 4


# ------------------------------------------------------------------------------------------- errors
def _error_kind(status: int) -> str:
    if status == 401:
        return "authentication_error"
    return "invalid_request_error" if status < 500 else "server_error"


def error_object(status: int, error_type: str, message: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": _error_kind(status), "param": param, "code": error_type}}


async def write_error(send: Send, status: int, error_type: str, message: str, request_id: str,
                      headers: list[tuple[bytes, bytes]] | None = None, param: str | None = None) -> None:
    body = orjson.dumps(error_object(status, error_type, message, param))
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", JSON), (b"content-length", str(len(body)).encode()),
        (b"x-request-id", request_id.encode("latin-1")), *(headers or []),
    ]})
    await send({"type": "http.response.body", "body": body})


def _bad(message: str, param: str | None = None) -> ProtocolError:
    return ProtocolError(400, "invalid_request", message, param)


async def _send_json(send: Send, data: Any, request_id: str, status: int = 200) -> None:
    body = orjson.dumps(data, option=_NUMPY)
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", JSON), (b"content-length", str(len(body)).encode()),
        (b"x-request-id", request_id.encode("latin-1")),
    ]})
    await send({"type": "http.response.body", "body": body})


# ------------------------------------------------------------------------------------------- requests
def _words(text: str) -> int:
    return len(text.split())


def _decode(body: bytes) -> dict[str, Any]:
    if not body:
        raise _bad("empty body: expected a JSON object")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as err:
        raise _bad(f"malformed JSON: {err}") from None
    if not isinstance(doc, dict):
        raise _bad("the request must be a JSON object")
    return doc


def _check_model(doc: dict[str, Any], name: str) -> None:
    model = doc.get("model")
    if not isinstance(model, str):
        raise _bad(f"model is required: this API serves the model {name!r}", "model")
    if model != name:
        raise ProtocolError(404, "model_not_found", f"the model {model[:80]!r} does not exist here; this API "
                            f"serves {name!r}", "model")


def _int(doc: dict[str, Any], key: str, low: int, high: int | None = None) -> int | None:
    value = doc.get(key)
    if value is None:
        return None
    if type(value) is not int or value < low or (high is not None and value > high):
        bound = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise _bad(f"{key} must be a whole number {bound}", key)
    return value


def _number(doc: dict[str, Any], key: str, low: float, high: float) -> float | None:
    value = doc.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise _bad(f"{key} must be a number from {low:g} to {high:g}", key)
    return value


class TextRequest:
    """A completions or chat request, checked; `payload` is what predict gets."""

    def __init__(self, doc: dict[str, Any], chat: bool):
        self.chat = chat
        if doc.get("n") not in (None, 1):
            raise _bad("n > 1 is not supported: this API answers one choice per request; send one request per "
                       "completion", "n")
        if doc.get("best_of") not in (None, 1):
            raise _bad("best_of > 1 is not supported", "best_of")
        if doc.get("echo"):
            raise _bad("echo is not supported", "echo")
        if doc.get("suffix") is not None:
            raise _bad("suffix is not supported", "suffix")
        if doc.get("logprobs") not in (None, False, 0) or doc.get("top_logprobs") is not None:
            raise _bad("logprobs are not supported", "logprobs")
        for key in ("tools", "functions", "tool_choice", "function_call"):
            if doc.get(key) not in (None, [], "none"):
                raise _bad(f"{key} is not supported: this API generates text only", key)
        stream = doc.get("stream", False)
        if not isinstance(stream, bool) and stream is not None:
            raise _bad("stream must be true or false", "stream")
        self.stream = bool(stream)
        options = doc.get("stream_options")
        if options is not None and not isinstance(options, dict):
            raise _bad("stream_options must be an object", "stream_options")
        if options and not self.stream:
            raise _bad("stream_options is only allowed with stream: true", "stream_options")
        self.include_usage = bool(options and options.get("include_usage"))
        payload: dict[str, Any] = {}
        if chat:
            messages = doc.get("messages")
            if not isinstance(messages, list) or not messages:
                raise _bad("messages must be a non-empty list of {role, content}", "messages")
            texts = []
            for i, message in enumerate(messages):
                if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                    raise _bad(f"messages[{i}] must be an object with a role and content", f"messages[{i}]")
                texts.append(_content(message.get("content"), i))
            payload["prompt"] = "\n".join(t for t in texts if t)
            payload["messages"] = messages
            max_tokens = _int(doc, "max_completion_tokens", 1)
            if max_tokens is None:
                max_tokens = _int(doc, "max_tokens", 1)
        else:
            prompt = doc.get("prompt")
            if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
                prompt = prompt[0]
            if not isinstance(prompt, str):
                raise _bad("prompt must be a string (one prompt per request; token arrays are not supported)",
                           "prompt")
            payload["prompt"] = prompt
            max_tokens = _int(doc, "max_tokens", 1)
        self.max_tokens = max_tokens
        if max_tokens is not None:
            payload["max_tokens"] = max_tokens
        stop = doc.get("stop")
        if isinstance(stop, str):
            stop = [stop]
        if stop is not None:
            if (not isinstance(stop, list) or len(stop) > MAX_STOP
                    or not all(isinstance(s, str) and s for s in stop)):
                raise _bad(f"stop must be a non-empty string or a list of at most {MAX_STOP} of them", "stop")
            payload["stop"] = stop
        self.stop: list[str] = stop or []
        for key, low, high in (("temperature", 0.0, 2.0), ("top_p", 0.0, 1.0)):
            value = _number(doc, key, low, high)
            if value is not None:
                payload[key] = value
        seed = doc.get("seed")
        if seed is not None:
            if type(seed) is not int:
                raise _bad("seed must be a whole number", "seed")
            payload["seed"] = seed
        self.payload = payload
        self.prompt = payload["prompt"]


def _content(content: Any, i: int) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise _bad(f"messages[{i}].content: only text parts are supported", f"messages[{i}].content")
            parts.append(part["text"])
        return "".join(parts)
    raise _bad(f"messages[{i}].content must be a string or a list of text parts", f"messages[{i}].content")


# ------------------------------------------------------------------------------------------- text out
def piece(item: Any) -> tuple[str | None, str | None, dict | None]:
    """(text, finish_reason, usage) of one item or result; TypeError for what is neither a str nor a dict."""
    if isinstance(item, str):
        return item, None, None
    if isinstance(item, dict):
        text = item.get("text")
        if text is None:
            text = item.get("token")
        if text is not None and not isinstance(text, str):
            raise TypeError(f"the item's text is a {type(text).__name__}, not a str")
        reason = item.get("finish_reason")
        if reason not in (None, "stop", "length"):
            raise TypeError(f"finish_reason must be 'stop' or 'length', got {str(reason)[:40]!r}")
        usage = item.get("usage")
        if usage is not None and not isinstance(usage, dict):
            raise TypeError("usage must be a dict of token counts")
        return text, reason, usage
    raise TypeError(f"an item must be a str or a dict with 'text', got {type(item).__name__}")


class Completion(Framing):
    """The text of one completion as it is produced: stop sequences, max_tokens, usage; and, streaming, its
    Server-Sent Events (OpenAI's chunks, then `data: [DONE]`). Not streaming, it only collects."""

    pure = False  # stateful (stop sequences, the text so far): items are encoded on the loop, one step at a time

    def __init__(self, request: TextRequest, model: str, request_id: str):
        super().__init__(SSE)
        self.request = request
        self.model = model
        self.id = ("chatcmpl-" if request.chat else "cmpl-") + request_id
        self.created = int(time.time())
        self.streaming = request.stream
        self.text: list[str] = []
        self.items = 0
        self.finish_reason: str | None = None
        self.usage: dict | None = None
        self._pending = ""  # text held back: it may be the start of a stop sequence
        self._hold = max((len(s) for s in request.stop), default=1) - 1
        self._role_sent = False
        self.complete = False
        #: (status, error type, message) when the stream ended with an error.
        self.failed: tuple[int, str, str] | None = None

    # ------------------------------------------------------------------ text
    def feed(self, item: Any, whole: bool = False) -> str:
        """Take one item (`whole`: a plain predict's whole answer); the text that may go out now."""
        text, reason, usage = piece(item)
        if usage is not None:
            self.usage = usage
        if reason is not None:
            self.finish_reason = reason
        out = ""
        if text:
            self.items += 1
            out = self._emit(text)
        if reason is not None and not self.complete:
            self.complete = True
        max_tokens = self.request.max_tokens
        if not whole and not self.complete and max_tokens is not None and self.items >= max_tokens:
            self.complete = True
            self.finish_reason = self.finish_reason or "length"
        return out

    def _emit(self, text: str) -> str:
        stops = self.request.stop
        if not stops:
            self.text.append(text)
            return text
        pending = self._pending + text
        cut = min((i for i in (pending.find(s) for s in stops) if i >= 0), default=-1)
        if cut >= 0:
            self.complete = True
            self.finish_reason = "stop"
            out = pending[:cut]
            self._pending = ""
        else:
            keep = min(self._hold, len(pending))
            out = pending[:len(pending) - keep]
            self._pending = pending[len(pending) - keep:]
        if out:
            self.text.append(out)
        return out

    def flush(self) -> str:
        out, self._pending = self._pending, ""
        if out:
            self.text.append(out)
        return out

    def counts(self) -> dict[str, int]:
        usage = self.usage or {}
        prompt = usage.get("prompt_tokens")
        completion = usage.get("completion_tokens")
        prompt = prompt if type(prompt) is int and prompt >= 0 else _words(self.request.prompt)
        completion = completion if type(completion) is int and completion >= 0 else self.items
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    # ------------------------------------------------------------------ chunks
    def _chunk(self, text: str | None, finish_reason: str | None) -> bytes:
        if self.request.chat:
            delta: dict[str, Any] = {}
            if not self._role_sent:
                delta["role"] = "assistant"
                self._role_sent = True
            if text is not None:
                delta["content"] = text
            choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            data: dict[str, Any] = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                                    "model": self.model, "choices": [choice]}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
            data = {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                    "choices": [choice]}
        if self.request.include_usage:
            data["usage"] = None
        return b"data: " + orjson.dumps(data) + b"\n\n"

    def item(self, item: Any) -> bytes:  # Framing: one generator item
        out = self.feed(item)
        if not self.streaming:
            return b""
        if out or (self.request.chat and not self._role_sent):
            return self._chunk(out, None)
        return b""

    def end(self) -> bytes:  # Framing: the stream ended well
        rest = self.flush()
        self.finish_reason = self.finish_reason or "stop"
        if not self.streaming:
            return b""
        parts = []
        if rest:
            parts.append(self._chunk(rest, None))
        parts.append(self._chunk(None, self.finish_reason))
        if self.request.include_usage:
            usage = {"id": self.id, "object": "chat.completion.chunk" if self.request.chat else "text_completion",
                     "created": self.created, "model": self.model, "choices": [], "usage": self.counts()}
            parts.append(b"data: " + orjson.dumps(usage) + b"\n\n")
        parts.append(b"data: [DONE]\n\n")
        return b"".join(parts)

    def error(self, error_type: str, message: str, request_id: str) -> bytes:  # Framing: ended by an error
        status = _STATUS.get(error_type, 500)
        self.failed = (status, error_type, message)
        if not self.streaming:
            return b""
        return b"data: " + orjson.dumps(error_object(status, error_type, message)) + b"\n\n"

    # ------------------------------------------------------------------ whole answers
    def response(self) -> dict[str, Any]:
        text = "".join(self.text)
        if self.request.chat:
            choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                                      "logprobs": None, "finish_reason": self.finish_reason or "stop"}
            kind = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": self.finish_reason or "stop"}
            kind = "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": [choice],
                "usage": self.counts()}


#: The status of an error a stream ends with, by type (streaming.py ends with these).
_STATUS = {"timeout": 504, "shutting_down": 503, "internal": 500, "predictor_failure": 500, "predictor_error": 400}


class _Discard:
    """`send` for a collected (non-streaming) answer: the stream's own writes go nowhere."""

    async def __call__(self, message: dict) -> None:
        return None


# ------------------------------------------------------------------------------------------- routes
class OpenAIApi:
    def __init__(self, runtime: "ApiRuntime"):
        self.runtime = runtime
        self.name = runtime.spec.name
        self.routes = runtime.spec.openai_routes
        spec = runtime.spec.openai
        self.max_inputs = spec.max_inputs if spec is not None else 2048

    def model_object(self) -> dict[str, Any]:
        created = int(self.runtime.ready_at or time.time())
        return {"id": self.name, "object": "model", "created": created, "owned_by": "myelin"}

    # ------------------------------------------------------------------ GET /models
    async def models(self, scope: dict, receive: Any, send: Send) -> None:
        await self._get(scope, send, lambda: {"object": "list", "data": [self.model_object()]})

    async def model(self, scope: dict, receive: Any, send: Send) -> None:
        await self._get(scope, send, self.model_object)

    async def _get(self, scope: dict, send: Send, answer: Any) -> None:
        runtime = self.runtime
        keys = runtime.api_keys
        head = RequestHead(scope["headers"], keys.header if keys is not None else b"")
        try:
            check_access(runtime, head)
        except HTTPError as err:
            await write_error(send, err.status_code, err.error_type, err.message, head.request_id, err.headers)
            return
        await _send_json(send, answer(), head.request_id)

    # ------------------------------------------------------------------ POST text
    async def chat(self, scope: dict, receive: Any, send: Send) -> None:
        await handle_predict(self.runtime, scope, receive, send, self._text_work(True), write_error)

    async def completions(self, scope: dict, receive: Any, send: Send) -> None:
        await handle_predict(self.runtime, scope, receive, send, self._text_work(False), write_error)

    def _text_work(self, chat: bool) -> Any:
        async def work(runtime: "ApiRuntime", scope: dict, receive: Any, send: Send, head: RequestHead,
                       ticket: "Ticket") -> tuple[int, str | None]:
            doc = _decode(await ticket.read_body(receive, runtime.max_body))
            _check_model(doc, self.name)
            request = TextRequest(doc, chat)
            completion = Completion(request, self.name, head.request_id)
            kwargs = extras(runtime, scope)
            start = time.perf_counter()
            if runtime.predictor.streams:
                target = send if request.stream else _Discard()
                stream = Stream(runtime, completion, head.request_id, target, start)
                status, error_type = await stream.run(request.payload, kwargs, ticket, receive)
                if request.stream:
                    return status, error_type
                if status == 499:  # the client left: nobody to answer
                    return status, error_type
                if completion.failed is not None:  # ended by an error after its first item: answer with it
                    await write_error(send, status, error_type or "internal", completion.failed[2], head.request_id)
                    return status, error_type
            else:
                result = await runtime.invoker.invoke(request.payload, kwargs, ticket)
                if isinstance(result, PredictorError):
                    raise result
                try:
                    completion.feed(result, whole=True)
                except TypeError as err:
                    raise HTTPError(500, "internal", f"predict's result cannot be a completion: {err}") from None
                if request.stream:
                    first = completion._chunk("".join(completion.text), None) if completion.text else b""
                    body = first + completion.end()
                    await send({"type": "http.response.start", "status": 200, "headers": [
                        (b"content-type", SSE), (b"x-request-id", head.request_id.encode("latin-1")),
                        (b"cache-control", b"no-cache")]})
                    await send({"type": "http.response.body", "body": body})
                    return 200, None
                completion.flush()
            await _send_json(send, completion.response(), head.request_id)
            return 200, None

        return work

    # ------------------------------------------------------------------ POST /embeddings
    async def embeddings(self, scope: dict, receive: Any, send: Send) -> None:
        await handle_predict(self.runtime, scope, receive, send, self._embeddings_work, write_error)

    async def _embeddings_work(self, runtime: "ApiRuntime", scope: dict, receive: Any, send: Send, head: RequestHead,
                               ticket: "Ticket") -> tuple[int, str | None]:
        doc = _decode(await ticket.read_body(receive, runtime.max_body))
        _check_model(doc, self.name)
        inputs = doc.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs or not all(isinstance(s, str) for s in inputs):
            raise _bad("input must be a string or a non-empty list of strings (token arrays are not supported)",
                       "input")
        if len(inputs) > self.max_inputs:
            raise _bad(f"at most {self.max_inputs} inputs per request (openai.max_inputs), got {len(inputs)}", "input")
        encoding = doc.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            raise _bad("encoding_format must be float or base64", "encoding_format")
        dimensions = _int(doc, "dimensions", 1)
        results = await runtime.invoker.invoke_each(inputs, extras(runtime, scope), ticket)
        data = []
        prompt_tokens = 0
        for i, result in enumerate(results):
            if isinstance(result, PredictorError):
                raise PredictorError(result.status_code, f"input[{i}]: {result.message}", result.error_type)
            usage = None
            if isinstance(result, dict):
                usage = result.get("usage")
                result = result.get("embedding")
            try:
                vector = np.asarray(result, dtype=np.float32)
            except (TypeError, ValueError):
                vector = None
            if vector is None or vector.ndim != 1 or not vector.size:
                raise HTTPError(500, "internal", f"predict's result for input {i} is not a vector of numbers (a list "
                                "or array, or a dict with 'embedding')")
            if dimensions is not None and dimensions != vector.size:
                raise _bad(f"dimensions {dimensions}: this model's vectors have {vector.size}", "dimensions")
            tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
            prompt_tokens += tokens if type(tokens) is int and tokens >= 0 else _words(inputs[i])
            if encoding == "base64":
                embedding: Any = base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
            else:
                embedding = vector
            data.append({"object": "embedding", "index": i, "embedding": embedding})
        await _send_json(send, {"object": "list", "data": data, "model": self.name,
                                "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}},
                         head.request_id)
        return 200, None


def routes(runtime: "ApiRuntime") -> dict[tuple[str, str], Any]:
    """(method, path under <endpoint>/v1) -> handler, for the routes this API serves."""
    api = OpenAIApi(runtime)
    table: dict[tuple[str, str], Any] = {
        ("GET", "/models"): api.models,
        ("GET", f"/models/{api.name}"): api.model,
    }
    if "chat" in api.routes:
        table[("POST", "/chat/completions")] = api.chat
    if "completions" in api.routes:
        table[("POST", "/completions")] = api.completions
    if "embeddings" in api.routes:
        table[("POST", "/embeddings")] = api.embeddings
    return table


__all__ = ["ClientGone", "Completion", "OpenAIApi", "TextRequest", "error_object", "routes", "write_error"]
