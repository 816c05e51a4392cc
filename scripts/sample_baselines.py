"""Write the sample project's baseline predictions and their oracle contexts file.

For every question the contexts are the paragraphs of its source documents that hold its
evidence quotes (index_version `oracle-paragraphs-v1`: not a retrieval, a ceiling); an
unanswerable question gets the first paragraph of the first document, which does not answer it.
Three prediction files go beside it:

    references.jsonl       the reference itself as the model's JSON (must score 100)
    empty.jsonl            empty answer, description and lists (the schema refuses empty strings)
    first_passage.jsonl    the first passage copied into every field

    python scripts/sample_baselines.py                       # gate set -> sftgate/sample/baselines/
    sftgate score --questions sftgate/sample/docs/eval_sets/question_v2_dev100.json \\
        --contexts sftgate/sample/baselines/contexts_oracle.jsonl \\
        --predictions sftgate/sample/baselines/references.jsonl --out /tmp/score-ref
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence
from pathlib import Path

from sftgate.contexts import (
    ContextsLine,
    ContextsMeta,
    ScoredPassage,
    load_contexts,
    resolve_passages,
    write_contexts,
)
from sftgate.fsutil import atomic_write_jsonl
from sftgate.questions import Passage, Question, load_questions

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sftgate" / "sample"
INDEX_VERSION = "oracle-paragraphs-v1"


def paragraphs(kb: Path, rel: str) -> list[str]:
    """A document's blocks: the text between blank lines (a table or a list is one block)."""
    text = (kb / rel).read_text(encoding="utf-8")
    return [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]


def oracle_passages(q: Question, kb: Path, fallback: ScoredPassage) -> list[ScoredPassage]:
    ref = q.reference
    if not ref.original_evidence:
        return [fallback]
    out: list[ScoredPassage] = []
    for quote in ref.original_evidence:
        found = [
            ScoredPassage(source_path=rel, text=para)
            for rel in ref.source_paths
            for para in paragraphs(kb, rel)
            if quote in para
        ]
        if not found:
            raise SystemExit(f"{q.id}: evidence not found in {ref.source_paths}: {quote!r}")
        if found[0] not in out:
            out.append(found[0])
    return out


def reference_output(q: Question, passages: list[ScoredPassage]) -> dict[str, object]:
    ref = q.reference
    anchors = [
        {"source_path": next(p.source_path for p in passages if quote in p.text), "text": quote}
        for quote in ref.original_evidence
    ]
    return {
        "answer": ref.answer,
        "detailed_description": ref.detailed_description,
        "original_evidence": list(ref.original_evidence),
        "anchors": anchors,
    }


def empty_output() -> dict[str, object]:
    return {"answer": "", "detailed_description": "", "original_evidence": [], "anchors": []}


def first_passage_output(passages: Sequence[Passage]) -> dict[str, object]:
    first = passages[0]
    return {
        "answer": first.text,
        "detailed_description": first.text,
        "original_evidence": [first.text],
        "anchors": [{"source_path": first.source_path, "text": first.text}],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--questions", default=str(SAMPLE / "docs" / "eval_sets" / "question_v2_dev100.json")
    )
    parser.add_argument("--kb", default=str(SAMPLE / "kb"))
    parser.add_argument("--out", default=str(SAMPLE / "baselines"))
    parser.add_argument(
        "--contexts",
        help="copy the first passage of this contexts file (e.g. BM25's) instead: writes only "
        "first_passage.jsonl",
    )
    args = parser.parse_args()
    qs = load_questions(args.questions)
    if args.contexts:
        passages, _ = resolve_passages(qs, load_contexts(args.contexts))
        Path(args.out).mkdir(parents=True, exist_ok=True)
        atomic_write_jsonl(
            Path(args.out) / "first_passage.jsonl",
            [
                {
                    "id": q.id,
                    "output": json.dumps(first_passage_output(passages[q.id]), ensure_ascii=False),
                }
                for q in qs
            ],
        )
        print(f"wrote {args.out}/first_passage.jsonl from {args.contexts} ({len(qs)})")
        return 0
    kb, out = Path(args.kb), Path(args.out)
    first_doc = sorted(p.relative_to(kb).as_posix() for p in kb.rglob("*.md"))[0]
    fallback = ScoredPassage(source_path=first_doc, text=paragraphs(kb, first_doc)[0])
    rows = [ContextsLine(id=q.id, passages=oracle_passages(q, kb, fallback)) for q in qs]
    meta = ContextsMeta(
        index_version=INDEX_VERSION,
        top_k=max(len(r.passages) for r in rows),
        eval_set_version=qs.version,
        questions_file=Path(args.questions).name,
        retriever={"retriever": "oracle: the paragraphs holding each reference's evidence"},
    )
    out.mkdir(parents=True, exist_ok=True)
    write_contexts(out / "contexts_oracle.jsonl", meta, rows)
    makers = {
        "references": lambda q, ps: reference_output(q, ps),
        "empty": lambda q, ps: empty_output(),
        "first_passage": lambda q, ps: first_passage_output(ps),
    }
    for name, make in makers.items():
        atomic_write_jsonl(
            out / f"{name}.jsonl",
            [
                {"id": q.id, "output": json.dumps(make(q, r.passages), ensure_ascii=False)}
                for q, r in zip(qs, rows)
            ],
        )
    print(f"wrote {out}/contexts_oracle.jsonl and {', '.join(makers)} predictions ({len(qs)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
