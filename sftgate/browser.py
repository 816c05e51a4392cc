"""The failure browser: one static HTML page to read a run's gate questions one by one.

For a run: the questions sorted by score, each with the question, the passages the model saw (the
reference evidence highlighted where it occurs), the raw output, the schema error, each field's
score, and the run's quotes and anchors marked as found in the passages or not; a second run side
by side on the same question; filters by question kind and by failure reason.

Built from plain data (question sets, passages, per-question scores, raw outputs), so the page is
a pure function of what the registry and the run folders hold. It is one self-contained file
(data as JSON, a short script, no server and no network): it opens from disk, and the study's
folder can be archived or mailed with it.

Question kinds and failure reasons are defined here:
- kinds: `one document` / `two documents` (the reference's source_paths name one or more
  documents, `#section` aside), `unanswerable`, `Chinese` / `English` (a CJK character in the
  question or not). A question has every kind that applies.
- reasons, for a question scoring under the gate score: `format: ...` when the output is not
  valid eval JSON v2 (the parse failure, without positions, or the first schema violation's
  field); otherwise `retrieval: evidence not in the passages` when context_recall < 1, and
  `most points lost: FIELD`, the field whose weighted shortfall cost the most points.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sftgate.fsutil import atomic_write_text
from sftgate.questions import Passage, Question
from sftgate.scoring import WEIGHTS, QuestionScore, is_unanswerable, parse_output, verbatim_in

FIELDS = tuple(WEIGHTS)  # answer_f1, detailed_description_f1, original_evidence, grounding
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


@dataclass(frozen=True)
class RunView:
    """One evaluated run: its id, a label (its params), its per-question scores and raw outputs."""

    id: str
    label: str
    scores: Sequence[QuestionScore]
    outputs: Mapping[str, str]


def question_kinds(q: Question) -> list[str]:
    documents = {p.split("#", 1)[0] for p in q.reference.source_paths}
    kinds = []
    if is_unanswerable(q.reference):
        kinds.append("unanswerable")
    elif len(documents) > 1:
        kinds.append("two documents")
    else:
        kinds.append("one document")
    kinds.append("Chinese" if _CJK.search(q.question) else "English")
    return kinds


def format_reason(schema_error: str) -> str:
    """A schema error as a reason shared by outputs failing the same way (no positions, no
    values from the output)."""
    first = schema_error.split("; ", 1)[0]
    if first.startswith("invalid JSON: "):
        return "format: " + re.sub(r" at character \d+$", "", first)
    if first.startswith("duplicate key"):
        return "format: duplicate key"
    path, sep, message = first.partition(": ")
    if not sep:  # a parse failure: "wrapped in a code fence", "text after the JSON object", ...
        return f"format: {first}"
    missing = re.match(r"'(\w+)' is a required property", message)
    if path == "(root)" and missing:
        return f"format: schema: missing {missing.group(1)}"
    return f"format: schema: {path.split('/', 1)[0]}"


def failure_reasons(score: QuestionScore, gate_score: float) -> list[str]:
    if score.eval_score >= gate_score:
        return []
    if not score.schema_ok:
        return [format_reason(score.schema_error or "")]
    reasons = []
    if score.context_recall is not None and score.context_recall < 1:
        reasons.append("retrieval: evidence not in the passages")
    lost = {f: WEIGHTS[f] * (1 - getattr(score, f)) for f in FIELDS}
    reasons.append(f"most points lost: {max(lost, key=lambda f: lost[f])}")
    return reasons


def highlight(text: str, quotes: Sequence[str]) -> list[list[Any]]:
    """`text` as [segment, highlighted] pairs: every occurrence of a quote (whitespace runs
    matching any whitespace, as the scorer's verbatim check) is highlighted."""
    spans = []
    for quote in quotes:
        words = quote.split()
        if words:
            pattern = r"\s+".join(map(re.escape, words))
            spans += [m.span() for m in re.finditer(pattern, text)]
    segments: list[list[Any]] = []
    at = 0
    for start, end in sorted(spans):
        if end <= at:
            continue
        start = max(start, at)
        if start > at:
            segments.append([text[at:start], False])
        segments.append([text[start:end], True])
        at = end
    if at < len(text):
        segments.append([text[at:], False])
    return segments


def _run_result(
    score: QuestionScore, output: str, passages: Sequence[Passage], gate_score: float
) -> dict[str, Any]:
    obj, _ = parse_output(output)
    quotes, anchors = [], []
    if isinstance(obj, dict):
        quotes = [
            [q, verbatim_in(q, passages)]
            for q in obj.get("original_evidence") or []
            if isinstance(q, str)
        ]
        for a in obj.get("anchors") or []:
            if isinstance(a, dict) and isinstance(a.get("text"), str):
                same = [p for p in passages if p.source_path == a.get("source_path")]
                anchors.append([str(a.get("source_path")), a["text"], verbatim_in(a["text"], same)])
    return {
        "score": round(score.eval_score, 2),
        "schema_error": score.schema_error,
        "fields": {f: round(getattr(score, f), 3) for f in FIELDS},
        "context_recall": score.context_recall,
        "reasons": failure_reasons(score, gate_score),
        "output": output,
        "quotes": quotes,
        "anchors": anchors,
    }


def browser_data(
    questions: Sequence[Question],
    passages: Mapping[str, Sequence[Passage]],
    runs: Sequence[RunView],
    gate_score: float,
    first: str | None = None,
) -> dict[str, Any]:
    """The page's data: every question a run was scored on, and each run's result for it.
    `first`: the run shown when the page opens (default the first of `runs`)."""
    scored = {s.id for r in runs for s in r.scores}
    shown = [q for q in questions if q.id in scored]
    return {
        "gate_score": gate_score,
        "first": first or (runs[0].id if runs else None),
        "fields": list(FIELDS),
        "questions": [
            {
                "id": q.id,
                "question": q.question,
                "kinds": question_kinds(q),
                "answer": q.reference.answer,
                "evidence": q.reference.original_evidence,
                "passages": [
                    {
                        "source_path": p.source_path,
                        "segments": highlight(p.text, q.reference.original_evidence),
                    }
                    for p in passages.get(q.id, ())
                ],
            }
            for q in shown
        ],
        "runs": [
            {
                "id": r.id,
                "label": r.label,
                "results": {
                    s.id: _run_result(
                        s, r.outputs.get(s.id, ""), passages.get(s.id, ()), gate_score
                    )
                    for s in r.scores
                },
            }
            for r in runs
        ],
    }


def render_page(data: Mapping[str, Any], title: str) -> str:
    # JSON inside <script>: "</" would end the element, so it is written as "<\/".
    payload = json.dumps(data, ensure_ascii=False).replace("</", "<\\/")
    return (
        _PAGE.replace("__TITLE__", html.escape(title))
        .replace("__STYLE__", _STYLE)
        .replace("__SCRIPT__", _SCRIPT)
        .replace("__DATA__", payload)
    )


def write_browser(
    path: str | Path,
    title: str,
    questions: Sequence[Question],
    passages: Mapping[str, Sequence[Passage]],
    runs: Sequence[RunView],
    gate_score: float,
    first: str | None = None,
) -> Path:
    data = browser_data(questions, passages, runs, gate_score, first)
    atomic_write_text(path, render_page(data, title))
    return Path(path)


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<style>__STYLE__</style></head>
<body>
<h1>__TITLE__</h1>
<p class="help">Questions of the gate set, lowest score first. A question fails when it scores under
the gate score (<span id="gate"></span>). Click a question for its passages (reference evidence
highlighted), the raw output and each field's score; pick a second run to compare.</p>
<div id="controls">
<label>run <select id="run-a"></select></label>
<label>compare with <select id="run-b"></select></label>
<label>kind <select id="kind"></select></label>
<label>failure reason <select id="reason"></select></label>
<label>sort <select id="sort">
<option value="score">score, lowest first</option>
<option value="diff">second run minus first, lowest first</option>
<option value="id">question id</option></select></label>
</div>
<p id="count"></p>
<div id="layout"><table id="questions"><thead><tr><th>question</th><th>kinds</th>
<th>score</th><th class="b">second run</th><th>failure reasons</th></tr></thead>
<tbody></tbody></table>
<div id="detail"><p class="help">Click a question.</p></div></div>
<script type="application/json" id="data">__DATA__</script>
<script>__SCRIPT__</script>
</body></html>
"""

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1em 2em;font-size:14px}
h1{font-size:20px}.help{color:#555}
#controls label{margin-right:1.2em}
#layout{display:grid;grid-template-columns:minmax(420px,5fr) 7fr;gap:1.5em;align-items:start}
table{border-collapse:collapse;width:100%}
td,th{border-bottom:1px solid #ddd;padding:3px 6px;text-align:left;vertical-align:top}
#questions tbody tr{cursor:pointer}#questions tbody tr:hover{background:#f3f6fb}
#questions tbody tr.selected{background:#e2ebfa}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.fail{color:#b3261e}.pass{color:#1b6e33}
.kind{display:inline-block;white-space:nowrap;background:#eef;border-radius:3px;padding:0 4px;margin:1px;font-size:12px}
#detail{position:sticky;top:0.5em;max-height:95vh;overflow:auto}
.passage{border-left:3px solid #ccd;padding:2px 8px;margin:6px 0}
.passage .path{font-family:monospace;color:#555;font-size:12px}
mark{background:#ffe27a}
.runs{display:grid;grid-template-columns:1fr 1fr;gap:1em}
pre{white-space:pre-wrap;word-break:break-word;background:#f6f6f6;padding:6px;font-size:12px}
.error{color:#b3261e;font-family:monospace}
.found{color:#1b6e33}.missing{color:#b3261e}
"""

_SCRIPT = r"""
"use strict";
const DATA = JSON.parse(document.getElementById("data").textContent);
const byId = Object.fromEntries(DATA.runs.map(r => [r.id, r]));
const $ = id => document.getElementById(id);
let selected = null;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children) node.append(c instanceof Node ? c : String(c));
  return node;
}
function option(value, text) { return el("option", {value}, text); }
function fill(select, options) { select.replaceChildren(...options); }

function runA() { return byId[$("run-a").value]; }
function runB() { return byId[$("run-b").value]; }

function reasonsOf(run) {
  const all = new Set();
  for (const res of Object.values(run.results)) res.reasons.forEach(r => all.add(r));
  return [...all].sort();
}
function setReasons() {
  const keep = $("reason").value;
  fill($("reason"), [option("", "all questions"), option("*failing", "failing (any reason)"),
    option("*passing", "passing")].concat(reasonsOf(runA()).map(r => option(r, r))));
  $("reason").value = [...$("reason").options].some(o => o.value === keep) ? keep : "";
}

function matches(q) {
  const kind = $("kind").value, reason = $("reason").value;
  const res = runA().results[q.id];
  if (!res) return false;
  if (kind && !q.kinds.includes(kind)) return false;
  if (reason === "*failing") return res.reasons.length > 0;
  if (reason === "*passing") return res.reasons.length === 0;
  return !reason || res.reasons.includes(reason);
}

function scoreCell(res) {
  if (!res) return el("td", {class: "num"}, "–");
  const cls = res.score >= DATA.gate_score ? "num pass" : "num fail";
  return el("td", {class: cls}, res.score.toFixed(2));
}

function render() {
  const a = runA(), b = runB();
  let rows = DATA.questions.filter(matches);
  const key = $("sort").value;
  const diff = q => (b && b.results[q.id] ? b.results[q.id].score : 0) - a.results[q.id].score;
  if (key === "score") rows.sort((x, y) => a.results[x.id].score - a.results[y.id].score || x.id.localeCompare(y.id));
  if (key === "diff") rows.sort((x, y) => diff(x) - diff(y) || x.id.localeCompare(y.id));
  if (key === "id") rows.sort((x, y) => x.id.localeCompare(y.id));
  document.querySelectorAll(".b").forEach(n => n.hidden = !b);
  const body = rows.map(q => {
    const res = a.results[q.id];
    const tr = el("tr", {"data-id": q.id},
      el("td", {}, el("b", {}, q.id), " ", q.question),
      el("td", {}, ...q.kinds.map(k => el("span", {class: "kind"}, k))),
      scoreCell(res));
    if (b) { const cell = scoreCell(b.results[q.id]); cell.classList.add("b"); tr.append(cell); }
    tr.append(el("td", {}, res.reasons.join("; ")));
    if (q.id === selected) tr.classList.add("selected");
    tr.addEventListener("click", () => { selected = q.id; render(); });
    return tr;
  });
  $("questions").tBodies[0].replaceChildren(...body);
  $("count").textContent = `${rows.length} of ${Object.keys(a.results).length} questions shown`;
  showDetail();
}

function runColumn(run, q) {
  const res = run.results[q.id];
  const col = el("div", {class: "run"}, el("h3", {}, run.id), el("p", {class: "help"}, run.label));
  if (!res) { col.append(el("p", {}, "not evaluated on this question")); return col; }
  col.append(el("p", {}, "eval_score ", el("b", {}, res.score.toFixed(2)),
    res.reasons.length ? ` (${res.reasons.join("; ")})` : " (passes)"));
  if (res.schema_error) col.append(el("p", {class: "error"}, "schema error: " + res.schema_error));
  const fields = el("table", {class: "fields"}, el("tr", {}, el("th", {}, "field"), el("th", {}, "score")));
  for (const f of DATA.fields) fields.append(el("tr", {}, el("td", {}, f), el("td", {class: "num"}, res.fields[f].toFixed(3))));
  fields.append(el("tr", {}, el("td", {}, "context_recall"),
    el("td", {class: "num"}, res.context_recall === null ? "– (unanswerable)" : res.context_recall.toFixed(3))));
  col.append(fields);
  if (res.quotes.length) col.append(el("h4", {}, "its evidence quotes"), el("ul", {},
    ...res.quotes.map(([t, ok]) => el("li", {class: ok ? "found" : "missing"}, (ok ? "✓ " : "✗ not in the passages: ") + t))));
  if (res.anchors.length) col.append(el("h4", {}, "its anchors"), el("ul", {},
    ...res.anchors.map(([p, t, ok]) => el("li", {class: ok ? "found" : "missing"}, (ok ? "✓ " : "✗ not in that passage: ") + `${p}: ${t}`))));
  col.append(el("h4", {}, "raw output"), el("pre", {class: "output"}, res.output || "(empty)"));
  return col;
}

function showDetail() {
  const q = DATA.questions.find(x => x.id === selected);
  if (!q) return;
  const passages = q.passages.map(p => el("div", {class: "passage"},
    el("div", {class: "path"}, p.source_path),
    el("div", {}, ...p.segments.map(([t, hit]) => hit ? el("mark", {}, t) : t))));
  const runs = el("div", {class: "runs"}, runColumn(runA(), q));
  if (runB()) runs.append(runColumn(runB(), q));
  $("detail").replaceChildren(
    el("h2", {}, q.id), el("p", {class: "question"}, q.question),
    el("p", {}, el("b", {}, "reference answer: "), q.answer),
    el("h3", {}, `passages the model saw (${q.passages.length})`),
    ...(passages.length ? passages : [el("p", {}, "none")]),
    runs);
}

function init() {
  $("gate").textContent = DATA.gate_score;
  if (!DATA.runs.length) { $("count").textContent = "No evaluated run."; return; }
  fill($("run-a"), DATA.runs.map(r => option(r.id, `${r.id} · ${r.label}`)));
  $("run-a").value = DATA.first;
  fill($("run-b"), [option("", "none")].concat(DATA.runs.map(r => option(r.id, `${r.id} · ${r.label}`))));
  const kinds = [...new Set(DATA.questions.flatMap(q => q.kinds))].sort();
  fill($("kind"), [option("", "all kinds")].concat(kinds.map(k => option(k, k))));
  setReasons();
  $("run-a").addEventListener("change", () => { setReasons(); render(); });
  for (const id of ["run-b", "kind", "reason", "sort"]) $(id).addEventListener("change", render);
  render();
}
init();
"""
