"""`sftgate eval`: greedy generation on a question set, then the eval JSON v2 scorer.

Predictions are appended batch by batch as they are produced; a killed evaluation restarted with
the same command skips the finished batches and ends with the same files.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from sftgate import libwarnings
from sftgate.artifacts import (
    EvalResult,
    appending_predictions,
    finish_evaluation,
    quantization_label,
    read_adapter_metadata,
    read_done_predictions,
    start_evaluation,
    trained_4bit,
    write_predictions,
    write_score_outputs,
)
from sftgate.config import ADDED, StrictModel, pin_view
from sftgate.constrain import JsonConstraint, json_constraint
from sftgate.contexts import load_contexts, resolve_passages
from sftgate.errors import InputError, MismatchError, Problem
from sftgate.generate import (
    Generation,
    greedy_generate,
    length_batches,
    vllm_generate,
)
from sftgate.models import LoadedModel, Quantization, eos_token_ids
from sftgate.prompt import DEFAULT_PROMPT, PromptTemplate, encode_prompt, load_prompt
from sftgate.provenance import provenance
from sftgate.questions import load_questions
from sftgate.resident import ResidentBase, borrowed, merged_copy
from sftgate.scoring import score_predictions
from sftgate.stopwatch import Stopwatch


class DecodeSettings(StrictModel):
    max_new_tokens: int = Field(
        512, gt=0, description="generation stops here if the end of turn never comes"
    )
    batch_size: int = Field(16, gt=0, description="prompts per batch, grouped by length")
    merge: bool = Field(
        True,
        description="merge the adapter into the (dequantised) base before decoding: faster, same outputs",
    )
    merge_check_questions: int = Field(
        4,
        ge=0,
        description="questions on whose answers the merged, unmerged and base models are compared "
        "(teacher-forced: one forward pass each)",
    )
    engine: Literal["static", "hf", "vllm"] = Field(
        "static",
        description="static: sftgate's static-cache decoder (a CUDA graph per batch on a GPU, the "
        "fastest measured); hf: transformers `generate`; vllm: vLLM if installed (not tested here)",
    )
    constrain: Literal["none", "json_schema"] = Field(
        "none",
        description="json_schema: decode under the eval JSON v2 grammar (xgrammar, `pip install "
        "'sftgate[constrain]'`): every finished answer parses and passes the schema, an already "
        "valid one is unchanged; costs host time per token (sftgate.constrain). Static and hf engines",
        json_schema_extra=ADDED,
    )


class EvalConfig(StrictModel):
    # relative to the YAML file's folder when loaded from one
    path_fields = ("model", "adapter", "questions", "contexts", "prompt", "out")
    kind: Literal["eval"] = "eval"
    model: str = Field(
        "Qwen/Qwen3-4B", description="base model: hub id, local folder, .gguf file, or tiny-qwen3"
    )
    adapter: str | None = Field(
        None, description="adapter folder from `sftgate train`; none evaluates the base model"
    )
    quantization: Quantization = Field(
        "auto",
        description="how the base is loaded for unmerged decoding; an adapter's training quantisation wins",
    )
    questions: str
    contexts: str | None = None
    prompt: str = DEFAULT_PROMPT
    out: str
    allow_mismatch: bool = Field(
        False,
        description="evaluate even if the adapter was trained with another prompt, index or base model (recorded)",
    )
    decode: DecodeSettings = Field(default_factory=DecodeSettings)


def check_adapter(
    adapter_meta: dict[str, Any], *, model_id: str, prompt_sha256: str, index_version: str
) -> list[str]:
    """The pinned values the adapter was trained with that differ from this evaluation's."""
    wanted = {"model_id": model_id, "prompt_sha256": prompt_sha256, "index_version": index_version}
    return [
        f"{k}: adapter has {adapter_meta.get(k)!r}, evaluation uses {v!r}"
        for k, v in wanted.items()
        if adapter_meta.get(k) != v
    ]


def eval_quantization(
    adapter: str | None, adapter_meta: dict[str, Any] | None, quantization: Quantization
) -> Quantization:
    """The base is loaded as the adapter was trained: 4-bit if it was, else in full precision;
    without an adapter, as configured."""
    if trained_4bit(adapter_meta):
        return "4bit"
    return "none" if adapter else quantization


def model_for_eval(
    base: LoadedModel, adapter: str | None, *, merged: bool, keep_base: bool = True
) -> LoadedModel:
    """The model evaluation decodes with, from a loaded base.

    Unmerged: the adapter on top of the base itself (the caller borrows the base,
    `sftgate.resident.borrowed`). Merged: the adapter merged into a full-precision copy of the base
    (`sftgate.resident.merged_copy`: for a 4-bit-trained adapter the NF4 weights dequantised
    first, so the merged model computes what was trained); the base is not touched unless
    `keep_base` is off (a base loaded for this alone).
    """
    from peft import PeftModel

    if adapter is None:
        return base
    if merged:
        model = merged_copy(base, adapter, keep_base=keep_base)
        return replace(base, model=model, quantized_4bit=False)
    with libwarnings.quiet():
        model = PeftModel.from_pretrained(base.model, adapter)
    model.eval()
    return replace(base, model=model)


def load_for_eval(
    model_id: str,
    adapter: str | None,
    adapter_meta: dict[str, Any] | None,
    quantization: Quantization,
    *,
    merged: bool,
) -> LoadedModel:
    """`model_for_eval` on a base loaded for it alone (merged into in place: one copy in memory)."""
    base = ResidentBase().get(model_id, eval_quantization(adapter, adapter_meta, quantization))
    return model_for_eval(base, adapter, merged=merged, keep_base=False)


def evaluate(
    config: EvalConfig,
    *,
    progress: bool = True,
    on_batch: Callable[[int, int], None] | None = None,
    base: ResidentBase | None = None,
) -> EvalResult:
    """Check the adapter against this evaluation's inputs, record what is evaluated in the output
    folder, load the base (or take `base`'s, kept loaded across runs), decode the questions not
    done yet (the adapter merged into a copy unless `decode.merge` is off), check the merge, score,
    write the metadata with where the time went (files: `sftgate.artifacts`). The base comes back
    as it was (`sftgate.resident.borrowed`)."""
    clock = Stopwatch()
    template = load_prompt(config.prompt)
    questions = load_questions(config.questions)
    contexts = load_contexts(config.contexts) if config.contexts else None
    passages, index_version = resolve_passages(questions, contexts)
    adapter_meta = read_adapter_metadata(config.adapter) if config.adapter else None
    mismatches = pin_mismatches(config, adapter_meta, template.sha256, index_version)
    check_engine(config.decode, config.adapter, config.out)
    identity = eval_identity(config, adapter_meta, template, index_version, questions.version)
    out = Path(config.out)
    start_evaluation(out, identity)

    with clock.part("model_load"):
        loaded = (base or ResidentBase()).get(
            config.model, eval_quantization(config.adapter, adapter_meta, config.quantization)
        )
    mismatches += revision_mismatches(config, adapter_meta, loaded)
    eos = eos_token_ids(loaded.tokenizer, loaded.model)
    constraint = output_constraint(config.decode, loaded, eos, base)
    prompts = [
        encode_prompt(loaded.tokenizer, template, q.question, passages[q.id]) for q in questions
    ]
    ids = [q.id for q in questions]
    with borrowed(loaded.model):
        run = decode_with_adapter(
            config,
            loaded,
            prompts,
            ids,
            eos,
            constraint,
            clock,
            progress=progress,
            on_batch=on_batch,
        )
    rows = [run.decoded.done[i] for i in ids]
    write_predictions(out, rows)  # question order: identical whether or not it was resumed
    with clock.part("scoring"):
        metrics, scores = score_predictions(
            questions, passages, {r["id"]: r["output"] for r in rows}
        )
        write_score_outputs(out, metrics, scores)
    meta = {
        **identity,
        "adapter_path": config.adapter,
        "quantization": quantization_label(run.quantized_4bit),
        "merged": run.merged,
        "merge_check": run.merge_check,
        "allow_mismatch": config.allow_mismatch,
        "mismatches": mismatches,
        "constraint": constraint.describe() if constraint else None,
        "questions_path": questions.path,
        **decode_measurements(rows, run.decoded, loaded),
        "timings": clock.split(),
        "provenance": provenance(),
    }
    finish_evaluation(out, meta)
    return EvalResult(out, metrics, meta, scores)


@dataclass(frozen=True)
class AdapterRun:
    decoded: Decoded
    merged: bool
    quantized_4bit: bool  # what decoded: the 4-bit base (unmerged) or a full-precision one
    merge_check: dict[str, Any] | None


def decode_with_adapter(
    config: EvalConfig,
    base: LoadedModel,
    prompts: list[list[int]],
    ids: list[str],
    eos: list[int],
    constraint: JsonConstraint | None,
    clock: Stopwatch,
    *,
    progress: bool,
    on_batch: Callable[[int, int], None] | None,
) -> AdapterRun:
    """Decode with the adapter (merged into a copy, or on the borrowed base), then check the
    merge; the merged copy is dropped on return."""
    merged = config.decode.merge and config.adapter is not None
    with clock.part("merge"):
        model = model_for_eval(base, config.adapter, merged=merged)
    with clock.part("decode"):
        decoded = decode_all(
            config, model, prompts, ids, eos, constraint, progress=progress, on_batch=on_batch
        )
    merge_check = None
    if merged and config.decode.merge_check_questions:
        assert config.adapter is not None
        with clock.part("merge_check"):
            answers = [decoded.done[i]["output"] for i in ids]
            merge_check = merge_agreement(
                config.decode.merge_check_questions,
                base,
                config.adapter,
                model.model,
                prompts,
                answers,
            )
    return AdapterRun(decoded, merged, model.quantized_4bit, merge_check)


def pin_mismatches(
    config: EvalConfig,
    adapter_meta: dict[str, Any] | None,
    prompt_sha256: str,
    index_version: str,
) -> list[str]:
    """`check_adapter`'s differences; an error unless allow_mismatch."""
    if not adapter_meta:
        return []
    mismatches = check_adapter(
        adapter_meta,
        model_id=config.model,
        prompt_sha256=prompt_sha256,
        index_version=index_version,
    )
    if mismatches and not config.allow_mismatch:
        raise MismatchError(
            f"adapter {config.adapter} does not match this evaluation: "
            + "; ".join(mismatches)
            + " (pass --allow-mismatch to evaluate anyway; it is recorded)"
        )
    return mismatches


def output_constraint(
    decode: DecodeSettings, loaded: LoadedModel, eos: list[int], base: ResidentBase | None = None
) -> JsonConstraint | None:
    """The grammar for `decode.constrain: json_schema`, compiled for the model's tokenizer and its
    logits' width (a vocabulary padded past the tokenizer's); its end of turn is `eos`. With
    `base` (the resident base `loaded` came from), compiled once for the runs on it."""
    if decode.constrain == "none":
        return None
    width = loaded.model.get_output_embeddings().weight.shape[0]

    def make() -> JsonConstraint:
        return json_constraint(loaded.tokenizer, width, eos)

    return make() if base is None else base.grammar((width, tuple(eos)), make)


def check_engine(decode: DecodeSettings, adapter: str | None, file: str) -> None:
    """The decoding settings can run: the grammar's library and an engine that applies it, and
    vLLM only on a merged adapter (`file` names where the settings came from)."""
    from sftgate.preflight import decode_problems, require

    require(decode_problems(decode, file, "decode.constrain"))
    if decode.engine == "vllm" and adapter is not None and not decode.merge:
        raise InputError(
            Problem(
                adapter,
                "",
                "engine",
                "--engine vllm decodes a merged model folder; it cannot use an unmerged adapter",
                "drop --no-merge, or use --engine static",
            )
        )


def eval_identity(
    config: EvalConfig,
    adapter_meta: dict[str, Any] | None,
    template: PromptTemplate,
    index_version: str,
    eval_set_version: str,
) -> dict[str, Any]:
    """What is evaluated, and how: a resumed evaluation must have the same identity."""
    step = adapter_meta.get("checkpoint_step") if adapter_meta else None
    return {
        "model_id": config.model,
        "adapter_id": adapter_meta["adapter_id"] if adapter_meta else None,
        # a checkpoint shares its adapter's id: its step tells them apart
        **({"checkpoint_step": step} if step is not None else {}),
        "prompt_sha256": template.sha256,
        "prompt_version": template.version,
        "index_version": index_version,
        "eval_set_version": eval_set_version,
        "decoding": {
            "strategy": "greedy",
            "temperature": 0.0,
            # pin_view: a setting added later is left out at its default, so an evaluation
            # started before it existed keeps its identity and resumes
            **{k: v for k, v in pin_view(config.decode).items() if k != "merge_check_questions"},
        },
    }


def revision_mismatches(
    config: EvalConfig, adapter_meta: dict[str, Any] | None, loaded: LoadedModel
) -> list[str]:
    """The base's revision, when it is not the one the adapter was trained on; an error unless
    allow_mismatch."""
    if not adapter_meta or adapter_meta.get("model_revision") == loaded.model_revision:
        return []
    mismatch = f"model_revision: adapter has {adapter_meta.get('model_revision')!r}, evaluation loaded {loaded.model_revision!r}"
    if not config.allow_mismatch:
        raise MismatchError(
            f"adapter {config.adapter} was trained on another version of {config.model}: {mismatch} (pass --allow-mismatch to evaluate anyway)"
        )
    return [mismatch]


@dataclass(frozen=True)
class Decoded:
    done: dict[str, dict[str, Any]]  # question id -> prediction row
    new_tokens: int  # generated by this process (a resumed evaluation counts its part)
    wall_s: float
    batches: int


def decode_all(
    config: EvalConfig,
    loaded: LoadedModel,
    prompts: list[list[int]],
    ids: list[str],
    eos: list[int],
    constraint: JsonConstraint | None,
    *,
    progress: bool,
    on_batch: Callable[[int, int], None] | None,
) -> Decoded:
    """Greedy-decode every question whose prediction is not in the folder yet, appending each
    batch's predictions as it finishes (a restart skips them); `on_batch`: questions done, of all."""
    import torch

    out = Path(config.out)
    done = read_done_predictions(out)
    batches = len(length_batches([len(p) for p in prompts], config.decode.batch_size))
    if loaded.device == "cuda":
        torch.cuda.reset_peak_memory_stats()  # read in decode_measurements
    started = time.perf_counter()
    new_tokens = 0
    with question_progress(progress) as bar, appending_predictions(out) as append:
        task = bar.add_task("eval", total=len(ids), completed=len(done))
        for gens in generations(config, loaded, prompts, ids, done, eos, constraint):
            fresh = [g for g in gens if ids[g.index] not in done]
            append([row(ids[g.index], g) for g in fresh])
            new_tokens += sum(len(g.token_ids) for g in gens)
            for g in fresh:
                done[ids[g.index]] = row(ids[g.index], g)
            bar.update(task, advance=len(fresh))
            if on_batch is not None:
                on_batch(len(done), len(ids))
    return Decoded(done, new_tokens, time.perf_counter() - started, batches)


def generations(
    config: EvalConfig,
    loaded: LoadedModel,
    prompts: list[list[int]],
    ids: list[str],
    done: dict[str, Any],
    eos: list[int],
    constraint: JsonConstraint | None,
) -> Iterator[list[Generation]]:
    """Each batch's generations as it finishes, from the configured engine; a batch whose
    questions are all in `done` is skipped."""
    d = config.decode
    if d.engine == "vllm":
        todo = [i for i, q in enumerate(ids) if q not in done]
        return vllm_batches(config, loaded, prompts, todo, eos)
    return greedy_generate(
        loaded.model,
        loaded.tokenizer,
        prompts,
        batch_size=d.batch_size,
        max_new_tokens=d.max_new_tokens,
        eos_ids=eos,
        engine=d.engine,
        cuda_graph=loaded.device == "cuda" and not loaded.quantized_4bit,
        skip=lambda batch: all(ids[i] in done for i in batch),
        constraint=constraint,
    )


def question_progress(progress: bool) -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [
        TextColumn("[bold]eval[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("questions"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    return Progress(*columns, disable=not progress)


def decode_measurements(
    rows: list[dict[str, Any]], decoded: Decoded, loaded: LoadedModel
) -> dict[str, Any]:
    """Counts, time and peak memory (since decoding began, the merge check included)."""
    import torch

    wall = decoded.wall_s
    return {
        "n": len(rows),
        "generated_tokens": sum(r["completion_tokens"] for r in rows),
        "wall_time_s": round(wall, 3),
        "tokens_per_s": round(decoded.new_tokens / wall, 1)
        if wall > 0 and decoded.new_tokens
        else None,
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3)
        if loaded.device == "cuda"
        else None,
        "batches": decoded.batches,
    }


def vllm_batches(
    config: EvalConfig,
    loaded: LoadedModel,
    prompts: list[list[int]],
    todo: list[int],
    eos: list[int],
) -> Iterator[list[Generation]]:
    """The questions not yet done, decoded by vLLM in one call (it schedules its own batches). An
    adapter is merged and saved under DIR/merged-model first, since vLLM loads a folder."""
    source = vllm_source(config.model, config.adapter, loaded, Path(config.out) / "merged-model")
    gens = vllm_generate(
        source,
        loaded.tokenizer,
        [prompts[i] for i in todo],
        max_new_tokens=config.decode.max_new_tokens,
        eos_ids=eos,
    )
    yield [replace(g, index=todo[g.index]) for g in gens]


def vllm_source(model_id: str, adapter: str | None, loaded: LoadedModel, folder: Path) -> str:
    """What vLLM loads: the base model, or with an adapter the merged model, saved to `folder`."""
    if adapter is None:
        return model_id
    loaded.model.save_pretrained(folder)
    loaded.tokenizer.save_pretrained(folder)
    return str(folder)


def row(qid: str, g: Generation) -> dict[str, Any]:
    return {
        "id": qid,
        "output": g.text,
        "prompt_tokens": g.prompt_tokens,
        "completion_tokens": len(g.token_ids),
        "finish_reason": g.finish_reason,
    }


def merge_agreement(
    n_questions: int,
    base: LoadedModel,
    adapter: str,
    merged_model: Any,
    prompts: list[list[int]],
    answers: list[str],
) -> dict[str, Any]:
    """Check the merge on the first questions, teacher-forced: each question's prompt followed by
    the merged model's answer goes through the merged model, the unmerged one (the adapter on the
    base as trained) and the base (adapter disabled) in one forward pass each, and their greedy
    next tokens are compared at every answer position (and the one after it). The adapter is put
    on `base` itself, so the caller borrows it (`evaluate` decodes within `borrowed`).

    Agreement: merged == unmerged at every position (else the first position that differs; 0 is
    the answer's first token). Effect: a merge that silently dropped the adapter would predict
    like the base, so when the adapter's weights are non-trivial and the unmerged model differs
    from the base, the merged one must differ too. Three forward passes per question instead of
    decoding the questions three ways: a fraction of a second on a GPU (`merge_check_s` in the
    evaluation's timings). The models' own next tokens are compared, so a decoding constraint
    (`decode.constrain`) shapes the answers checked on, not the check.
    """
    n = min(n_questions, len(prompts))
    tokenizer = base.tokenizer
    sequences = [
        (prompts[i], list(tokenizer(answers[i], add_special_tokens=False)["input_ids"]))
        for i in range(n)
    ]
    unmerged = model_for_eval(base, adapter, merged=False).model
    merged, adapted = next_tokens(merged_model, sequences), next_tokens(unmerged, sequences)
    with unmerged.disable_adapter():
        plain = next_tokens(unmerged, sequences)
    adapter_nontrivial = any(
        bool(p.detach().abs().sum() > 0)
        for name, p in unmerged.named_parameters()
        if "lora_B" in name
    )
    del unmerged
    divergence = [first_divergence(x, y) for x, y in zip(merged, adapted)]
    merged_vs_base = sum(x != y for x, y in zip(merged, plain))
    adapted_vs_base = sum(x != y for x, y in zip(adapted, plain))
    return {
        "questions": n,
        "method": "teacher-forced (prompt + the merged model's answer, one forward pass a model)",
        "positions": sum(len(x) for x in merged),
        "exact_match_rate": sum(v is None for v in divergence) / n if n else None,
        "disagreeing": [i for i, v in enumerate(divergence) if v is not None],
        "first_divergence_token": divergence,
        "adapter_nontrivial": adapter_nontrivial,
        "unmerged_differs_from_base": adapted_vs_base,
        "merged_differs_from_base": merged_vs_base,
        "adapter_effect_lost": adapter_nontrivial and adapted_vs_base > 0 and merged_vs_base == 0,
    }


def next_tokens(model: Any, sequences: list[tuple[list[int], list[int]]]) -> list[list[int]]:
    """For each (prompt, answer): the model's greedy next token at each answer position and the
    one after the answer, from one forward pass over prompt + answer."""
    import torch

    device = next(model.parameters()).device
    out = []
    with torch.inference_mode():
        for prompt, answer in sequences:
            ids = torch.tensor([prompt + answer], device=device)
            logits = model(input_ids=ids, use_cache=False, logits_to_keep=len(answer) + 1).logits
            out.append(logits[0].argmax(-1).tolist())
    return out


def first_divergence(a: list[int], b: list[int]) -> int | None:
    """The first token position where two outputs differ (a length difference counts); None if equal."""
    for j, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return j
    return None if len(a) == len(b) else min(len(a), len(b))
