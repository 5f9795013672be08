"""`GET /playground`: a page to try the function in a browser (PLAYGROUND=off removes it).

The page holds no data and no key: it is public even with API keys on (listed in
`shared.auth.OPEN_PATHS`), and the predictions it asks for go through `/predict`, which needs a key
as always; the page then shows a field for one. A Content-Security-Policy lets it load nothing
from elsewhere and talk only to its own origin, so it works offline and cannot leak the texts.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from functions.sentiment.core import app_state
from functions.sentiment.playground_page import PAGE

PATH = "/playground"
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


async def playground(request: Request) -> Response:
    """GET /playground: the page, with a key field when API keys are on."""
    keys = app_state(request).settings.api_keys is not None
    return HTMLResponse(PAGE.replace("{auth}", "on" if keys else "off"), headers=HEADERS)


def routes(enabled: bool) -> list[BaseRoute]:
    """The playground route, unless PLAYGROUND=off."""
    return [Route(PATH, playground, methods=["GET"])] if enabled else []
