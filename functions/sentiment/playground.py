"""`GET /playground`: a page to try the function in a browser (PLAYGROUND=off removes it).

The page holds no data and no key: it is public even with API keys on (listed in
`shared.auth.OPEN_PATHS`), and the predictions it asks for go through `/predict`, which needs a key
as always; the page then shows a field for one. A Content-Security-Policy lets it load nothing
from elsewhere and talk only to its own origin, so it works offline and cannot leak the texts.

The page is one self-contained HTML document (inline CSS and JS, no external assets). `{auth}` is
replaced by "on" or "off" when it is served: with API keys on, the page shows a field for a key,
which it sends as `Authorization: Bearer KEY` and keeps for the browser tab only
(sessionStorage). The page calls `POST /predict` with `"explain": true` (relative URL, so it also
works behind a path prefix) and writes every answer into the DOM with textContent, never as HTML.

Test mode: `?text=...` (repeatable) fills the textarea and `&auto=1` submits on load; when the
answer is rendered, `<body data-state>` becomes "done" (or "error"), which the headless Chromium
test and the screenshot script wait for.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from functions.sentiment.core import app_state

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


# The look the function's pages share (the playground, the labelling page): colours, type, layout.
BASE_CSS = """:root { --fg: #1d2430; --muted: #5b6678; --line: #d9dee7; --accent: #2f5fd0; }
* { box-sizing: border-box; }
[hidden] { display: none !important; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif;
  color: var(--fg); background: #f5f7fa; }
main { max-width: 920px; margin: 0 auto; padding: 24px 20px 40px; }
h1 { font-size: 22px; margin: 0 0 4px; }
"""

PAGE = (
    """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>KubeSentiment playground</title>
<style>
"""
    + BASE_CSS
    + """p.hint { color: var(--muted); margin: 0 0 16px; }
textarea { width: 100%; min-height: 120px; padding: 10px; font: inherit; border: 1px solid
  var(--line); border-radius: 6px; resize: vertical; background: #fff; }
.row { display: flex; gap: 12px; align-items: center; margin: 10px 0 18px; flex-wrap: wrap; }
button { background: var(--accent); color: #fff; border: 0; border-radius: 6px;
  padding: 8px 18px; font: inherit; cursor: pointer; }
button:disabled { opacity: .6; cursor: wait; }
label.key { display: flex; gap: 6px; align-items: center; }
input[type=password] { padding: 6px 8px; border: 1px solid var(--line); border-radius: 6px;
  font: inherit; width: 260px; }
#error { color: #a11d1d; white-space: pre-wrap; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 14px 16px;
  margin-bottom: 14px; }
.head { display: flex; gap: 14px; align-items: baseline; flex-wrap: wrap; }
.label { font-weight: 600; padding: 1px 10px; border-radius: 12px; background: #e8ebf0; }
.label.positive { background: #d6f2dd; color: #14532d; }
.label.negative { background: #f8d7d7; color: #7f1d1d; }
.score, .meta { color: var(--muted); }
.bars { margin: 10px 0; display: grid; grid-template-columns: 90px 1fr 64px; gap: 4px 10px;
  align-items: center; }
.track { background: #edf0f4; border-radius: 4px; height: 12px; overflow: hidden; }
.fill { height: 100%; background: var(--accent); border-radius: 4px; }
.fill.positive { background: #2f9e55; } .fill.negative { background: #d04545; }
.fill.neutral { background: #8a94a6; }
.num { text-align: right; font-variant-numeric: tabular-nums; color: var(--muted); }
.text { padding: 8px 10px; background: #fafbfc; border-radius: 6px; line-height: 1.9; }
.w { border-radius: 3px; padding: 1px 2px; }
.legend { color: var(--muted); font-size: 13px; margin-top: 6px; }
.sw { display: inline-block; width: 12px; height: 12px; border-radius: 2px;
  vertical-align: -1px; margin: 0 4px 0 10px; }
</style>
</head>
<body data-auth="{auth}" data-state="idle">
<main>
<h1>KubeSentiment playground</h1>
<p class="hint">One text per line. Each is classified and explained: a word is shaded by how much
removing it lowers (green) or raises (red) the probability of the predicted label.</p>
<textarea id="texts" spellcheck="false"
  placeholder="The acting was wonderful but the plot made no sense."></textarea>
<div class="row">
  <button id="go" type="button">Analyse</button>
  <label class="key" id="keybox" hidden>API key
    <input id="key" type="password" autocomplete="off"></label>
  <span id="error" role="alert"></span>
</div>
<div id="results" aria-live="polite"></div>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const el = (tag, cls, text) => {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
};
const auth = document.body.dataset.auth === "on";
if (auth) {
  $("keybox").hidden = false;
  $("key").value = sessionStorage.getItem("kubesentiment-key") || "";
}

function shade(a, max) {
  const alpha = max > 0 ? Math.min(1, Math.abs(a) / max) * 0.55 : 0;
  const rgb = a >= 0 ? "47, 158, 85" : "208, 69, 69";
  return `rgba(${rgb}, ${alpha.toFixed(3)})`;
}

// Offsets are Unicode code points (Python str indexes); JS strings count UTF-16 units.
function highlighted(text, explanation) {
  const box = el("div", "text");
  const chars = Array.from(text);
  const words = explanation.words;
  const max = Math.max(0, ...words.map((w) => Math.abs(w.attribution)));
  let at = 0;
  for (const w of words) {
    if (w.start > at) box.append(chars.slice(at, w.start).join(""));
    const span = el("span", "w", chars.slice(w.start, w.end).join(""));
    span.style.background = shade(w.attribution, max);
    span.dataset.attribution = String(w.attribution);
    span.title = `${w.attribution >= 0 ? "+" : ""}${w.attribution.toFixed(3)}`;
    box.append(span);
    at = w.end;
  }
  if (at < chars.length) box.append(chars.slice(at).join(""));
  return box;
}

function card(text, r) {
  const c = el("section", "card");
  c.dataset.label = r.label;
  const head = el("div", "head");
  head.append(el("span", `label ${r.label}`, r.label));
  if (r.score !== null) head.append(el("span", "score", `score ${r.score.toFixed(3)}`));
  head.append(el("span", "meta", `${r.model} \\u00b7 ${r.variant}`));
  c.append(head);
  const bars = el("div", "bars");
  for (const [name, p] of Object.entries(r.probabilities)) {
    const track = el("div", "track");
    const fill = el("div", `fill ${name}`);
    fill.style.width = `${(p * 100).toFixed(1)}%`;
    fill.dataset.probability = String(p);
    track.append(fill);
    bars.append(el("span", "", name), track, el("span", "num", `${(p * 100).toFixed(1)} %`));
  }
  c.append(bars, highlighted(text, r.explanation));
  const e = r.explanation;
  const legend = el("div", "legend");
  legend.append(el("span", "sw"), `towards ${e.label}`, el("span", "sw"), `against ${e.label}`);
  legend.children[0].style.background = shade(1, 1);
  legend.children[1].style.background = shade(-1, 1);
  const more = e.words_total > e.words.length
    ? ` \\u00b7 first ${e.words.length} of ${e.words_total} words explained` : "";
  legend.append(` \\u00b7 ${e.model_inputs} model inputs${more}`);
  c.append(legend);
  return c;
}

async function analyse() {
  const texts = $("texts").value.split("\\n").filter((t) => t.trim());
  $("error").textContent = "";
  if (!texts.length) { $("error").textContent = "Type a text first."; return; }
  const headers = { "Content-Type": "application/json" };
  if (auth) {
    const key = $("key").value.trim();
    sessionStorage.setItem("kubesentiment-key", key);
    if (key) headers.Authorization = `Bearer ${key}`;
  }
  $("go").disabled = true;
  document.body.dataset.state = "busy";
  try {
    const resp = await fetch(new URL("predict", location.href), {
      method: "POST", headers, body: JSON.stringify({ texts, explain: true }),
    });
    const body = await resp.json();
    if (!resp.ok) throw new Error(body.error ? body.error.message : `HTTP ${resp.status}`);
    const out = $("results");
    out.replaceChildren(...body.results.map((r, i) => card(texts[i], r)));
    document.body.dataset.state = "done";
  } catch (err) {
    $("error").textContent = String(err.message || err);
    document.body.dataset.state = "error";
  } finally {
    $("go").disabled = false;
  }
}

$("go").addEventListener("click", analyse);
$("texts").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) analyse();
});
const params = new URLSearchParams(location.search);
if (params.has("text")) $("texts").value = params.getAll("text").join("\\n");
if (params.get("auto") === "1") analyse();
</script>
</body>
</html>
"""
)
