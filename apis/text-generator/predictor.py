"""Streams generated text word by word, as a language model streams tokens.

The model is a word-level Markov chain trained when the predictor loads, on the Python reference
documentation that ships with every Python installation (`pydoc_data.topics`, the text behind
`help("assert")` and friends, about 74,000 words): nothing is downloaded. Each step picks the next
word given the previous `order` words; `predict` is a generator, so every word is sent to the
client the moment it is chosen (Server-Sent Events or NDJSON, by the request's Accept header).
"""

from __future__ import annotations

import random
import re
import time
from collections import Counter, defaultdict

from pydoc_data.topics import topics

from myelin.errors import PredictorError

WORD = re.compile(r"[A-Za-z][A-Za-z'’-]*|[.,;:!?]")
PUNCTUATION = frozenset(".,;:!?")
MAX_PROMPT = 2000


def tokenize(text: str) -> list[str]:
    return WORD.findall(text)


def join(word: str, first: bool) -> str:
    """A token as it is streamed: words carry their leading space, punctuation sticks to the word before."""
    return word if first or word in PUNCTUATION else " " + word


class Predictor:
    def __init__(self, config):
        self.order = int(config.get("order", 2))
        self.default_tokens = int(config.get("default_tokens", 40))
        self.max_tokens = int(config.get("max_tokens", 400))
        rate = float(config.get("tokens_per_second", 0))
        self.pause = 1.0 / rate if rate > 0 else 0.0
        words = tokenize("\n".join(topics[name] for name in sorted(topics)))
        self.chain: dict[tuple[str, ...], list[str]] = defaultdict(list)
        for i in range(len(words) - self.order):
            self.chain[tuple(words[i : i + self.order])].append(words[i + self.order])
        # Where a sentence may begin: after a full stop, at a capitalised word.
        self.starts = sorted({key for key in self.chain if key[0][0].isupper() and key[0] not in PUNCTUATION})
        self.words = len(words)

    def _request(self, payload) -> tuple[str, int, int | None]:
        if isinstance(payload, str):
            payload = {"prompt": payload}
        if not isinstance(payload, dict):
            raise PredictorError(400, 'send a JSON object like {"prompt": "A generator", "max_tokens": 30} or a text prompt')
        prompt = payload.get("prompt", "")
        if not isinstance(prompt, str) or len(prompt) > MAX_PROMPT:
            raise PredictorError(400, f"prompt must be a string of at most {MAX_PROMPT} characters")
        tokens = payload.get("max_tokens", self.default_tokens)
        if isinstance(tokens, bool) or not isinstance(tokens, int) or not 1 <= tokens <= self.max_tokens:
            raise PredictorError(400, f"max_tokens must be a whole number from 1 to {self.max_tokens}")
        seed = payload.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise PredictorError(400, "seed must be a whole number")
        temperature = payload.get("temperature")
        if temperature is not None and (isinstance(temperature, bool) or not isinstance(temperature, (int, float))
                                        or not 0 <= temperature <= 2):
            raise PredictorError(400, "temperature must be a number from 0 to 2")
        return prompt, tokens, seed, temperature

    @staticmethod
    def _pick(rng: random.Random, followers: list[str], temperature) -> str:
        """The next word: as often as it follows in the corpus (temperature 1, or unset); the most frequent one
        (0); frequencies sharpened (below 1) or flattened (above 1) in between."""
        if temperature is None or temperature == 1:
            return rng.choice(followers)
        counts = Counter(followers)
        if temperature == 0:
            return counts.most_common(1)[0][0]
        words = list(counts)
        return rng.choices(words, weights=[counts[w] ** (1.0 / temperature) for w in words])[0]

    def predict(self, payload):
        # Validation runs before the first item: a bad request is an ordinary JSON 400.
        prompt, tokens, seed, temperature = self._request(payload)
        rng = random.Random(seed)
        state = tuple(tokenize(prompt)[-self.order :])
        usage = {"prompt_tokens": len(tokenize(prompt)), "completion_tokens": tokens}
        if state not in self.chain:  # an unknown (or empty) prompt: begin a sentence of the model's own
            state = rng.choice(self.starts)
            for i, word in enumerate(state[:tokens]):
                yield {"token": join(word, i == 0 and not prompt)}
            tokens -= len(state)
        for _ in range(tokens):
            if self.pause:
                time.sleep(self.pause)
            followers = self.chain.get(state)
            if not followers:  # a dead end (the corpus's last words): begin a new sentence
                state = rng.choice(self.starts)
                word = state[-1]
            else:
                word = self._pick(rng, followers, temperature)
                state = (*state[1:], word)
            yield {"token": join(word, False)}
        # Every text ends by reaching max_tokens: that is its finish reason (an OpenAI client reads it, and the usage).
        yield {"done": True, "finish_reason": "length", "usage": usage}
