"""The eval JSON v2 scorer: parse -> validate -> per-field scores -> eval_score -> aggregates.

Pure functions over plain data (no models, tokenizers or databases). The rules are written down in
docs/scoring/eval_json_v2.md; this module follows them exactly.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from sftgate.errors import InputError, MismatchError, Problem
from sftgate.paths import package_resource
from sftgate.questions import Passage, QuestionSet, Reference, jsonl_records, read_text
from sftgate.textnorm import squash_ws, tokens

SCORING_VERSION = "eval_json_v2.0"
SCHEMA_PATH = package_resource("eval_json_v2.schema.json")

REFUSAL_ZH = "知識庫中沒有足夠資訊回答此問題。"
REFUSAL_EN = "The knowledge base does not contain enough information to answer this question."
REFUSALS = (REFUSAL_ZH, REFUSAL_EN)

# eval_score = 100 * sum(weight * field score); the weights sum to 1.
WEIGHTS = {
    "answer_f1": 0.35,
    "detailed_description_f1": 0.25,
    "original_evidence": 0.20,
    "grounding": 0.20,
}

METRIC_KEYS = (
    "eval_score_avg",
    "schema_pass_rate",
    "grounding_avg",
    "detailed_description_f1",
    "original_evidence",
    "answer_f1",
    "context_recall",
)


# ---------------------------------------------------------------- parse and validate


_THINK = ("<think>", "</think>")


class _DuplicateKey(ValueError):
    pass


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _DuplicateKey(key)
        obj[key] = value
    return obj


_DECODER = json.JSONDecoder(object_pairs_hook=_reject_duplicate_keys)


def parse_output(text: str) -> tuple[dict[str, Any] | None, str | None]:
    """One JSON object, optionally surrounded by whitespace, and nothing else.

    Returns (object, None) or (None, reason). The reasons are the table in section 1 of
    docs/scoring/eval_json_v2.md: code fences, a <think> block (even an empty one), text before or
    after the object, invalid JSON, duplicate keys, or JSON that is not an object.
    """
    s = text.strip()
    if not s:
        return None, "empty output"
    if not s.startswith("{"):
        start = s.find("{")
        before = s if start < 0 else s[:start]
        if any(tag in before for tag in _THINK):
            return None, "contains a <think> block"
        if s.startswith("```"):
            return None, "wrapped in a code fence"
        try:
            value = json.loads(s)
        except json.JSONDecodeError:
            return None, "text before the JSON object" if start >= 0 else "no JSON object"
        return None, f"not a JSON object (a JSON {type(value).__name__})"
    try:
        obj, end = _DECODER.raw_decode(s)
    except _DuplicateKey as e:
        return None, f"duplicate key {e.args[0]!r}"
    except json.JSONDecodeError as e:
        return None, f"invalid JSON: {e.msg} at character {e.pos}"
    after = s[end:]
    if any(tag in after for tag in _THINK):
        return None, "contains a <think> block"
    if after.strip():
        return None, "text after the JSON object"
    return obj, None


@lru_cache(maxsize=1)
def _validator() -> Any:
    from jsonschema import Draft202012Validator

    return Draft202012Validator(json.loads(SCHEMA_PATH.read_text(encoding="utf-8")))


def schema_errors(obj: Any) -> list[str]:
    """Violations of the shipped JSON Schema, as 'path: message' lines (empty when valid)."""
    errors = sorted(_validator().iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in errors]


# ---------------------------------------------------------------- per-field scores


def token_f1(prediction: str, reference: str) -> float:
    """Bag-of-tokens F1 (tokens as in sftgate.textnorm.tokens); 1.0 when both are empty."""
    p, r = Counter(tokens(prediction)), Counter(tokens(reference))
    if not p and not r:
        return 1.0
    common = sum((p & r).values())
    if common == 0:
        return 0.0
    precision, recall = common / sum(p.values()), common / sum(r.values())
    return 2 * precision * recall / (precision + recall)


_REFUSAL_TOKENS = tuple(tokens(r) for r in REFUSALS)


def is_refusal(answer: str) -> bool:
    """Equal to one of the two refusals token for token (case, punctuation and spacing aside)."""
    return tokens(answer) in _REFUSAL_TOKENS


def is_unanswerable(reference: Reference) -> bool:
    return not reference.original_evidence and is_refusal(reference.answer)


def verbatim_in(quote: str, passages: Sequence[Passage]) -> bool:
    q = squash_ws(quote)
    return bool(q) and any(q in squash_ws(p.text) for p in passages)


def evidence_coverage(
    predicted: Sequence[str], reference: Sequence[str], passages: Sequence[Passage]
) -> float:
    """Mean over reference quotes of the share of its tokens covered by the verbatim predicted quotes.

    Predicted quotes that do not occur verbatim in the given passages count for nothing.
    """
    if not reference:
        return 1.0 if not predicted else 0.0
    pool: Counter[str] = Counter()
    for quote in predicted:
        if verbatim_in(quote, passages):
            pool |= Counter(tokens(quote))
    shares = []
    for ref in reference:
        need = Counter(tokens(ref))
        total = sum(need.values())
        shares.append(sum((need & pool).values()) / total if total else 1.0)
    return sum(shares) / len(shares)


def grounding(
    anchors: Sequence[Mapping[str, str]], passages: Sequence[Passage], unanswerable: bool
) -> float:
    """Share of anchors whose text occurs in a given passage with exactly that source_path.

    For an unanswerable question the only right anchors list is the empty one.
    """
    if unanswerable:
        return 0.0 if anchors else 1.0
    if not anchors:
        return 0.0
    ok = 0
    for a in anchors:
        same_path = [p for p in passages if p.source_path == a["source_path"]]
        ok += verbatim_in(a["text"], same_path)
    return ok / len(anchors)


def context_recall(reference: Reference, passages: Sequence[Passage]) -> float | None:
    """Share of reference evidence quotes present in the passages; None for unanswerable questions."""
    if not reference.original_evidence:
        return None
    found = sum(verbatim_in(q, passages) for q in reference.original_evidence)
    return found / len(reference.original_evidence)


@dataclass(frozen=True)
class QuestionScore:
    id: str
    schema_ok: bool
    schema_error: str | None
    answer_f1: float
    detailed_description_f1: float
    original_evidence: float
    grounding: float
    context_recall: float | None
    eval_score: float  # 0-100

    def to_row(self) -> dict[str, Any]:
        return asdict(self)


def score_question(
    qid: str, output: str, reference: Reference, passages: Sequence[Passage]
) -> QuestionScore:
    recall = context_recall(reference, passages)
    obj, reason = parse_output(output)
    if obj is not None:
        errors = schema_errors(obj)
        reason = "; ".join(errors) if errors else None
    if obj is None or reason is not None:
        return QuestionScore(qid, False, reason, 0.0, 0.0, 0.0, 0.0, recall, 0.0)
    unanswerable = is_unanswerable(reference)
    if unanswerable and not is_refusal(obj["answer"]):
        # An answer to a question the handbook cannot answer is made up: nothing in it counts.
        return QuestionScore(qid, True, None, 0.0, 0.0, 0.0, 0.0, recall, 0.0)
    if unanswerable:
        answer = dd = 1.0
    else:
        answer = token_f1(obj["answer"], reference.answer)
        dd = token_f1(obj["detailed_description"], reference.detailed_description)
    fields = {
        "answer_f1": answer,
        "detailed_description_f1": dd,
        "original_evidence": evidence_coverage(
            obj["original_evidence"], reference.original_evidence, passages
        ),
        "grounding": grounding(obj["anchors"], passages, unanswerable),
    }
    score = 100 * sum(WEIGHTS[k] * v for k, v in fields.items())
    return QuestionScore(
        qid, True, None, context_recall=recall, eval_score=round(score, 6), **fields
    )


# ---------------------------------------------------------------- aggregates


def bootstrap_ci(values: Sequence[float], *, n_bootstrap: int, seed: int) -> list[float]:
    """Percentile 95% interval of the mean, from `n_bootstrap` seeded resamples."""
    if n_bootstrap < 1:
        raise ValueError(f"n_bootstrap must be >= 1, but got {n_bootstrap=}")
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        raise ValueError("bootstrap_ci() needs at least one value")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_bootstrap, len(x)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return [float(lo), float(hi)]


def aggregate(
    scores: Sequence[QuestionScore], *, n_bootstrap: int = 1000, seed: int = 0
) -> dict[str, Any]:
    if not scores:
        raise ValueError("aggregate() needs at least one question score")

    def mean(xs: Sequence[float]) -> float:
        return float(np.mean(xs))

    eval_scores = [s.eval_score for s in scores]
    recalls = [s.context_recall for s in scores if s.context_recall is not None]
    return {
        "eval_score_avg": mean(eval_scores),
        "eval_score_ci95": bootstrap_ci(eval_scores, n_bootstrap=n_bootstrap, seed=seed),
        "schema_pass_rate": mean([float(s.schema_ok) for s in scores]),
        "grounding_avg": mean([s.grounding for s in scores]),
        "detailed_description_f1": mean([s.detailed_description_f1 for s in scores]),
        "original_evidence": mean([s.original_evidence for s in scores]),
        "answer_f1": mean([s.answer_f1 for s in scores]),
        # None (JSON null) when every question is unanswerable: there is no evidence to retrieve.
        "context_recall": mean(recalls) if recalls else None,
        "n": len(scores),
        "scoring_version": SCORING_VERSION,
    }


class Metrics(BaseModel):
    """A run's aggregate metrics on one question set: `aggregate`'s keys, typed. The planner reads
    only the five the seed names, so a scripted history (`sftgate plan --history`) may give just
    those; a search always records all of them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # In the order `aggregate` writes them, so that to_json() gives the file's bytes back.
    eval_score_avg: float
    eval_score_ci95: tuple[float, float] | None = None
    schema_pass_rate: float
    grounding_avg: float
    detailed_description_f1: float
    original_evidence: float
    answer_f1: float | None = None
    context_recall: float | None = None
    n: int | None = None
    scoring_version: str | None = None
    eval_set_version: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The metrics.json object (the keys `aggregate` and `score_predictions` write)."""
        return self.model_dump(mode="json", exclude_unset=True)


def paired_comparison(
    a: Sequence[QuestionScore],
    b: Sequence[QuestionScore],
    *,
    n_bootstrap: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """b minus a in eval_score points, question by question, with a paired-bootstrap 95% interval.

    Raises MismatchError unless both sides score the same question ids, each exactly once.
    """
    for name, side in (("first", a), ("second", b)):
        counts = Counter(s.id for s in side)
        repeated = sorted(i for i, c in counts.items() if c > 1)
        if repeated:
            raise MismatchError(
                f"paired comparison: the {name} set scores {len(repeated)} question(s) more than once ({repeated[:3]})"
            )
    return paired_difference(
        {s.id: s.eval_score for s in a},
        {s.id: s.eval_score for s in b},
        n_bootstrap=n_bootstrap,
        seed=seed,
    )


def paired_difference(
    sa: Mapping[str, float], sb: Mapping[str, float], *, n_bootstrap: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """`paired_comparison` over question id -> eval_score maps."""
    if set(sa) != set(sb):
        only_a, only_b = sorted(set(sa) - set(sb)), sorted(set(sb) - set(sa))
        raise MismatchError(
            f"paired comparison needs the same questions: {len(only_a)} only in the first "
            f"({only_a[:3]}), {len(only_b)} only in the second ({only_b[:3]})"
        )
    if not sa:
        raise ValueError("paired_comparison() needs at least one question")
    ids = sorted(sa)
    diffs = [sb[i] - sa[i] for i in ids]
    return {
        "mean_a": float(np.mean([sa[i] for i in ids])),
        "mean_b": float(np.mean([sb[i] for i in ids])),
        "mean_diff": float(np.mean(diffs)),
        "ci95": bootstrap_ci(diffs, n_bootstrap=n_bootstrap, seed=seed),
        "n": len(ids),
        "wins": sum(d > 0 for d in diffs),
        "losses": sum(d < 0 for d in diffs),
        "ties": sum(d == 0 for d in diffs),
    }


# ---------------------------------------------------------------- files


def load_predictions(path: str | Path, questions: QuestionSet) -> dict[str, str]:
    """Predictions JSONL, one {"id", "output", ...} object per line (other keys are allowed).

    Every problem is reported in one InputError: lines that are not JSON objects, a missing or
    non-string id/output, duplicate ids, ids not in the question set, and questions left without
    a prediction.
    """
    path = Path(path)
    records, problems = jsonl_records(
        path, read_text(path), 'write one {"id": ..., "output": ...} object per line'
    )
    known = questions.by_id
    outputs: dict[str, str] = {}
    first_seen: dict[str, str] = {}
    for where, raw in records:
        qid, found = check_prediction(str(path), where, raw, known, questions.path, first_seen)
        problems.extend(found)
        if qid is None:
            continue
        first_seen[qid] = where
        if isinstance(raw.get("output"), str):
            outputs[qid] = raw["output"]
    missing = [q.id for q in questions if q.id not in first_seen]
    if missing:
        problems.append(
            Problem(
                str(path),
                ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""),
                "id",
                f"{len(missing)} of the {len(questions)} question(s) of {questions.path} have no prediction",
                "predict every question of the set",
            )
        )
    if problems:
        raise InputError(problems)
    return outputs


def check_prediction(
    file: str,
    where: str,
    raw: Any,
    known: Mapping[str, Any],
    questions_path: str,
    first_seen: Mapping[str, str],
) -> tuple[str | None, list[Problem]]:
    """One predictions line's problems, and its question id when it is the first prediction of a
    question of the set (None: the line is left out)."""
    if not isinstance(raw, dict):
        return None, [
            Problem(file, where, "", "each line must be a JSON object", 'use {"id", "output"}')
        ]
    qid = raw.get("id")
    if not isinstance(qid, str) or not qid:
        return None, [
            Problem(
                file,
                where,
                "id",
                "missing or not a non-empty string",
                "give each prediction its question's id",
            )
        ]
    item = f"{qid!r} ({where})"
    problems = []
    if not isinstance(raw.get("output"), str):
        problems.append(
            Problem(
                file,
                item,
                "output",
                "missing or not a string",
                "put the raw model text in 'output'",
            )
        )
    if qid not in known:
        return None, [
            *problems,
            Problem(
                file,
                item,
                "id",
                f"not in the question set {questions_path}",
                "check that the predictions belong to this set",
            ),
        ]
    if qid in first_seen:
        return None, [
            *problems,
            Problem(
                file,
                item,
                "id",
                f"duplicate prediction (also at {first_seen[qid]})",
                "one line per question",
            ),
        ]
    return qid, problems


def score_predictions(
    questions: QuestionSet, passages: Mapping[str, Sequence[Passage]], outputs: Mapping[str, str]
) -> tuple[dict[str, Any], list[QuestionScore]]:
    """Score every question of the set, in the set's order; metrics carry its eval_set_version."""
    for name, given in (("passages", passages), ("outputs", outputs)):
        missing = [q.id for q in questions if q.id not in given]
        if missing:
            raise ValueError(
                f"score_predictions(): no {name} for {len(missing)} question(s), e.g. {missing[:3]}"
            )
    scores = [score_question(q.id, outputs[q.id], q.reference, passages[q.id]) for q in questions]
    metrics = aggregate(scores)
    metrics["eval_set_version"] = questions.version
    return metrics, scores
