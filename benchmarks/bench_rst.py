"""reST benchmark: sftgate's chunks with heading paths on a real Sphinx tree, against whole-section
BM25 baselines in the same run.

    apt-get install python3.11-doc        # Debian 12: Python's docs, sources in html/_sources/
    python benchmarks/bench_rst.py        # writes benchmarks/results/rst_<date>.json

Corpus: every `*.rst.txt` under the package's `html/_sources/` (Sphinx ships a page's reST source
there; about 500 files, 12 MB for Python 3.11), found at /usr/share/doc/python3.*/html/_sources or
given with `--corpus`. The corpus is not committed; the package's name and version are recorded.

Questions: the Python FAQ's own questions, i.e. every section title of `faq/*.rst.txt` ending in
'?'. A question's reference is its section: `faq/PAGE.rst.txt#anchor`, the anchor from sftgate's
reST reader. A hit is a retrieved unit of that section (section recall@k) or of that page
(document recall@k).

Retrievers, all BM25 with sftgate's tokens (`bm25_tokens`), bm25s "lucene", k1 1.5, b 0.75:
- `sftgate`: `sftgate index build` (reST recognised, chunk_chars 500 / overlap 100, every chunk
  starting with its heading path), searched through sftgate's Index;
- `section_plain`: each section (the same sections) as one unit, its body text only: a whole-
  section index of plain text, where headings are lost (what `.rst.txt` got before reST was
  recognised, with sections given for free);
- `section_titled`: each section as one unit with its heading path, as an upper reference;
- `before_rst`: sftgate's chunks of the same files read as plain text (500 / 100), as sftgate
  chunked `.rst.txt` before: no sections, so only document recall can match.

The question text is the section's own title, so the indexes that keep titles see it verbatim:
the numbers measure what keeping heading paths buys, on the FAQ's own wording.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import tempfile
import time
from datetime import date, datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from sftgate.index import (
    Document,
    IndexSettings,
    bm25_tokens,
    build_index,
    chunk_document,
    read_corpus,
    sections,
)
from sftgate.index.store import BM25_METHOD, import_bm25s
from sftgate.provenance import git_state

ROOT = Path(__file__).resolve().parents[1]
KS = (1, 5, 10)


def find_corpus() -> Path:
    found = sorted(
        p
        for p in Path("/usr/share/doc").glob("python3.*/html/_sources")
        if re.fullmatch(r"python3\.\d+", p.parts[-3])  # not python3.11-venv's link to it
    )
    if not found:
        raise SystemExit(
            "no Sphinx sources found under /usr/share/doc/python3.*/html/_sources: "
            "`apt-get install python3.11-doc` (Debian 12), or pass --corpus DIR"
        )
    return found[-1]


def debian_package(corpus: Path) -> str | None:
    try:
        owner = subprocess.run(
            ["dpkg-query", "-S", str(corpus)], capture_output=True, text=True, check=True
        ).stdout.split(":")[0]
        version = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", owner], capture_output=True, text=True, check=True
        ).stdout
        return f"{owner} {version}"
    except (OSError, subprocess.CalledProcessError):
        return None


def faq_questions(corpus: Path) -> list[dict[str, str]]:
    """Each FAQ section title ending in '?', with its section's source_path."""
    out = []
    for doc in read_corpus(corpus).documents:
        if not doc.source_path.startswith("faq/") or doc.format != "rst":
            continue
        for sec in sections(doc):
            title = sec.heading_path[-1].lstrip("#").strip() if sec.heading_path else ""
            if title.endswith("?") and sec.anchor:
                out.append({"question": title, "section": f"{doc.source_path}#{sec.anchor}"})
    return out


def section_units(corpus: Path, titled: bool) -> list[tuple[str, str]]:
    """(source_path, text): one unit per section, with or without its heading path."""
    units = []
    for doc in read_corpus(corpus).documents:
        for sec in sections(doc):
            path = doc.source_path + (f"#{sec.anchor}" if sec.anchor else "")
            body = "\n\n".join(sec.paragraphs)
            units.append((path, ("\n".join(sec.heading_path) + "\n\n" + body) if titled else body))
    return units


def plain_text_chunks(corpus: Path) -> list[tuple[str, str]]:
    """The chunks sftgate made of a `.rst.txt` file before reST was recognised: plain text, no
    sections (so no anchors and no headings), 500 / 100 characters."""
    return [
        (c.source_path, c.text)
        for doc in read_corpus(corpus).documents
        for c in chunk_document(Document(doc.source_path, doc.text, "text"), 500, 100)
    ]


def bm25_ranked(units: list[tuple[str, str]], queries: list[str], k: int) -> list[list[str]]:
    bm25s = import_bm25s()
    settings = IndexSettings()
    model = bm25s.BM25(k1=settings.k1, b=settings.b, method=BM25_METHOD)
    model.index([bm25_tokens(text) for _, text in units], show_progress=False)
    vocab = model.vocab_dict
    out = []
    for q in queries:
        ids = [vocab[t] for t in bm25_tokens(q) if t in vocab]
        if not ids:
            out.append([])
            continue
        scores = model.get_scores_from_ids(ids)
        order = np.argsort(-scores, kind="stable")[:k]
        out.append([units[i][0] for i in order if scores[i] > 0])
    return out


def recall(ranked: list[list[str]], questions: list[dict[str, str]]) -> dict[str, Any]:
    def first(paths: list[str], want: str, doc: bool) -> int | None:
        for rank, p in enumerate(paths, 1):
            if (p.split("#", 1)[0] if doc else p) == want:
                return rank
        return None

    result: dict[str, Any] = {}
    for level, doc in (("section", False), ("document", True)):
        ranks = [
            first(paths, q["section"].split("#", 1)[0] if doc else q["section"], doc)
            for paths, q in zip(ranked, questions)
        ]
        result[level] = {
            **{
                f"recall@{k}": round(sum(r is not None and r <= k for r in ranks) / len(ranks), 4)
                for k in KS
            },
            "mrr": round(sum(1 / r for r in ranks if r) / len(ranks), 4),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, help="a Sphinx html/_sources folder")
    parser.add_argument(
        "--out", type=Path, help="results JSON (default benchmarks/results/rst_<date>.json)"
    )
    args = parser.parse_args()
    corpus = args.corpus or find_corpus()
    started = datetime.now(timezone.utc)
    load = os.getloadavg()
    questions = faq_questions(corpus)
    if not questions:
        raise SystemExit(f"no FAQ questions (faq/*.rst.txt titles ending in '?') under {corpus}")
    queries = [q["question"] for q in questions]
    depth = max(KS)
    runs: dict[str, Any] = {}

    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        index, read = build_index(corpus, Path(tmp) / "index", IndexSettings())
        built = time.perf_counter() - t
        hits = index.search(queries, depth)
        ranked = [[h.source_path for h in hs] for hs in hits]
        formats: dict[str, int] = {}
        for d in read.documents:
            formats[d.format] = formats.get(d.format, 0) + 1
    runs["sftgate"] = {
        "units": index.manifest["chunks"],
        "settings": IndexSettings().model_dump(mode="json"),
        "build_s": round(built, 2),
        **recall(ranked, questions),
    }
    t = time.perf_counter()
    units = plain_text_chunks(corpus)
    ranked = bm25_ranked(units, queries, depth)
    runs["before_rst"] = {
        "units": len(units),
        "build_s": round(time.perf_counter() - t, 2),
        **recall(ranked, questions),
    }
    for name, titled in (("section_plain", False), ("section_titled", True)):
        t = time.perf_counter()
        units = section_units(corpus, titled)
        ranked = bm25_ranked(units, queries, depth)
        runs[name] = {
            "units": len(units),
            "build_s": round(time.perf_counter() - t, 2),
            **recall(ranked, questions),
        }

    ours, base = runs["sftgate"]["section"], runs["section_plain"]["section"]
    results = {
        "benchmark": "rst",
        "date": started.isoformat(timespec="seconds"),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_at_start": [round(x, 2) for x in load],
        },
        "libraries": {n: metadata.version(n) for n in ("sftgate", "bm25s", "numpy")},
        "git": git_state(ROOT),
        "corpus": {
            "path": str(corpus),
            "debian_package": debian_package(corpus),
            "documents": sum(formats.values()),
            "formats": formats,
        },
        "questions": len(questions),
        "runs": runs,
        "targets": {
            "section recall@5 >= 0.95": ours["recall@5"] >= 0.95,
            "section recall@1 within 0.05 of section_plain": ours["recall@1"]
            >= base["recall@1"] - 0.05,
        },
    }
    out = args.out or ROOT / "benchmarks" / "results" / f"rst_{date.today().isoformat()}.json"
    out.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    for name, r in runs.items():
        s, d = r["section"], r["document"]
        print(
            f"{name:15} {r['units']:6} units  section recall@1 {s['recall@1']:.3f} @5 {s['recall@5']:.3f} "
            f"MRR {s['mrr']:.3f}  document recall@1 {d['recall@1']:.3f} @5 {d['recall@5']:.3f}"
        )
    print(f"{len(questions)} FAQ questions; targets {results['targets']} -> {out}")


if __name__ == "__main__":
    main()
