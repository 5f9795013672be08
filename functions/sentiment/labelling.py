"""`GET /label`: the labelling page, served when LABELLING=on (off by default).

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

The labelling page is one self-contained HTML document (inline CSS and JS, no external assets).
It reads a labelling file (JSONL: `id`, `text`, and the sampler's `guess`, `confidence`,
`margin`, `sample`) chosen with the file picker or dropped on the page, shows one text at a time
with the model's guess, and takes a label from a key or a button: 1/n negative, 2/u neutral,
3/p positive, s or → skip, z or Backspace undo, e export. The work is kept in localStorage under
a hash of the file's content, so reloading the page and loading the same file resumes it. The
export is the labelled file: CSV `id,text,label,guess,sample` (RFC 4180: CRLF line ends, a field
with a comma, quote or line break is quoted, quotes doubled; UTF-8), one row per text in the
file's order, `label` empty for a skipped or unseen text. Nothing is sent anywhere: the file,
the labels and the export stay in the browser. Texts are written with textContent, never as HTML.

`<body data-state>` is "empty", "labelling", "done" or "error", and `data-labelled` counts the
labels: the headless Chromium test and the screenshot script read them.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from functions.sentiment.core import app_state
from functions.sentiment.playground import BASE_CSS, HEADERS

PATH = "/label"
APP_PATH = "/label/app"
# The answer to a request that carried a key: kept out of shared caches and the disk cache.
APP_HEADERS = {**HEADERS, "Cache-Control": "private, no-store"}


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


# The lock page (API keys on) and the labelling page.
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

PAGE = (
    """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>KubeSentiment labelling</title>
<style>
"""
    + BASE_CSS
    + """p.hint { color: var(--muted); margin: 0 0 14px; }
#drop { border: 2px dashed var(--line); border-radius: 8px; padding: 14px 16px; background: #fff;
  display: flex; gap: 12px; align-items: center; flex-wrap: wrap; }
#drop.over { border-color: var(--accent); background: #eef3ff; }
#error { color: #a11d1d; white-space: pre-wrap; margin: 8px 0; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 18px 20px;
  margin: 16px 0; }
.progress { display: flex; gap: 12px; align-items: center; color: var(--muted); }
progress { flex: 1; height: 10px; accent-color: var(--accent); }
#text { font-size: 19px; line-height: 1.55; white-space: pre-wrap; overflow-wrap: anywhere;
  margin: 14px 0; min-height: 3em; }
#text:focus { outline: none; } /* focused only to take keys away from the file input */
.guess { color: var(--muted); }
.label { font-weight: 600; padding: 1px 10px; border-radius: 12px; background: #e8ebf0;
  color: var(--fg); }
.label.positive { background: #d6f2dd; color: #14532d; }
.label.negative { background: #f8d7d7; color: #7f1d1d; }
.buttons { display: flex; gap: 10px; flex-wrap: wrap; margin-top: 14px; }
button { border: 1px solid var(--line); border-radius: 6px; padding: 8px 14px; font: inherit;
  cursor: pointer; background: #fff; color: var(--fg); }
button.neg { background: #fbe9e9; } button.neu { background: #eef0f4; }
button.pos { background: #e3f5e8; } button.primary { background: var(--accent); color: #fff; }
button:disabled { opacity: .5; cursor: default; }
button:focus-visible, input:focus-visible, #drop:focus-within { outline: 3px solid #f0a500;
  outline-offset: 2px; }
kbd { font: 12px ui-monospace, monospace; border: 1px solid var(--line); border-bottom-width: 2px;
  border-radius: 4px; padding: 0 4px; background: #fafbfc; color: var(--fg); margin-left: 4px; }
#summary { color: var(--muted); }
</style>
</head>
<body data-state="empty" data-labelled="0">
<main>
<h1>KubeSentiment labelling</h1>
<p class="hint">Load a labelling file (<code>python -m functions.sampler</code> writes one), label
each text, then export the labels as CSV. The texts and labels never leave this browser.</p>
<div id="drop">
  <label for="file">Labelling file (JSONL)</label>
  <input id="file" type="file" accept=".jsonl,.ndjson,.json,application/x-ndjson">
  <span id="fileinfo" class="guess">or drop it here</span>
</div>
<div id="error" role="alert"></div>
<section class="card" id="work" hidden aria-labelledby="position">
  <div class="progress">
    <span id="position"></span>
    <progress id="bar" value="0" max="1" aria-label="labelled"></progress>
    <span id="counts"></span>
  </div>
  <div id="text" tabindex="-1" aria-live="polite"></div>
  <div class="guess" id="guessline">Model guess: <span id="guess" class="label"></span>
    <span id="detail"></span></div>
  <div class="buttons" role="group" aria-label="Label">
    <button class="neg" data-label="negative" aria-keyshortcuts="1 n">Negative<kbd>1</kbd>
      <kbd>n</kbd></button>
    <button class="neu" data-label="neutral" aria-keyshortcuts="2 u">Neutral<kbd>2</kbd>
      <kbd>u</kbd></button>
    <button class="pos" data-label="positive" aria-keyshortcuts="3 p">Positive<kbd>3</kbd>
      <kbd>p</kbd></button>
    <button id="skip" aria-keyshortcuts="s ArrowRight">Skip<kbd>s</kbd><kbd>&rarr;</kbd></button>
    <button id="undo" aria-keyshortcuts="z Backspace">Undo<kbd>z</kbd><kbd>&#9003;</kbd></button>
    <button id="export" class="primary" aria-keyshortcuts="e">Export CSV<kbd>e</kbd></button>
  </div>
  <p id="summary" hidden></p>
</section>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const LABELS = ["negative", "neutral", "positive"];
const KEYS = { "1": "negative", n: "negative", "2": "neutral", u: "neutral",
  "3": "positive", p: "positive" };
let rows = [], answers = [], history = [], cursor = 0, storeKey = null, fileName = "labels";

// A 53-bit string hash (cyrb53): keys the saved work by the file's content. crypto.subtle is
// missing outside secure contexts (plain http to a cluster), and this is no security boundary.
function hash(s) {
  let h1 = 0xdeadbeef, h2 = 0x41c6ce57;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    h1 = Math.imul(h1 ^ c, 2654435761); h2 = Math.imul(h2 ^ c, 1597334677);
  }
  h1 = Math.imul(h1 ^ (h1 >>> 16), 2246822507) ^ Math.imul(h2 ^ (h2 >>> 13), 3266489909);
  h2 = Math.imul(h2 ^ (h2 >>> 16), 2246822507) ^ Math.imul(h1 ^ (h1 >>> 13), 3266489909);
  return (4294967296 * (2097151 & h2) + (h1 >>> 0)).toString(16);
}

function parse(content) {
  const out = [], ids = new Set();
  content.split(/\\r?\\n/).forEach((line, n) => {
    if (!line.trim()) return;
    let o;
    try { o = JSON.parse(line); } catch (e) { throw new Error(`line ${n + 1}: not JSON`); }
    if (!o || typeof o !== "object" || Array.isArray(o)) {
      throw new Error(`line ${n + 1}: not an object`);
    }
    if (typeof o.text !== "string") throw new Error(`line ${n + 1}: no "text" string`);
    const id = o.id === undefined || o.id === null ? "" : String(o.id);
    if (!id) throw new Error(`line ${n + 1}: no "id"`);
    if (ids.has(id)) throw new Error(`line ${n + 1}: id ${JSON.stringify(id)} appears twice`);
    ids.add(id);
    out.push({ id, text: o.text, guess: typeof o.guess === "string" ? o.guess : "",
      confidence: typeof o.confidence === "number" ? o.confidence : null,
      margin: typeof o.margin === "number" ? o.margin : null,
      sample: typeof o.sample === "string" ? o.sample : "" });
  });
  if (!out.length) throw new Error("the file holds no text");
  return out;
}

function load(name, content) {
  $("error").textContent = "";
  try { rows = parse(content); } catch (e) {
    $("error").textContent = `${name}: ${e.message}`;
    document.body.dataset.state = "error";
    return;
  }
  fileName = name.replace(/\\.[^.]*$/, "") || "labels";
  storeKey = `kubesentiment-labels:${content.length}:${hash(content)}`;
  answers = rows.map(() => null); history = []; cursor = 0;
  try {
    const saved = JSON.parse(localStorage.getItem(storeKey) || "null");
    if (saved && Array.isArray(saved.answers) && saved.answers.length === rows.length) {
      ({ answers, history, cursor } = saved);
    }
  } catch (e) { /* a damaged save starts afresh */ }
  $("fileinfo").textContent = `${name}: ${rows.length} texts`;
  $("work").hidden = false;
  render();
  $("text").focus({ preventScroll: true });
}

function save() {
  try { localStorage.setItem(storeKey, JSON.stringify({ answers, history, cursor })); }
  catch (e) { $("error").textContent = "could not save the work in this browser: export soon"; }
}

function next(from) {
  for (let i = from; i < rows.length; i++) if (answers[i] === null) return i;
  for (let i = 0; i < from; i++) if (answers[i] === null) return i;
  return rows.length;
}

function render() {
  const labelled = answers.filter((a) => a).length;
  const seen = answers.filter((a) => a !== null).length;
  document.body.dataset.labelled = String(labelled);
  $("bar").max = rows.length; $("bar").value = labelled;
  const skipped = seen - labelled;
  $("counts").textContent = `${labelled} of ${rows.length} labelled \\u00b7 ${skipped} skipped`;
  $("undo").disabled = !history.length;
  const done = cursor >= rows.length;
  document.body.dataset.state = done ? "done" : "labelling";
  for (const b of document.querySelectorAll("[data-label], #skip")) b.disabled = done;
  $("guessline").hidden = done;
  $("summary").hidden = !done;
  if (done) {
    $("position").textContent = "All texts seen";
    $("text").textContent = "";
    $("text").hidden = true;
    $("summary").textContent = `${labelled} labelled, ${skipped} skipped: export the CSV.`;
    return;
  }
  const r = rows[cursor];
  $("position").textContent = `Text ${cursor + 1} of ${rows.length}`;
  $("text").hidden = false;
  $("text").textContent = r.text;
  $("guess").textContent = r.guess || "none";
  $("guess").className = `label ${LABELS.includes(r.guess) ? r.guess : ""}`;
  const parts = [];
  if (r.confidence !== null) parts.push(`${(r.confidence * 100).toFixed(0)} % sure`);
  if (r.margin !== null) parts.push(`margin ${r.margin.toFixed(2)}`);
  if (r.sample) parts.push(`picked: ${r.sample}`);
  $("detail").textContent = parts.length ? `\\u00b7 ${parts.join(" \\u00b7 ")}` : "";
}

function answer(label) {
  if (cursor >= rows.length) return;
  answers[cursor] = label; history.push(cursor);
  cursor = next(cursor + 1);
  save(); render();
}

function undo() {
  if (!history.length) return;
  cursor = history.pop(); answers[cursor] = null;
  save(); render();
}

function field(v) {
  const s = String(v);
  return /[",\\r\\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

function csv() {
  const lines = [["id", "text", "label", "guess", "sample"].join(",")];
  rows.forEach((r, i) => {
    lines.push([r.id, r.text, answers[i] || "", r.guess, r.sample].map(field).join(","));
  });
  return lines.join("\\r\\n") + "\\r\\n";
}

function exportCsv() {
  if (!rows.length) return;
  const url = URL.createObjectURL(new Blob([csv()], { type: "text/csv;charset=utf-8" }));
  const a = document.createElement("a");
  a.href = url; a.download = `${fileName}.labels.csv`;
  document.body.append(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

function readFile(file) {
  if (!file) return;
  const reader = new FileReader();
  reader.onload = () => load(file.name, String(reader.result));
  reader.onerror = () => { $("error").textContent = `${file.name}: cannot read the file`; };
  reader.readAsText(file, "utf-8");
}

$("file").addEventListener("change", (ev) => readFile(ev.target.files[0]));
const drop = $("drop");
for (const t of ["dragenter", "dragover"]) {
  document.addEventListener(t, (ev) => { ev.preventDefault(); drop.classList.add("over"); });
}
document.addEventListener("dragleave", () => drop.classList.remove("over"));
document.addEventListener("drop", (ev) => {
  ev.preventDefault(); drop.classList.remove("over");
  readFile(ev.dataTransfer.files[0]);
});
for (const b of document.querySelectorAll("[data-label]")) {
  b.addEventListener("click", () => answer(b.dataset.label));
}
$("skip").addEventListener("click", () => answer(""));
$("undo").addEventListener("click", undo);
$("export").addEventListener("click", exportCsv);
document.addEventListener("keydown", (ev) => {
  if (!rows.length || ev.ctrlKey || ev.metaKey || ev.altKey) return;
  const key = ev.key.length === 1 ? ev.key.toLowerCase() : ev.key;
  if (KEYS[key]) answer(KEYS[key]);
  else if (key === "s" || key === "ArrowRight") answer("");
  else if (key === "z" || key === "Backspace") undo();
  else if (key === "e") exportCsv();
  else return;
  ev.preventDefault();
});
</script>
</body>
</html>
"""
)
