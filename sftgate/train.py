"""`sftgate train`: QLoRA (or LoRA) supervised fine-tuning on the eval JSON v2 task.

The loop is written out (PEFT for the adapter, transformers for the model and scheduler, a plain
PyTorch optimiser step), over pre-tokenised examples whose prompt tokens come from
`sftgate.prompt.encode_prompt`, the same function evaluation uses; the loss covers completion
tokens only.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from sftgate.config import StrictModel
from sftgate.contexts import load_contexts, resolve_passages
from sftgate.errors import InputError, Problem, SftgateError
from sftgate.fsutil import atomic_write_json
from sftgate.models import Quantization, load_model
from sftgate.params import TrainParams
from sftgate.prompt import DEFAULT_PROMPT, PromptTemplate, encode_prompt, load_prompt
from sftgate.provenance import provenance
from sftgate.questions import Passage, Question, load_questions
from sftgate.targets import reference_completion

METADATA_FILE = "sftgate_train.json"
DEFAULT_MODEL = "Qwen/Qwen3-4B"


class TrainConfig(StrictModel):
    kind: Literal["train"] = "train"
    model: str = Field(DEFAULT_MODEL, description="hub id, local folder, .gguf file, or tiny-qwen3")
    quantization: Quantization = Field("auto", description="auto: 4-bit NF4 on CUDA, none on CPU")
    questions: str = Field(description="training question set (question_v1.json)")
    contexts: str | None = Field(
        None,
        description="contexts JSONL from `sftgate index retrieve`, unless the items carry contexts",
    )
    prompt: str = Field(DEFAULT_PROMPT, description="the prompt template file")
    out: str = Field(description="adapter folder to write")
    gradient_checkpointing: bool | None = Field(
        None, description="None: on for 4-bit CUDA training (saves memory, costs ~40% speed)"
    )
    params: TrainParams = Field(default_factory=TrainParams)


@dataclass
class Example:
    id: str
    input_ids: list[int]
    prompt_len: int  # tokens before the completion; the loss covers the rest
    shortened: bool


@dataclass
class Tokenized:
    examples: list[Example]
    shortened: list[str] = field(default_factory=list)
    dropped: list[str] = field(
        default_factory=list
    )  # could not fit max_length even with no passages


def completion_ids(tokenizer: Any, completion: str) -> list[int]:
    """The completion's tokens followed by the end-of-turn token that stops generation."""
    ids = list(tokenizer(completion, add_special_tokens=False)["input_ids"])
    return ids + [tokenizer.eos_token_id]


def build_example(
    tokenizer: Any,
    template: PromptTemplate,
    question: Question,
    passages: Sequence[Passage],
    max_length: int,
) -> Example | None:
    """Prompt + completion within max_length, never cutting the completion.

    Passages are dropped from the end first; if the first passage alone is still too long it is
    shortened. The completion is the reference grounded in the passages that remain.
    """
    kept = list(passages)
    while True:
        target = completion_ids(tokenizer, reference_completion(question.reference, kept))
        prompt = encode_prompt(tokenizer, template, question.question, kept)
        if len(prompt) + len(target) <= max_length:
            return Example(
                question.id, prompt + target, len(prompt), shortened=kept != list(passages)
            )
        if len(kept) > 1:
            kept.pop()
            continue
        if not kept:
            return None
        # One passage left: cut its text to fit (character bisection on the token budget).
        text, lo, hi = kept[0].text, 0, len(kept[0].text)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            trial = [Passage(source_path=kept[0].source_path, text=text[:mid])] if mid else []
            t = completion_ids(tokenizer, reference_completion(question.reference, trial))
            if (
                len(encode_prompt(tokenizer, template, question.question, trial)) + len(t)
                <= max_length
            ):
                lo = mid
            else:
                hi = mid - 1
        kept = [Passage(source_path=kept[0].source_path, text=text[:lo])] if lo else []
        if not kept:
            target = completion_ids(tokenizer, reference_completion(question.reference, []))
            prompt = encode_prompt(tokenizer, template, question.question, [])
            if len(prompt) + len(target) > max_length:
                return None
            return Example(question.id, prompt + target, len(prompt), shortened=True)


def tokenize_examples(
    tokenizer: Any,
    template: PromptTemplate,
    questions: Sequence[Question],
    passages: dict[str, tuple[Passage, ...]],
    max_length: int,
) -> Tokenized:
    out = Tokenized([])
    for q in questions:
        ex = build_example(tokenizer, template, q, passages[q.id], max_length)
        if ex is None:
            out.dropped.append(q.id)
            continue
        if ex.shortened:
            out.shortened.append(q.id)
        out.examples.append(ex)
    return out


def collate(batch: Sequence[Example], pad_id: int) -> dict[str, Any]:
    import torch

    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, e in enumerate(batch):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        mask[i, :n] = 1
        labels[i, e.prompt_len : n] = ids[i, e.prompt_len : n]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@dataclass(frozen=True)
class TrainResult:
    adapter_dir: Path
    metadata: dict[str, Any]


class TrainingFailed(SftgateError):
    """Training could not finish (NaN loss, out of memory); the message says why."""


def train(config: TrainConfig, *, progress: bool = True, device: str | None = None) -> TrainResult:
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from transformers import get_scheduler

    p = config.params
    template = load_prompt(config.prompt)
    questions = load_questions(config.questions)
    contexts = load_contexts(config.contexts) if config.contexts else None
    passages, index_version = resolve_passages(questions, contexts)
    out = Path(config.out)
    if (out / METADATA_FILE).exists():
        raise InputError(
            Problem(
                str(out),
                "",
                "out",
                "an adapter already exists here",
                "choose another --out or delete it",
            )
        )

    loaded = load_model(config.model, quantization=config.quantization, device=device)
    tokenizer, model = loaded.tokenizer, loaded.model
    data = tokenize_examples(tokenizer, template, questions.questions, passages, p.max_length)
    if not data.examples:
        raise InputError(
            Problem(
                config.questions,
                "",
                "params.max_length",
                f"no example fits in max_length={p.max_length} tokens, even without passages",
                "raise max_length",
            )
        )
    checkpointing = (
        config.gradient_checkpointing
        if config.gradient_checkpointing is not None
        else (loaded.quantized_4bit and loaded.device == "cuda")
    )
    if loaded.quantized_4bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing)
    elif checkpointing:
        model.gradient_checkpointing_enable()
    torch.manual_seed(p.seed)
    lora = LoraConfig(
        r=p.lora_r,
        lora_alpha=p.lora_alpha,
        lora_dropout=p.lora_dropout,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    trainable = [t for t in model.parameters() if t.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=p.lr, weight_decay=0.0)
    scheduler = get_scheduler(
        p.lr_scheduler,
        optimizer,
        num_warmup_steps=math.ceil(p.warmup_ratio * p.max_steps),
        num_training_steps=p.max_steps,
    )

    rng = random.Random(p.seed)
    order: list[Example] = []
    losses: list[float] = []
    tokens_seen = 0
    model.train()
    if loaded.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    columns = [
        TextColumn("[bold]train[/bold]"),
        BarColumn(),
        TextColumn("step {task.completed}/{task.total}"),
        TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task("train", total=p.max_steps, loss="-")
        for _step in range(p.max_steps):
            step_loss = 0.0
            for _ in range(p.grad_accum_steps):
                if len(order) < p.batch_size:
                    epoch = list(data.examples)
                    rng.shuffle(epoch)
                    order.extend(epoch)
                batch, order = order[: p.batch_size], order[p.batch_size :]
                inputs = {
                    k: v.to(loaded.device)
                    for k, v in collate(batch, tokenizer.pad_token_id).items()
                }
                loss = model(**inputs).loss / p.grad_accum_steps
                loss.backward()
                step_loss += float(loss.detach())
                tokens_seen += int(inputs["attention_mask"].sum())
            if not math.isfinite(step_loss):
                raise TrainingFailed(
                    f"loss is {step_loss} at step {len(losses) + 1}; lower lr (now {p.lr}) or check the data"
                )
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(round(step_loss, 6))
            bar.update(task, advance=1, loss=f"{step_loss:.4f}")
    wall = time.perf_counter() - started

    adapter_id = str(uuid.uuid4())
    tmp = out.with_name(f"{out.name}.partial-{adapter_id}")
    metadata = {
        "adapter_id": adapter_id,
        "model_id": loaded.model_id,
        "model_revision": loaded.model_revision,
        "quantization": "nf4-double-quant" if loaded.quantized_4bit else "none",
        "train_set_version": questions.version,
        "train_set_path": questions.path,
        "prompt_version": template.version,
        "prompt_sha256": template.sha256,
        "index_version": index_version,
        "train_params": p.model_dump(mode="json"),
        "seed": p.seed,
        "gradient_checkpointing": checkpointing,
        "examples": len(data.examples),
        "examples_shortened": len(data.shortened),
        "examples_dropped": data.dropped,
        "trainable_parameters": sum(t.numel() for t in trainable),
        "wall_time_s": round(wall, 3),
        "tokens_per_s": round(tokens_seen / wall, 1) if wall > 0 else None,
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3)
        if loaded.device == "cuda"
        else None,
        "loss_per_step": losses,
        "provenance": provenance(),
    }
    try:
        model.save_pretrained(str(tmp))
        atomic_write_json(tmp / METADATA_FILE, metadata)
        tmp.rename(out)  # only now does `out` exist, complete with its metadata
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return TrainResult(out, metadata)


def read_adapter_metadata(adapter_dir: str | Path) -> dict[str, Any]:
    path = Path(adapter_dir) / METADATA_FILE
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise InputError(
            Problem(
                str(adapter_dir),
                "",
                METADATA_FILE,
                "not an sftgate adapter (no metadata file)",
                "train it with `sftgate train`",
            )
        ) from None
