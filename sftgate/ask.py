"""`sftgate ask`: one question, answered as evaluation would answer it.

The passages come from the study's index at its top_k (or from an index folder), the prompt from
`sftgate.prompt.encode_prompt` (the function training and evaluation use), the model from
`sftgate.evaluate.load_for_eval` (the adapter merged unless told otherwise, as `sftgate eval`
does) and the answer from the study's decoding engine (`sftgate.generate.greedy_generate`, or
vLLM); the output is checked with the scorer's own `parse_output`, `schema_errors` and verbatim
rules. There is no reference, so no eval_score: the checks say whether the answer is well-formed
and grounded in the passages.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from sftgate.artifacts import read_adapter_metadata
from sftgate.errors import InputError, MismatchError, Problem
from sftgate.evaluate import (
    DecodeSettings,
    check_adapter,
    check_engine,
    load_for_eval,
    output_constraint,
    vllm_source,
)
from sftgate.generate import Generation, greedy_generate, vllm_generate
from sftgate.index import Index, load_index
from sftgate.models import LoadedModel, Quantization, eos_token_ids
from sftgate.prompt import PromptTemplate, encode_prompt, load_prompt
from sftgate.questions import Passage
from sftgate.scoring import grounding, parse_output, schema_errors, verbatim_in
from sftgate.search.inputs import pin_inputs, prepare_contexts
from sftgate.search.study import load_study_config


@dataclass(frozen=True)
class Source:
    """Where ask's passages and prompt come from, and the study's model and decoding, if any."""

    index: Index
    top_k: int
    template: PromptTemplate
    model: str | None = None
    quantization: Quantization = "auto"
    decode: DecodeSettings = field(default_factory=DecodeSettings)
    origin: str = "command line"  # where `decode` comes from, for error messages


def study_source(config_path: str | Path) -> Source:
    """The study's index (built or reused, as `sftgate ceiling` does), top_k, prompt, model and
    decoding settings."""
    config = load_study_config(config_path)
    if config.retrieval is None:
        raise InputError(
            Problem(
                str(config_path),
                "",
                "retrieval",
                "the study brings its own contexts files, so it has no index to retrieve a new "
                "question's passages from",
                "pass --index INDEX (from `sftgate index build`) and --prompt",
            )
        )
    inputs = pin_inputs(config)
    prepare_contexts(config, inputs)
    return Source(
        index=load_index(config.work / "index"),
        top_k=config.retrieval.top_k,
        template=load_prompt(config.prompt),
        model=config.model,
        quantization=config.quantization,
        decode=config.decode,
        origin=str(config_path),
    )


def index_source(index_dir: str | Path, top_k: int, prompt: str | Path) -> Source:
    return Source(index=load_index(index_dir), top_k=top_k, template=load_prompt(prompt))


@dataclass(frozen=True)
class Answer:
    question: str
    model_id: str
    adapter: str | None
    adapter_id: str | None
    merged: bool
    engine: str  # the decoder that wrote the answer: static, hf or vllm
    index_version: str
    prompt_sha256: str
    passages: list[dict[str, Any]]  # source_path, text, score
    prompt_tokens: int
    output: str  # the raw output, as the scorer reads it
    completion_tokens: int
    finish_reason: str  # stop (end of turn) or length (max_new_tokens)
    parsed: dict[str, Any] | None  # the JSON object, when the output is exactly one
    parse_error: str | None
    schema_errors: list[str]
    evidence_verbatim: list[bool] = field(default_factory=list)  # per original_evidence quote
    anchors_grounded: list[bool] = field(default_factory=list)  # per anchor, in its passage

    @property
    def schema_ok(self) -> bool:
        return self.parsed is not None and not self.schema_errors

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "schema_ok": self.schema_ok}


def resolve_model(model: str | None, adapter_meta: dict[str, Any] | None, source: Source) -> str:
    """--model, else the adapter's base model, else the study's."""
    found = model or (adapter_meta or {}).get("model_id") or source.model
    if not found:
        raise InputError(
            Problem(
                "command line",
                "",
                "--model",
                "no model: give --model (or an sftgate adapter, whose base is recorded, or a study)",
                "pass --model M",
            )
        )
    return str(found)


def check_output(output: str, passages: list[Passage]) -> dict[str, Any]:
    """The scorer's parse and schema check, and which quotes and anchors are verbatim in the
    passages (an anchor in the passage whose source_path it names)."""
    obj, reason = parse_output(output)
    errors = schema_errors(obj) if obj is not None else []
    checks: dict[str, Any] = {"parsed": obj, "parse_error": reason, "schema_errors": errors}
    if obj is not None and not errors:
        checks["evidence_verbatim"] = [verbatim_in(q, passages) for q in obj["original_evidence"]]
        checks["anchors_grounded"] = [
            grounding([a], passages, False) == 1.0 for a in obj["anchors"]
        ]
    return checks


def ask(
    question: str,
    source: Source,
    *,
    model: str | None = None,
    adapter: str | None = None,
    merge: bool | None = None,
    max_new_tokens: int | None = None,
    engine: Literal["static", "hf", "vllm"] | None = None,
    allow_mismatch: bool = False,
) -> Answer:
    """Retrieve, render, greedy-decode and check one question, with the source's decoding
    settings (a study's `decode`) where `merge`, `max_new_tokens` and `engine` are not given. An
    adapter trained with another prompt, index or base model is refused unless `allow_mismatch`,
    as `sftgate eval` does."""
    hits = source.index.search([question], source.top_k)[0]
    passages = [Passage(source_path=h.source_path, text=h.text) for h in hits]
    meta = read_adapter_metadata(adapter) if adapter else None
    model_id = resolve_model(model, meta, source)
    if meta is not None:
        mismatches = check_adapter(
            meta,
            model_id=model_id,
            prompt_sha256=source.template.sha256,
            index_version=source.index.version,
        )
        if mismatches and not allow_mismatch:
            raise MismatchError(
                f"adapter {adapter} does not match: " + "; ".join(mismatches) + " (pass "
                "--allow-mismatch to ask anyway)"
            )
    given = {"merge": merge, "max_new_tokens": max_new_tokens, "engine": engine}
    decode = source.decode.model_copy(update={k: v for k, v in given.items() if v is not None})
    check_engine(decode, adapter, source.origin)
    merged = decode.merge and adapter is not None
    loaded = load_for_eval(model_id, adapter, meta, source.quantization, merged=merged)
    prompt = encode_prompt(loaded.tokenizer, source.template, question, passages)
    gen = decode_one(model_id, adapter, loaded, prompt, decode)
    return Answer(
        question=question,
        model_id=model_id,
        adapter=adapter,
        adapter_id=meta["adapter_id"] if meta else None,
        merged=merged,
        engine=decode.engine,
        index_version=source.index.version,
        prompt_sha256=source.template.sha256,
        passages=[
            {"source_path": h.source_path, "text": h.text, "score": round(float(h.score), 6)}
            for h in hits
        ],
        prompt_tokens=len(prompt),
        output=gen.text,
        completion_tokens=len(gen.token_ids),
        finish_reason=gen.finish_reason,
        **check_output(gen.text, passages),
    )


def decode_one(
    model_id: str,
    adapter: str | None,
    loaded: LoadedModel,
    prompt: list[int],
    decode: DecodeSettings,
) -> Generation:
    """One prompt greedy-decoded as `sftgate eval` decodes it with these settings: vLLM from the
    base or the merged model saved to a temporary folder (evaluation saves it under
    DIR/merged-model), the other engines in process, under decode.constrain's grammar."""
    eos = eos_token_ids(loaded.tokenizer, loaded.model)
    if decode.engine == "vllm":
        with tempfile.TemporaryDirectory(prefix="sftgate-ask-") as folder:
            model_dir = vllm_source(model_id, adapter, loaded, Path(folder))
            [gen] = vllm_generate(
                model_dir,
                loaded.tokenizer,
                [prompt],
                max_new_tokens=decode.max_new_tokens,
                eos_ids=eos,
            )
        return gen
    [[gen]] = list(
        greedy_generate(
            loaded.model,
            loaded.tokenizer,
            [prompt],
            batch_size=1,
            max_new_tokens=decode.max_new_tokens,
            eos_ids=eos,
            engine=decode.engine,
            cuda_graph=loaded.device == "cuda" and not loaded.quantized_4bit,
            constraint=output_constraint(decode, loaded, eos),
        )
    )
    return gen
