"""The transport limit: a bare ASGI app on uvicorn that parses the same V2 request
(orjson, the tensors to numpy) and returns a constant answer. No model, no framework."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

ANSWER = orjson.dumps(
    {
        "model_name": "m",
        "outputs": [{"name": "predict", "datatype": "INT64", "shape": [1], "data": [0]}],
    }
)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    request = orjson.loads(body)
    for tensor in request["inputs"]:
        np.asarray(tensor["data"], dtype=np.float64).reshape(tensor["shape"])
    await send(
        {"type": "http.response.start", "status": 200,
         "headers": [(b"content-type", b"application/json")]}
    )  # fmt: skip
    await send({"type": "http.response.body", "body": ANSWER})
