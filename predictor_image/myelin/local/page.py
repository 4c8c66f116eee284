"""The local page at `GET /`: every API with its state, what its README says, and a button that sends its
sample payload and shows the answer and the latency. Plain HTML and a few lines of JavaScript, no CDN."""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

from ..openapi_doc import sample_file, sample_media_type
from .cost_view import cost_html

SAMPLE_PATH = "/_myelin/sample"


def readme_summary(folder: Path) -> str:
    """The first paragraph of the API's README.md (after its title), as plain text."""
    path = Path(folder) / "README.md"
    if not path.is_file():
        return ""
    paragraph: list[str] = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or stripped.startswith("```"):
            if paragraph:
                break
            continue
        if not stripped:
            if paragraph:
                break
            continue
        paragraph.append(stripped)
    text = " ".join(paragraph)
    # Markdown to plain text: inline code as it is; outside it, links to their text and emphasis (**bold**,
    # __bold__, *italic*) to its words, never touching a `*` or `_` inside a word or a code span (`**kwargs`).
    parts = re.split(r"`([^`]*)`", text)
    for i in range(0, len(parts), 2):
        prose = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", parts[i])
        prose = re.sub(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1", r"\2", prose)
        parts[i] = re.sub(r"(?<![\w*])\*(?=[^\s*])(.+?)(?<=[^\s*])\*(?![\w*])", r"\1", prose)
    return "".join(parts)


def sample_info(folder: Path) -> dict[str, Any] | None:
    sample = sample_file(folder)
    if sample is None:
        return None
    return {"file": sample.name, "content_type": sample_media_type(sample)}


_STYLE = """
body{font:15px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:62rem;padding:0 1rem;color:#1d2330}
h1{font-size:1.5rem;margin-bottom:.2rem} .sub{color:#5b6475;margin-top:0}
.api{border:1px solid #d8dce3;border-radius:8px;padding:.9rem 1.1rem;margin:1rem 0}
.api h2{font-size:1.15rem;margin:0 0 .3rem} .api p{margin:.3rem 0}
.state{display:inline-block;border-radius:4px;padding:0 .45rem;font-size:.8rem;margin-left:.5rem;vertical-align:middle}
.ready{background:#d7f5dd;color:#14632a} .loading{background:#fff1c7;color:#6b4d00}
.failed,.restarting{background:#fbd9d9;color:#8a1c1c} .stopped,.idle{background:#e7e9ee;color:#4a5160}
code{background:#f2f4f7;padding:0 .25rem;border-radius:3px}
button{font:inherit;padding:.25rem .8rem;border-radius:5px;border:1px solid #3b5bdb;background:#3b5bdb;color:#fff;cursor:pointer}
button:disabled{background:#aab4c8;border-color:#aab4c8}
pre{background:#f6f8fa;border-radius:6px;padding:.6rem;overflow:auto;max-height:14rem;font-size:.85rem}
.err{color:#8a1c1c;white-space:pre-wrap} .meta{color:#5b6475;font-size:.85rem}
"""

_SCRIPT = """
async function sendSample(name, endpoint, contentType) {
  const out = document.getElementById('out-' + name);
  const meta = document.getElementById('meta-' + name);
  out.textContent = '...';
  const sample = await fetch('%(sample)s/' + encodeURIComponent(name));
  const body = await sample.arrayBuffer();
  const started = performance.now();
  const r = await fetch(endpoint, {method: 'POST', headers: {'Content-Type': contentType}, body: body});
  const text = await r.text();
  const ms = performance.now() - started;
  let shown = text;
  try { shown = JSON.stringify(JSON.parse(text), null, 2); } catch (e) {}
  if (shown.length > 4000) shown = shown.slice(0, 4000) + '\\n… (' + text.length + ' bytes in all)';
  out.textContent = shown;
  out.dataset.status = r.status;
  meta.textContent = 'HTTP ' + r.status + ' in ' + ms.toFixed(1) + ' ms';
}
""" % {"sample": SAMPLE_PATH}


def render(apis: list[dict[str, Any]], base: str) -> str:
    cards = []
    for api in apis:
        name = html.escape(api["name"])
        state = api["state"]
        endpoint = api.get("endpoint") or ""
        lines = [f'<div class="api" id="api-{name}"><h2>{name}<span class="state {state}">{state}</span></h2>']
        if api.get("summary"):
            lines.append(f"<p>{html.escape(api['summary'])}</p>")
        if endpoint:
            lines.append(f'<p class="meta">POST <code>{html.escape(base + endpoint)}</code>'
                         + (f" · version {api['version']}" if api.get("version") else "")
                         + (f" · loaded in {api['load_seconds']:.2f} s" if api.get("load_seconds") else "")
                         + (f" · restarts: {api['restarts']}" if api.get("restarts") else "") + "</p>")
        lines.append(cost_html(api.get("cost")))
        if api.get("error"):
            lines.append(f'<p class="err">{html.escape(api["error"])}</p>')
        if api.get("last_exit") and (state == "restarting" or api.get("restarts")):
            exit_ = api["last_exit"]
            then = (f"; restarting in {api['restart_in_seconds']:.0f} s" if state == "restarting"
                    and api.get("restart_in_seconds") is not None else "")
            lines.append(f'<p class="err">its process {html.escape(str(exit_["how"]))} at '
                         f'{html.escape(str(exit_["at"]))}{then}</p>')
        if api.get("refused"):
            lines.append(f'<p class="err">version {api["refused"]["version"]} was refused (the previous version '
                         f'keeps serving): {html.escape(api["refused"]["error"])}</p>')
        sample = api.get("sample")
        if sample and endpoint:
            disabled = "" if state in ("ready", "idle") else " disabled"  # idle: the request wakes it
            lines.append(
                f'<p><button id="send-{name}" onclick="sendSample(\'{name}\', \'{html.escape(endpoint)}\', '
                f'\'{html.escape(sample["content_type"])}\')"{disabled}>Send {html.escape(sample["file"])}</button> '
                f'<span class="meta" id="meta-{name}"></span></p><pre id="out-{name}"></pre>')
        lines.append("</div>")
        cards.append("\n".join(lines))
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>myelin local</title><style>{_STYLE}</style>"
            f"<script>{_SCRIPT}</script></head><body><h1>myelin local</h1>"
            f"<p class='sub'>{len(apis)} API(s) at <code>{html.escape(base)}</code> · "
            f"<a href='/docs'>API docs</a> · <a href='/info'>/info</a> · <a href='/metrics'>/metrics</a></p>"
            + "\n".join(cards) + "</body></html>")
