"""How handlers answer JSON: plain dicts (`model.wire.records` builds them) serialised by orjson; JSON lines
streamed as they are made (`NdjsonResponse`).

The bodies' models are `centermask_client.schemas`; the service documents its OpenAPI schema with them but
does not validate its answers through them, which would cost more than the inference on large mask payloads.
"""

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from typing import Any

import orjson
from starlette.responses import JSONResponse, StreamingResponse
from starlette.types import Receive, Scope, Send


class OrjsonResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


class NdjsonResponse(StreamingResponse):
    """JSON lines (application/x-ndjson) written as an async generator yields them, each as its own chunk.

    The client's disconnection is watched for the whole time, so that the generator is stopped at once,
    even while it waits for work it has queued (Starlette's StreamingResponse, on servers of ASGI spec 2.4
    such as uvicorn, notices only at its next write). `on_close(gone)` runs last, whatever happened;
    `gone` says whether the client left before the last line.
    """

    media_type = "application/x-ndjson"

    def __init__(
        self,
        lines: AsyncGenerator[bytes, None],
        *,
        headers: Mapping[str, str] | None = None,
        on_close: Callable[[bool], Awaitable[None]],
    ) -> None:
        super().__init__(lines, headers=headers, media_type=self.media_type)
        self._lines = lines
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def write() -> None:
            await send(
                {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
            )
            async for line in self._lines:
                await send({"type": "http.response.body", "body": line, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        async def until_disconnected() -> None:
            # The request's body has been read: what comes now is the disconnection (or, once the
            # answer is complete, the server saying so).
            while (await receive())["type"] != "http.disconnect":
                pass

        writer = asyncio.ensure_future(write())
        watcher = asyncio.ensure_future(until_disconnected())
        gone = False
        try:
            await asyncio.wait({writer, watcher}, return_when=asyncio.FIRST_COMPLETED)
            gone = not writer.done()
        finally:
            for task in (writer, watcher):
                task.cancel()
            await asyncio.gather(writer, watcher, return_exceptions=True)
            await self._lines.aclose()
            if writer.done() and not writer.cancelled() and isinstance(writer.exception(), OSError):
                gone = True  # the server failed a write: the connection is gone
            await self._on_close(gone)
        if not gone and not writer.cancelled() and writer.exception() is not None:
            raise writer.exception()  # type: ignore[misc]
