"""The README's quick-start snippets for the OpenAI SDK and tritonclient run as written against `myelin local`
(only the port differs from `make local`'s 8888)."""

from __future__ import annotations

import contextlib
import io
import re

from conftest import ROOT


def snippets() -> list[str]:
    text = (ROOT / "README.md").read_text()
    start = text.index("The same APIs speak the protocols clients already have")
    blocks = re.findall(r"```python\n(.*?)```", text[start:start + 4000], flags=re.S)
    assert len(blocks) == 2 and "from openai import OpenAI" in blocks[0] and "tritonclient" in blocks[1]
    return blocks


def test_quick_start_snippets_run_against_myelin_local(local_examples):
    host = local_examples.base.removeprefix("http://")
    outputs = []
    for block in snippets():
        assert "127.0.0.1:8888" in block
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(block.replace("127.0.0.1:8888", host), "README.md", "exec"), {})
        outputs.append(out.getvalue().splitlines())
    chat, sizes = outputs[0]
    assert len(chat.split()) >= 10 and sizes == "2 384"
    assert outputs[1] == ["[17 34]"]
