import asyncio


class Custom(BaseException):
    pass


class Predictor:
    def __init__(self, config):
        pass

    async def predict(self, payload, query_params):
        mode = query_params.get("mode", "ok")
        await asyncio.sleep(0)
        if mode == "ok":
            return {"ok": True}
        if mode == "stopiteration":
            return next(iter([]))
        if mode == "stopasynciteration":
            raise StopAsyncIteration()
        if mode == "keyboardinterrupt":
            raise KeyboardInterrupt()
        if mode == "systemexit":
            raise SystemExit(3)
        if mode == "custom":
            raise Custom("custom")
        if mode == "cancelled":
            raise asyncio.CancelledError()
        raise ValueError(mode)
