"""`GET /label`: the labelling page (`labelling_page`), served when LABELLING=on (off by default).

Behind the API keys, when they are on: the page that labels is served only at `GET /label/app`,
which the auth middleware guards like any route (a valid `Authorization: Bearer` or `X-API-Key`
header). A browser cannot add a header to a navigation, so `GET /label` (listed in
`shared.auth.OPEN_PATHS`) answers with a small lock page: it asks for a key, fetches
`label/app` with it and, if the key is accepted, replaces itself with the answer
(`document.write`); a wrong key gets the middleware's 401 message and nothing else. So without a
key nobody gets the labelling page, no key ever travels in a URL (query strings end up in access
logs and browser history), and the check is the middleware's, not a second copy of it. The key
is kept for the browser tab only (sessionStorage, shared with the playground), so a reload
unlocks again. With API keys off, `GET /label` serves the labelling page itself.

Neither page holds data or asks the server for any: the labelling file is read in the browser
and the labels are exported from it. Both carry the playground's Content-Security-Policy, which
lets them load nothing from elsewhere and talk only to their own origin.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from functions.sentiment.core import app_state
from functions.sentiment.labelling_page import PAGE
from functions.sentiment.playground import HEADERS

PATH = "/label"
APP_PATH = "/label/app"
# The answer to a request that carried a key: kept out of shared caches and the disk cache.
APP_HEADERS = {**HEADERS, "Cache-Control": "private, no-store"}

LOCK = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>KubeSentiment labelling</title>
<style>
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif;
  color: #1d2430; background: #f5f7fa; }
main { max-width: 560px; margin: 0 auto; padding: 24px 20px; }
h1 { font-size: 22px; margin: 0 0 8px; }
form { display: flex; gap: 10px; align-items: center; flex-wrap: wrap; }
input { padding: 6px 8px; border: 1px solid #d9dee7; border-radius: 6px; font: inherit;
  width: 280px; }
button { background: #2f5fd0; color: #fff; border: 0; border-radius: 6px; padding: 7px 16px;
  font: inherit; cursor: pointer; }
button:focus-visible, input:focus-visible { outline: 3px solid #f0a500; outline-offset: 2px; }
#error { color: #a11d1d; margin-top: 10px; }
</style>
</head>
<body data-state="locked">
<main>
<h1>KubeSentiment labelling</h1>
<p>API keys are on: enter a key to open the labelling page.</p>
<form id="unlock">
  <label for="key">API key</label>
  <input id="key" type="password" autocomplete="off" required>
  <button type="submit">Open</button>
</form>
<div id="error" role="alert"></div>
</main>
<script>
"use strict";
const STORE = "kubesentiment-key";
async function unlock(key) {
  const resp = await fetch(new URL("label/app", location.href), {
    headers: { Authorization: `Bearer ${key}` }, cache: "no-store",
  });
  if (!resp.ok) {
    let message = `HTTP ${resp.status}`;
    try { message = (await resp.json()).error.message; } catch (e) { /* not JSON */ }
    throw new Error(message);
  }
  const html = await resp.text();
  sessionStorage.setItem(STORE, key);
  document.open(); document.write(html); document.close();
}
function attempt(key) {
  unlock(key).catch((err) => {
    sessionStorage.removeItem(STORE);
    document.getElementById("error").textContent = String(err.message || err);
    document.body.dataset.state = "refused";
  });
}
document.getElementById("unlock").addEventListener("submit", (ev) => {
  ev.preventDefault();
  attempt(document.getElementById("key").value.trim());
});
const saved = sessionStorage.getItem(STORE);
if (saved) attempt(saved);
</script>
</body>
</html>
"""


async def label(request: Request) -> Response:
    """GET /label: the labelling page, or with API keys on the lock page that fetches it."""
    keys = app_state(request).settings.api_keys is not None
    return HTMLResponse(LOCK if keys else PAGE, headers=HEADERS)


async def label_app(request: Request) -> Response:
    """GET /label/app: the labelling page (the auth middleware has checked the key, if on)."""
    return HTMLResponse(PAGE, headers=APP_HEADERS)


def routes(enabled: bool) -> list[BaseRoute]:
    """The labelling routes, when LABELLING=on."""
    if not enabled:
        return []
    return [Route(PATH, label, methods=["GET"]), Route(APP_PATH, label_app, methods=["GET"])]
