"""A text generator scripted by its prompt, for the OpenAI routes' tests.

Each word of the prompt is streamed back as one item (`{"text": " word"}`), except these directives:
`wait` (before the next item, wait until the file `<state_dir>/go` exists), `fail` (raise). When the
generator is closed or finishes, it writes `<state_dir>/closed-<n>`: "exit" when it was closed before its
end (a disconnect, a stop sequence), "done" when it ran to its end.
The payload the runtime handed over is written to `<state_dir>/payload.json`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path


class Predictor:
    def __init__(self, config):
        self.state = Path(config["state_dir"])
        self.state.mkdir(parents=True, exist_ok=True)
        self.calls = 0

    def predict(self, payload):
        self.calls += 1
        n = self.calls
        (self.state / "payload.json").write_text(json.dumps(payload))
        finished = False
        try:
            for word in payload["prompt"].split():
                if word == "wait":
                    while not (self.state / "go").exists():
                        time.sleep(0.01)
                    continue
                if word == "fail":
                    raise RuntimeError("scripted failure")
                yield {"text": " " + word}
            finished = True
        finally:
            (self.state / f"closed-{n}").write_text("done" if finished else "exit")


class Whole:
    """A plain predict: the whole text at once, with the predictor's own usage."""

    def __init__(self, config):
        pass

    def predict(self, payload):
        return {"text": payload["prompt"].upper(), "usage": {"prompt_tokens": 7, "completion_tokens": 2}}
