import asyncio


class Predictor:
    def __init__(self, config):
        pass

    async def predict(self, payload, headers):
        if payload.get("sleep"):
            await asyncio.sleep(payload["sleep"])
        return {"echo": payload, "user_agent_seen": "user-agent" in headers, "x_trace": headers.get("x-trace")}
