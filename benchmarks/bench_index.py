"""Index benchmark: build and retrieval time on ~10 MB of text, against rank-bm25 in the same run,
plus the tokeniser / heading variants on the sample project that chose sftgate's defaults.

    python benchmarks/bench_index.py                 # writes benchmarks/results/index_<date>.json
    python benchmarks/bench_index.py --copies 4      # a quick run on ~0.8 MB

Corpus: the sample knowledge base (sftgate/sample/kb, 47 documents) unchanged, plus `--copies`
enciphered copies of it under copies/NN/. Each copy maps every CJK character, Latin letter and
digit through its own seeded permutation (Markdown syntax, punctuation and layout kept), so a copy
has the structure, lengths and token-frequency profile of real handbook text but is not a
duplicate of any answer: it is realistic load and noise for the index, and the reference
source_paths of the questions still point only at the original documents.

Questions: the 1,000 of sftgate/sample/docs/question_v2.json. Both libraries get the same chunks
(sftgate's chunker), the same tokens (sftgate.index.bm25_tokens) and k1=1.5, b=0.75; bm25s uses its
default "lucene" idf and rank-bm25 BM25Okapi its own (floored Robertson) idf, so rankings differ a
little; recall and MRR show by how much. Times are wall-clock on whatever machine runs this (the
load average at the start is recorded: other work on the machine slows both sides alike).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import date, datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import bm25s
import numpy as np

from sftgate.hashing import sha256_json, sha256_text
from sftgate.index import (
    Hit,
    IndexSettings,
    bm25_tokens,
    build_index,
    chunk_document,
    load_index,
    read_corpus,
)
from sftgate.index.evaluate import judge
from sftgate.provenance import git_state
from sftgate.questions import Question, load_questions
from sftgate.textnorm import nfkc_lower

ROOT = Path(__file__).resolve().parents[1]
KB = ROOT / "sftgate" / "sample" / "kb"
DOCS = ROOT / "sftgate" / "sample" / "docs"
KS = [1, 3, 5, 10]


# ----------------------------------------------------------------------------- corpus


_CJK_RANGE = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"


def make_cipher(alphabet: Sequence[str], seed: int) -> dict[str, str]:
    shuffled = list(alphabet)
    random.Random(seed).shuffle(shuffled)
    return dict(zip(alphabet, shuffled))


def synthesize(kb: Path, out: Path, copies: int) -> int:
    """Write kb and `copies` enciphered copies of it under out; return the corpus size in bytes."""
    files = sorted(p for p in kb.rglob("*") if p.is_file())
    texts = {p.relative_to(kb).as_posix(): p.read_text("utf-8") for p in files}
    cjk = sorted(set(re.findall(f"[{_CJK_RANGE}]", "".join(texts.values()))))
    lower, digits = [chr(c) for c in range(ord("a"), ord("z") + 1)], list("0123456789")
    for rel, text in texts.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text(text, "utf-8")
    for i in range(copies):
        table = {
            **make_cipher(cjk, 1000 + i),
            **make_cipher(lower, 2000 + i),
            **make_cipher(digits, 3000 + i),
        }
        table.update({k.upper(): v.upper() for k, v in table.items() if k in lower})
        trans = str.maketrans(table)
        for rel, text in texts.items():
            path = out / "copies" / f"{i:02d}" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text.translate(trans), "utf-8")
    return sum(p.stat().st_size for p in out.rglob("*") if p.is_file())


# ----------------------------------------------------------------------------- scoring


def quality(
    questions: Sequence[Question], ranked: Sequence[Sequence[Hit]], ks: Sequence[int] = KS
) -> dict[str, Any]:
    ks = list(ks)
    recall, evidence, rr = np.zeros(len(ks)), np.zeros(len(ks)), 0.0
    n_ev = 0
    for q, hits in zip(questions, ranked):
        first, paths, ev = judge(
            list(hits), q.reference.source_paths, q.reference.original_evidence, ks
        )
        recall += np.array(paths) / len(q.reference.source_paths)
        rr += 1 / first if first else 0.0
        if ev is not None:
            evidence += np.array(ev)
            n_ev += 1
    n = len(questions)
    return {
        "recall": {str(k): round(float(v / n), 4) for k, v in zip(ks, recall)},
        "evidence_in_top_k": {str(k): round(float(v / n_ev), 4) for k, v in zip(ks, evidence)},
        "mrr": round(rr / n, 4),
    }


def top_hits(scores: np.ndarray, texts: Sequence[tuple[str, str]], k: int) -> list[Hit]:
    order = np.argsort(-scores, kind="stable")[:k]
    return [Hit(texts[i][0], texts[i][1], float(scores[i])) for i in order if scores[i] > 0]


# ----------------------------------------------------------------------------- variants


_RUN = re.compile(
    rf"([{_CJK_RANGE}\u3040-\u30ff\uac00-\ud7af]+)|[^\W_{_CJK_RANGE}\u3040-\u30ff\uac00-\ud7af]+"
)


def variant_tokens(text: str, unigrams: bool, bigrams: bool) -> list[str]:
    out: list[str] = []
    for m in _RUN.finditer(nfkc_lower(text)):
        run = m.group(1)
        if run is None:
            out.append(m.group(0))
            continue
        if unigrams or len(run) == 1:
            out.extend(run)
        if bigrams:
            out.extend(run[i : i + 2] for i in range(len(run) - 1))
    return out


def headings(text: str, keep: str) -> str:
    """Chunk text with its heading path ('path', sftgate's), only its own heading, or none."""
    lines = text.split("\n")
    heads = [line for line in lines if line.startswith("#")]
    body = [line for line in lines if not line.startswith("#")]
    if keep == "path":
        return text
    return "\n".join((heads[-1:] if keep == "section" else []) + body).strip()


def variants(questions: Sequence[Question], settings: IndexSettings) -> list[dict[str, Any]]:
    corpus = read_corpus(KB)
    chunks = [
        c
        for d in corpus.documents
        for c in chunk_document(d, settings.chunk_chars, settings.overlap_chars)
    ]
    rows = []
    for keep in ["path", "section", "none"]:
        texts = [(c.source_path, headings(c.text, keep)) for c in chunks]
        for name, uni, bi in [
            ("unigrams", True, False),
            ("bigrams", False, True),
            ("uni+bi", True, True),
        ]:

            def tok(t: str, uni: bool = uni, bi: bool = bi) -> list[str]:
                return variant_tokens(t, uni, bi)

            model = bm25s.BM25(k1=settings.k1, b=settings.b)
            model.index([tok(t) for _, t in texts], show_progress=False)
            ranked = []
            for q in questions:
                ids = [model.vocab_dict[t] for t in tok(q.question) if t in model.vocab_dict]
                scores = model.get_scores_from_ids(ids) if ids else np.zeros(len(texts))
                ranked.append(top_hits(scores, texts, max(KS)))
            rows.append({"headings": keep, "cjk_tokens": name, **quality(questions, ranked)})
            print(f"  headings={keep:8} tokens={name:8} {rows[-1]}")
    return rows


# ----------------------------------------------------------------------------- the big run


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn()
    return result, round(time.perf_counter() - start, 3)


def big_run(copies: int, questions: Sequence[Question], settings: IndexSettings) -> dict[str, Any]:
    from rank_bm25 import BM25Okapi

    work = Path(tempfile.mkdtemp(prefix="bench_index_"))
    try:
        corpus_bytes = synthesize(KB, work / "kb", copies)
        print(f"corpus: {corpus_bytes / 1e6:.1f} MB in {work / 'kb'}")
        (index, corpus), t_build = timed(lambda: build_index(work / "kb", work / "idx", settings))
        index, t_load = timed(lambda: load_index(work / "idx"))
        print(f"sftgate build {t_build}s, load {t_load}s, {len(index.chunks)} chunks")
        queries = [q.question for q in questions]
        ranked, t_query = timed(lambda: index.search(queries, max(KS)))
        answerable = [i for i, q in enumerate(questions) if q.reference.source_paths]

        def judged(hits: Sequence[Sequence[Hit]]) -> dict[str, Any]:
            return quality([questions[i] for i in answerable], [hits[i] for i in answerable])

        ours = judged(ranked)
        print(f"sftgate (bm25s) retrieve {len(queries)}: {t_query}s {ours}")

        texts = [(c.source_path, c.text) for c in index.chunks]
        tokens, t_tok = timed(lambda: [bm25_tokens(t) for _, t in texts])
        okapi, t_okapi = timed(lambda: BM25Okapi(tokens, k1=settings.k1, b=settings.b))

        def bm25s_index() -> None:
            bm25s.BM25(k1=settings.k1, b=settings.b).index(tokens, show_progress=False)

        _, t_bm25s = timed(bm25s_index)

        def okapi_search() -> list[list[Hit]]:
            return [
                top_hits(np.asarray(okapi.get_scores(bm25_tokens(q))), texts, max(KS))
                for q in queries
            ]

        ranked_okapi, t_okapi_query = timed(okapi_search)
        theirs = judged(ranked_okapi)
        print(f"tokenise {t_tok}s; from tokens: bm25s {t_bm25s}s, BM25Okapi {t_okapi}s")
        print(f"rank-bm25 retrieve {t_okapi_query}s {theirs}")
        same_top1 = sum(
            bool(a) and bool(b) and a[0].source_path == b[0].source_path and a[0].text == b[0].text
            for a, b in zip(ranked, ranked_okapi)
        ) / len(queries)
        return {
            "corpus": {
                "how": f"sample KB + {copies} enciphered copies (see the script's docstring)",
                "bytes": corpus_bytes,
                "documents": len(corpus.documents),
                "chunks": len(index.chunks),
                "settings": settings.model_dump(mode="json"),
            },
            "questions": {
                "file": "sftgate/sample/docs/question_v2.json",
                "retrieved": len(queries),
                "judged (answerable)": len(answerable),
            },
            "sftgate_bm25s": {
                "build_s": t_build,
                "build_includes": "read files, chunk, tokenise, bm25s index, write + fsync",
                "tokenise_s": t_tok,
                "bm25s_index_from_tokens_s": t_bm25s,
                "load_s": t_load,
                "retrieve_s": t_query,
                "retrieve_per_question_ms": round(1000 * t_query / len(queries), 2),
                **ours,
            },
            "rank_bm25_okapi": {
                "build_s": round(t_tok + t_okapi, 3),
                "build_includes": "tokenise (same tokens) + BM25Okapi, chunks given",
                "tokenise_s": t_tok,
                "bm25okapi_from_tokens_s": t_okapi,
                "retrieve_s": t_okapi_query,
                "retrieve_per_question_ms": round(1000 * t_okapi_query / len(queries), 2),
                **theirs,
            },
            "same_top1_share": round(same_top1, 4),
            "index_version": index.version,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--copies", type=int, default=63, help="enciphered copies (63 -> ~10 MB)")
    parser.add_argument("--out", help="result JSON (default benchmarks/results/index_<date>.json)")
    parser.add_argument("--skip-variants", action="store_true")
    args = parser.parse_args()
    settings = IndexSettings()
    result: dict[str, Any] = {
        "benchmark": "index",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "libraries": {
            name: metadata.version(name) for name in ["sftgate", "bm25s", "rank-bm25", "numpy"]
        },
    }
    result["sample"] = {
        "git": git_state(ROOT),
        "kb_sha256": sha256_json(
            sorted((d.source_path, sha256_text(d.text)) for d in read_corpus(KB).documents)
        ),
        "question_v2_eval_set_version": load_questions(DOCS / "question_v2.json").version,
    }
    if not args.skip_variants:
        sample_qs = [
            q
            for name in ["question_v1.json", "question_v2.json"]
            for q in load_questions(DOCS / name)
            if q.reference.source_paths
        ]
        print(f"variants on the sample KB, {len(sample_qs)} answerable questions (v1 + v2):")
        result["variants_on_sample"] = {
            "questions": len(sample_qs),
            "note": "headings: path = sftgate's chunks (document title and parent headings "
            "first), section = own heading only, none = no heading lines",
            "rows": variants(sample_qs, settings),
        }
    questions = list(load_questions(DOCS / "question_v2.json"))
    result["large_corpus"] = big_run(args.copies, questions, settings)
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"index_{date.today():%Y-%m-%d}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", "utf-8")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
