"""What people open in a browser: the demo page (`GET /`) and the API docs (`/docs`, `/redoc`), all offline.

The page's files are in `service/static/`; Swagger UI and ReDoc come with the fastapi-offline package.
Every HTML page is sent with a Content-Security-Policy that allows this service as the only source, so
a browser does not even try to reach the internet from them (ReDoc, for one, would fetch its
sponsor's logo from a CDN).
"""

from __future__ import annotations

import json
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import MutableHeaders
from starlette.responses import HTMLResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from centermask_client.overlay import BOX_WIDTH, MASK_ALPHA, PALETTE
from service.deps import require_api_key_for_probes

STATIC = Path(__file__).parents[1] / "static"
# Inline scripts and styles are the docs pages' own (FastAPI writes Swagger UI's set-up inline); ReDoc
# runs its search in a worker made from a blob; the demo page plays a chosen video from a blob URL, and
# its WebSocket (/segment/stream) is this origin's too ('self' covers ws: and wss: of it).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; "
    "media-src 'self' blob:"
)


router = APIRouter(dependencies=[Depends(require_api_key_for_probes)])


@router.get(
    "/",
    response_class=HTMLResponse,
    responses={200: {"content": {"text/html": {}}, "description": "The demo page."}},
    summary="The demo page",
)
async def page(request: Request) -> HTMLResponse:
    """Upload, drop or paste an image, or pick an example, and see its masks drawn. Works offline."""
    return HTMLResponse(request.app.state.page)


def demo_page() -> str:
    """The page's HTML, with the overlay colours of `centermask_client.overlay` written in."""
    style = {"palette": PALETTE, "mask_alpha": MASK_ALPHA, "box_width": BOX_WIDTH}
    return (STATIC / "index.html").read_text().replace("__OVERLAY_STYLE__", json.dumps(style))


def install_pages(app: FastAPI) -> None:
    """Serve the page's files under /static and keep every HTML page to this service's own sources."""
    app.state.page = demo_page()
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(SameOriginPagesMiddleware)


class SameOriginPagesMiddleware:
    """Adds the Content-Security-Policy to HTML answers; everything else passes untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_policy(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                if headers.get("content-type", "").startswith("text/html"):
                    headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
            await send(message)

        await self.app(scope, receive, send_with_policy)
