"""The cloud shadow's HTTP/1.1 client (myelin/shadow.py `CopyConnections`): it must find where each answer ends
(length, chunks, end of connection), reuse a connection only when the answer allows it, replace a reused
connection the shadow had closed, and turn anything else into `error` or `timeout`, never into an exception.
Each test runs an asyncio server on 127.0.0.1 that answers with exactly the bytes given."""

from __future__ import annotations

import asyncio

from myelin.shadow import CopyConnections, deliver

BODY = b'{"n": 1}'


def serve(answers: list[bytes], close_after: bool = False):
    """A server answering its requests, in order, with `answers` (cycled); it records the requests it read and
    how many connections it accepted, and closes each connection after its answer if `close_after`."""
    seen: dict = {"connections": 0, "requests": []}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen["connections"] += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")))
                body = await reader.readexactly(length)
                seen["requests"].append((head, body))
                answer = answers[(len(seen["requests"]) - 1) % len(answers)]
                if answer:
                    writer.write(answer)
                    await writer.drain()
                if close_after or not answer:
                    if not answer:
                        await asyncio.sleep(3600)  # never answers
                    writer.close()
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    return handle, seen


def run(answers: list[bytes], copies: int = 2, close_after: bool = False, timeout: float = 5.0):
    async def main():
        handle, seen = serve(answers, close_after)
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        connections = CopyConnections(f"http://127.0.0.1:{port}/shadow", keep=8)
        head = connections.request_head("POST", b"q=1", [(b"content-type", b"application/json"),
                                                         (b"x-request-id", b"r-1")], len(BODY))
        statuses = []
        for _ in range(copies):
            statuses.append(await deliver(lambda: connections.exchange(head, BODY), timeout))
            await asyncio.sleep(0.05)  # a closing server's FIN arrives before the next copy
        idle = len(connections.idle)
        connections.close()
        server.close()
        return statuses, seen, idle

    return asyncio.run(main())


OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


def test_the_request_is_what_the_shadow_must_see_and_connections_are_reused():
    statuses, seen, idle = run([OK], copies=3)
    assert statuses == ["200", "200", "200"] and seen["connections"] == 1 and idle == 1
    head, body = seen["requests"][0]
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /shadow?q=1 HTTP/1.1" and body == BODY
    assert set(lines[1:5]) == {b"host: 127.0.0.1:" + lines[1].split(b":")[-1], b"content-length: 8",
                               b"content-type: application/json", b"x-request-id: r-1"}


def test_a_chunked_answer_with_trailers_is_read_to_its_end():
    chunked = (b"HTTP/1.1 500 Internal Server Error\r\ntransfer-encoding: chunked\r\n\r\n"
               b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n")
    statuses, seen, idle = run([chunked], copies=3)
    assert statuses == ["500", "500", "500"] and seen["connections"] == 1 and idle == 1


def test_an_informational_answer_comes_before_the_real_one():
    statuses, seen, _ = run([b"HTTP/1.1 100 Continue\r\n\r\n" + OK], copies=2)
    assert statuses == ["200", "200"] and seen["connections"] == 1


def test_connection_close_or_an_answer_without_length_is_not_reused():
    statuses, seen, idle = run([b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\n{}"],
                               close_after=True)
    assert statuses == ["200", "200"] and seen["connections"] == 2 and idle == 0
    statuses, seen, idle = run([b"HTTP/1.0 404 Not Found\r\n\r\nno length: to the end"], close_after=True)
    assert statuses == ["404", "404"] and seen["connections"] == 2 and idle == 0


def test_a_reused_connection_the_shadow_closed_is_replaced():
    """The server closes each connection after its answer without saying so: the idle connection is found
    closed (or fails as the copy is written) and the copy goes on a new one, never counted as an error."""
    statuses, seen, _ = run([OK], copies=3, close_after=True)
    assert statuses == ["200", "200", "200"] and seen["connections"] == 3


def test_what_is_not_http_is_an_error_and_silence_a_timeout():
    statuses, _, idle = run([b"SSH-2.0-OpenSSH\r\n\r\n"], copies=1)
    assert statuses == ["error"] and idle == 0
    statuses, _, idle = run([b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort"], copies=1, close_after=True)
    assert statuses == ["error"] and idle == 0
    statuses, _, idle = run([b""], copies=1, timeout=0.3)
    assert statuses == ["timeout"] and idle == 0


def test_a_refused_connection_is_an_error():
    async def main():
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        connections = CopyConnections(f"http://127.0.0.1:{port}/shadow", keep=8)
        return await deliver(lambda: connections.exchange(b"POST /shadow HTTP/1.1\r\n\r\n", b""), 5)

    assert asyncio.run(main()) == "error"
