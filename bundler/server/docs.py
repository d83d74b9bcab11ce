"""``/docs`` (Swagger UI from the swagger-ui-bundle package's local assets, no CDN) and ``/docs.json``."""

from __future__ import annotations

import html
from pathlib import Path

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

__all__ = ["docs_routes", "swagger_assets"]

# validatorUrl: null stops Swagger UI from sending the document to validator.swagger.io.
_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title} - API docs</title>
<link rel="stylesheet" href="{root}/docs/static/swagger-ui.css">
<link rel="icon" type="image/png" href="{root}/docs/static/favicon-32x32.png">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{root}/docs/static/swagger-ui-bundle.js"></script>
<script src="{root}/docs/static/swagger-ui-standalone-preset.js"></script>
<script>
window.ui = SwaggerUIBundle({{
  url: "{root}/docs.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  validatorUrl: null,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
  layout: "BaseLayout"
}});
</script>
</body>
</html>
"""


class _Assets(StaticFiles):
    """Swagger UI's files, always whole: a Range header is ignored, as RFC 9110 allows.

    Starlette answered a malformed or unknown-unit Range with a text/plain 400 (RFC 9110: ignore it) and
    an unsatisfiable one with a bodiless 416; Swagger UI never asks for part of a file.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(k, v) for k, v in scope["headers"] if k != b"range"]
        await super().__call__({**scope, "headers": headers}, receive, send)


def swagger_assets() -> Path:
    """Return the directory of the packaged Swagger UI assets."""
    import swagger_ui_bundle

    return Path(swagger_ui_bundle.swagger_ui_path)


def docs_routes(title: str, openapi_json: bytes) -> list[Route | Mount]:
    """Return the routes serving the Swagger UI page, its assets and the OpenAPI document."""
    safe_title = html.escape(title)

    async def page(request: Request) -> Response:
        root = html.escape(request.scope.get("root_path", "").rstrip("/"))
        return HTMLResponse(_PAGE.format(title=safe_title, root=root))

    async def document(request: Request) -> Response:
        return Response(openapi_json, media_type="application/json")

    return [
        Route("/docs", page, methods=["GET"]),
        Route("/docs.json", document, methods=["GET"]),
        Mount("/docs/static", app=_Assets(directory=swagger_assets()), name="swagger-ui"),
    ]
