"""The ceiling: a raw ASGI app on the same uvicorn (uvloop + httptools) answering a constant.

It reads the request body like a real endpoint would, then returns `{"cluster": 0}`.
Run: uvicorn benchmarks.servers.ceiling:app --loop uvloop --http httptools --no-access-log
"""

_BODY = b'{"cluster":0}'
_HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(_BODY)).encode())]
_READY = b"ok"


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    more = True
    while more:  # drain the body
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": _BODY})
