"""Attacks on the cloud's shadow copies (shadow.py `ShadowMirror`, MYELIN_SHADOW_TARGETS): a client's odd
X-Request-Id on the splitter's path, and a shadow that answers badly. The shadow here is a socket in this process
that records each copy and answers as the test says; the API answering the splitter's path is a real
`myelin serve` on 127.0.0.1, stopped by pid."""

from __future__ import annotations

import re
import socket
import threading
import time

import httpx
import pytest

from myelin.http_io import RequestHead

KEY = "k-123"
COPIES = 'myelin_shadow_requests_total{api="candidate",splitter="split"'
PREDICTOR = """
class Predictor:
    def __init__(self, config):
        pass

    def predict(self, payload):
        return {"api": "live", "n": payload.get("n")}
"""


class ScriptedShadow:
    """Reads each copy (head and Content-Length body), records its head, answers with `self.answer`."""

    def __init__(self, answer: bytes = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok") -> None:
        self.answer = answer
        self.heads: list[bytes] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.stop = False
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/candidate"

    def _accept(self) -> None:
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(0.2)
        data = b""
        with conn:
            while not self.stop:
                try:
                    chunk = conn.recv(65536)
                except socket.timeout:
                    continue
                except OSError:
                    return
                if not chunk:
                    return
                data += chunk
                while b"\r\n\r\n" in data:
                    head, _, rest = data.partition(b"\r\n\r\n")
                    size = int(re.search(rb"(?im)^content-length: *(\d+)", head).group(1))
                    if len(rest) < size:
                        break
                    data = rest[size:]
                    self.heads.append(head)
                    conn.sendall(self.answer)

    def close(self) -> None:
        self.stop = True
        for thread in self.threads:
            thread.join()
        self.sock.close()


def _live(start_server, tmp_path, shadow: ScriptedShadow):
    folder = tmp_path / "live"
    folder.mkdir()
    (folder / "api.yaml").write_text("name: live\nnetworking:\n  auth: {api_keys_env: KEYS}\n")
    (folder / "predictor.py").write_text(PREDICTOR)
    return start_server("serve", str(folder), env={
        "KEYS": KEY, "MYELIN_ENDPOINT_ALIASES": "split=/split",
        "MYELIN_SHADOW_TARGETS": f"split={shadow.url};api=candidate"})


def _copied_headers(head: bytes) -> list[tuple[bytes, bytes]]:
    lines = head.split(b"\r\n")[1:]
    return [(k.strip().lower(), v.strip()) for k, _, v in (line.partition(b":") for line in lines)]


def test_the_copy_carries_the_answers_request_id_whatever_the_client_sent(start_server, tmp_path):
    """A client's X-Request-Id the API does not accept (obs-text, a space, empty) gets a new id in the answer; the
    copy used to carry the client's header alone, so the shadow made up an id of its own and the two logs could
    not be joined."""
    shadow = ScriptedShadow()
    try:
        live = _live(start_server, tmp_path, shadow)
        sent = [b"caf\xc3\xa9", b"a b", b"", b"fine-id", b"x" * 300]
        answered = []
        with httpx.Client(timeout=30) as client:
            for rid in sent:
                r = client.post(f"{live.base}/split", content=b'{"n": 1}',
                                headers=[(b"content-type", b"application/json"), (b"x-api-key", KEY.encode()),
                                         (b"x-request-id", rid)])
                assert r.status_code == 200, r.text
                answered.append(r.headers["x-request-id"])
        deadline = time.monotonic() + 30
        while len(shadow.heads) < len(sent):
            assert time.monotonic() < deadline, f"copies received: {len(shadow.heads)}"
            time.sleep(0.05)
        # The id the shadow's runtime takes from each copy's headers (the same rule as the API's own).
        copied = [RequestHead(_copied_headers(head)).request_id for head in shadow.heads]
        assert copied == answered
        assert answered[3] == "fine-id"
    finally:
        shadow.close()


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\ncontent-length: -5\r\n\r\n",
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n-3\r\nabc\r\n0\r\n\r\n",
], ids=["content-length", "chunk-size"])
def test_an_answer_with_a_negative_length_is_an_error_and_its_connection_not_reused(start_server, tmp_path, answer):
    """A negative length used to read as an empty body: the copy counted as answered (200) and its connection,
    with the shadow's bytes still in it, went back to the pool; a negative chunk size read the next line as one."""
    shadow = ScriptedShadow(answer)
    try:
        live = _live(start_server, tmp_path, shadow)
        with httpx.Client(timeout=30) as client:
            for n in range(3):
                r = client.post(f"{live.base}/split", json={"n": n}, headers={"x-api-key": KEY})
                assert r.json() == {"api": "live", "n": n}
                deadline = time.monotonic() + 30
                while f'{COPIES},status="error"}} {float(n + 1)}' not in client.get(f"{live.base}/metrics").text:
                    assert time.monotonic() < deadline, client.get(f"{live.base}/metrics").text
                    time.sleep(0.05)
    finally:
        shadow.close()
