"""`sftgate train`: QLoRA (or LoRA) supervised fine-tuning on the eval JSON v2 task.

The loop is written out: PEFT adds the adapter, transformers supplies the model and the
scheduler, a plain PyTorch AdamW steps. Examples are tokenised once, up front, with prompt tokens
from `sftgate.prompt.encode_prompt` (the function evaluation uses); the loss covers completion
tokens only, and only their logits are computed.

On CUDA the defaults are the settings measured fastest in `benchmarks/README.md`: the 4-bit base
keeps bf16 norms and embeddings (no fp32 upcast), Liger kernels, padding-free batches, fused
AdamW, and gradient checkpointing only when a probe step shows that memory needs it. At batch 1
without accumulation or checkpointing the step is captured and replayed as CUDA graphs
(`sftgate.graphed`; `cuda_graphs`).
"""

from __future__ import annotations

import math
import random
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from sftgate import libwarnings
from sftgate.artifacts import (
    checkpoint_dir,
    quantization_label,
    refuse_existing_adapter,
    save_adapter,
    write_checkpoint,
)
from sftgate.config import StrictModel, pin_view
from sftgate.contexts import load_contexts, resolve_passages
from sftgate.errors import InputError, Problem, SftgateError, SftgateWarning
from sftgate.hashing import sha256_file, sha256_json
from sftgate.models import LoadedModel, Quantization, uses_sliding_window
from sftgate.params import TrainParams
from sftgate.prompt import DEFAULT_PROMPT, PromptTemplate, encode_prompt, load_prompt
from sftgate.provenance import provenance
from sftgate.questions import Passage, Question, QuestionSet, load_questions
from sftgate.resident import ResidentBase, borrowed
from sftgate.stopwatch import Stopwatch
from sftgate.targets import TargetFormat, reference_completion

if TYPE_CHECKING:
    from sftgate.graphed import GraphChoice

DEFAULT_MODEL = "Qwen/Qwen3-4B"
IGNORE = -100  # target id that the loss skips


class TrainConfig(StrictModel):
    path_fields = ("model", "questions", "contexts", "prompt", "out")  # relative to the YAML
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
        None,
        description="None (auto): on CUDA, off when a probe step without it fits in "
        "max_memory_gib (1.4-1.9x faster steps, benchmarks/README.md), else on; off on CPU",
    )
    max_memory_gib: float | None = Field(
        None,
        gt=0,
        description="GPU memory the auto checkpointing choice may plan for; None: 90% of what "
        "is free on the card",
    )
    kernels: Literal["auto", "liger", "none"] = Field(
        "auto",
        description="auto: Liger kernels (RMSNorm, SwiGLU, RoPE, fused linear cross-entropy) on "
        "CUDA when liger-kernel is installed and supports the model type; none otherwise",
    )
    padding_free: bool | None = Field(
        None,
        description="pack a step's examples into one row, attention kept within each example (no "
        "padding tokens); false pads them to the longest; None (auto): on unless the model has "
        "sliding-window layers",
    )
    cuda_graphs: bool | None = Field(
        None,
        description="capture the training step as CUDA graphs (one per 128-token length bucket) "
        "and replay them: no per-step launch overhead from Python; None (auto): on on CUDA when "
        "batch_size and grad_accum_steps are 1 and gradient checkpointing is off, off otherwise",
    )
    params: TrainParams = Field(default_factory=TrainParams)
    num_epochs: float | None = Field(
        None,
        gt=0,
        description="passes over the training examples, instead of params.max_steps (give one of "
        "the two): max_steps = ceil(num_epochs x examples / (batch_size x grad_accum_steps)), "
        "the examples counted after those too long for max_length are left out; the conversion "
        "is recorded in sftgate_train.json (steps_from_epochs)",
    )
    checkpoint_steps: list[int] = Field(
        default_factory=list,
        description="also save the adapter as it was after these steps, in "
        "OUT/checkpoints/step-K (a learning curve: evaluate each with `sftgate eval --adapter`); "
        "the final adapter is the same with or without them",
    )

    @model_validator(mode="after")
    def _steps_or_epochs(self) -> TrainConfig:
        if self.num_epochs is not None and "max_steps" in self.params.model_fields_set:
            raise ValueError(
                f"give either params.max_steps or num_epochs, not both (got max_steps="
                f"{self.params.max_steps} and num_epochs={self.num_epochs:g}): remove one"
            )
        return self

    @model_validator(mode="after")
    def _checkpoints_within_the_run(self) -> TrainConfig:
        if self.num_epochs is not None:
            return self  # checked once the epochs are converted to steps (steps_from_epochs)
        outside = [s for s in self.checkpoint_steps if not 0 < s < self.params.max_steps]
        if outside:
            raise ValueError(
                f"checkpoint_steps must lie between 0 and max_steps={self.params.max_steps} "
                f"(the end is the adapter itself), but got {outside}"
            )
        return self


@dataclass
class Example:
    id: str
    input_ids: list[int]
    prompt_len: int  # tokens before the completion; the loss covers the rest
    shortened: bool
    passages: tuple[Passage, ...] = ()  # those the prompt holds (build_example)


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
    target_format: TargetFormat = "schema_order",
) -> Example | None:
    """Prompt + completion within max_length, never cutting the completion.

    Passages are dropped from the end first; if the first passage alone is still too long it is
    shortened. The completion is the reference grounded in the passages that remain, serialised
    as `target_format` says (`sftgate.targets`).
    """
    kept = list(passages)

    def completion(ps: Sequence[Passage]) -> list[int]:
        return completion_ids(
            tokenizer, reference_completion(question.reference, ps, target_format)
        )

    while True:
        target = completion(kept)
        prompt = encode_prompt(tokenizer, template, question.question, kept)
        if len(prompt) + len(target) <= max_length:
            return Example(
                question.id,
                prompt + target,
                len(prompt),
                shortened=kept != list(passages),
                passages=tuple(kept),
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
            t = completion(trial)
            if (
                len(encode_prompt(tokenizer, template, question.question, trial)) + len(t)
                <= max_length
            ):
                lo = mid
            else:
                hi = mid - 1
        kept = [Passage(source_path=kept[0].source_path, text=text[:lo])] if lo else []
        if not kept:
            target = completion([])
            prompt = encode_prompt(tokenizer, template, question.question, [])
            if len(prompt) + len(target) > max_length:
                return None
            return Example(question.id, prompt + target, len(prompt), shortened=True, passages=())


def tokenize_examples(
    tokenizer: Any,
    template: PromptTemplate,
    questions: Sequence[Question],
    passages: dict[str, tuple[Passage, ...]],
    max_length: int,
    target_format: TargetFormat = "schema_order",
) -> Tokenized:
    out = Tokenized([])
    for q in questions:
        ex = build_example(tokenizer, template, q, passages[q.id], max_length, target_format)
        if ex is None:
            out.dropped.append(q.id)
            continue
        if ex.shortened:
            out.shortened.append(q.id)
        out.examples.append(ex)
    return out


@dataclass(frozen=True)
class Batch:
    """One micro-batch on the device. Logits are computed only at the `keep` positions."""

    inputs: dict[str, Any]  # input_ids + position_ids + segments (packed), or attention_mask
    keep: Any  # 1-D LongTensor: positions whose next token is a completion token
    targets: Any  # (rows, len(keep)) next-token ids, IGNORE where a row has none there
    tokens: int  # real tokens, padding excluded


def make_batch(
    examples: Sequence[Example],
    pad_id: int,
    *,
    padding_free: bool,
    device: str,
    pad_to_multiple: int = 1,
) -> Batch:
    """Tensors for one micro-batch.

    Padding-free: the examples are concatenated into one row, `position_ids` restart at 0 for
    each, and `segments` gives each example's span, which `segment_attention` uses to attend
    within each example only; no compute goes to padding. Padded: right-padded rows with an
    attention mask. `pad_to_multiple` rounds the token count (and the number of loss positions)
    up with a filler segment that nothing attends to and no loss covers: GPU matrix kernels are
    slower on odd sizes.
    """
    import torch

    # Position p predicts token p + 1; completion tokens are prompt_len .. n-1.
    if padding_free:
        ids = [t for e in examples for t in e.input_ids]
        positions = [i for e in examples for i in range(len(e.input_ids))]
        keep: list[int] = []
        targets: list[int] = []
        segments = []
        offset = 0
        for e in examples:
            n = len(e.input_ids)
            keep.extend(range(offset + e.prompt_len - 1, offset + n - 1))
            targets.extend(e.input_ids[e.prompt_len :])
            segments.append((offset, offset + n))
            offset += n
        if fill := -offset % pad_to_multiple:
            ids += [pad_id] * fill
            positions += range(fill)
            segments.append((offset, offset + fill))
        if fill := -len(keep) % pad_to_multiple:
            keep += [0] * fill
            targets += [IGNORE] * fill
        inputs: dict[str, Any] = {"input_ids": torch.tensor([ids], device=device)}
        if len(segments) > 1:
            # Positions restart per example. (For one example transformers counts 0..n-1 itself
            # and skips its packed-sequence check, which waits for the GPU.)
            inputs["position_ids"] = torch.tensor([positions], device=device)
            inputs["segments"] = tuple(segments)
        return Batch(
            inputs,
            torch.tensor(keep, device=device),
            torch.tensor([targets], device=device),
            offset,
        )
    width = max(len(e.input_ids) for e in examples)
    width += -width % pad_to_multiple
    first = min(e.prompt_len for e in examples) - 1
    last = max(len(e.input_ids) for e in examples) - 1
    ids_t = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    targets_t = torch.full((len(examples), last - first), IGNORE, dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids_t[i, :n] = torch.tensor(e.input_ids)
        mask[i, :n] = 1
        targets_t[i, e.prompt_len - 1 - first : n - 1 - first] = ids_t[i, e.prompt_len : n]
    return Batch(
        {"input_ids": ids_t.to(device), "attention_mask": mask.to(device)},
        torch.arange(first, last, device=device),
        targets_t.to(device),
        int(mask.sum()),
    )


SEGMENT_ATTENTION = "sftgate_segments"


def segment_sdpa(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    *,
    segments: Sequence[tuple[int, int]] | None = None,
    sliding_window: int | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """Causal attention within each packed example: one SDPA call per segment.

    Padding-free batches need attention that stops at example boundaries. SDPA with a
    block-diagonal mask computes every block of the whole pack (8x the attention work for 8
    examples) on a slower kernel; a causal call per segment runs the flash kernel on exactly the
    needed blocks. Same result as the padded batch (tests/test_train.py).
    """
    import torch
    import torch.nn.functional as F

    if segments is None:  # one example: plain causal attention
        segments = [(0, query.shape[2])]
    if sliding_window is not None and max(e - s for s, e in segments) > sliding_window:
        raise InputError(
            Problem(
                "config",
                "",
                "padding_free",
                f"the model uses sliding-window attention ({sliding_window} tokens), which "
                "padding-free batches do not implement",
                "set padding_free: false",
            )
        )
    out = [
        F.scaled_dot_product_attention(
            query[:, :, s:e],
            key[:, :, s:e],
            value[:, :, s:e],
            is_causal=True,
            scale=scaling,
            enable_gqa=query.shape[1] != key.shape[1],
        )
        for s, e in segments
    ]
    return torch.cat(out, dim=2).transpose(1, 2).contiguous(), None


def _no_mask(*args: Any, **kwargs: Any) -> None:
    return None  # segment_sdpa needs no mask tensor: the segments are the mask


@contextmanager
def segment_attention(model: Any) -> Iterator[None]:
    """`model` attends with `segment_sdpa` inside the block, its own attention after it."""
    from transformers import AttentionInterface, AttentionMaskInterface

    AttentionInterface.register(SEGMENT_ATTENTION, segment_sdpa)
    AttentionMaskInterface.register(SEGMENT_ATTENTION, _no_mask)
    before = model.config._attn_implementation
    model.set_attn_implementation(SEGMENT_ATTENTION)
    try:
        yield
    finally:
        model.set_attn_implementation(before)


def completion_loss(model: Any, batch: Batch, *, fused: bool) -> Any:
    """Mean cross-entropy over the batch's completion tokens.

    The model computes logits only at `batch.keep` (`logits_to_keep`), so the prompt's positions
    never touch the vocabulary-sized output layer. With Liger's fused linear cross-entropy
    (`fused`) not even those logits are materialised.
    """
    import torch.nn.functional as F

    if fused:
        # Liger's forward takes targets already aligned with the kept positions.
        return model(**batch.inputs, logits_to_keep=batch.keep, shift_labels=batch.targets).loss
    logits = model(**batch.inputs, logits_to_keep=batch.keep).logits
    return F.cross_entropy(
        logits.flatten(0, 1).float(), batch.targets.flatten(), ignore_index=IGNORE
    )


@dataclass(frozen=True)
class Machinery:
    """How a run trained, resolved from the config and the device; recorded in the metadata."""

    loop: str
    compute_dtype: str
    kernels: Literal["liger", "none"]
    kernels_reason: str
    padding_free: bool
    attention: str
    gradient_checkpointing: bool
    gradient_checkpointing_reason: str
    cuda_graphs: bool
    cuda_graphs_reason: str
    optimizer: str
    adapter_dtype: str


def resolve_kernels(
    config: TrainConfig, loaded: LoadedModel, *, cuda_graphs: bool = False
) -> tuple[Literal["liger", "none"], str]:
    if config.kernels == "none":
        return "none", "kernels: none"
    if config.kernels == "auto" and loaded.device != "cuda":
        return "none", "auto: Liger kernels need CUDA"
    if config.kernels == "auto" and cuda_graphs:
        return "none", "auto: none, CUDA graphs are on (Liger's fused loss reads it on the host)"
    try:
        from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN
    except ImportError:
        if config.kernels == "liger":
            raise InputError(
                Problem(
                    "config",
                    "",
                    "kernels",
                    "liger-kernel is not installed",
                    "pip install 'sftgate[gpu]', or set kernels: none",
                )
            ) from None
        return "none", "auto: liger-kernel is not installed (pip install 'sftgate[gpu]')"
    model_type = loaded.model.config.model_type
    if model_type not in MODEL_TYPE_TO_APPLY_LIGER_FN:
        if config.kernels == "liger":
            raise InputError(
                Problem(
                    "config",
                    "",
                    "kernels",
                    f"Liger has no kernels for model type {model_type!r}",
                    "set kernels: none",
                )
            )
        return "none", f"auto: Liger does not support model type {model_type!r}"
    return "liger", f"{config.kernels}: CUDA, model type {model_type!r}"


@contextmanager
def liger_kernels(model: Any) -> Iterator[None]:
    """Liger's Triton kernels patched into `model`: RMSNorm, SwiGLU, RoPE, fused linear CE.

    Liger also rebinds names in the model's transformers module (the RoPE function, the RMSNorm
    and MLP classes), which would reach every model built later in this process; they are put
    back on exit, so `train` leaves no global state behind.
    """
    from liger_kernel.transformers.monkey_patch import _apply_liger_kernel_to_instance

    module = sys.modules[type(model).__module__]
    saved = dict(vars(module))
    try:
        _apply_liger_kernel_to_instance(
            model=model,
            rope=True,
            rms_norm=True,
            swiglu=True,
            cross_entropy=False,  # True would patch torch's cross_entropy for everyone
            fused_linear_cross_entropy=True,
        )
        yield
    finally:
        for name in set(vars(module)) - set(saved):
            delattr(module, name)
        for name, value in saved.items():
            if vars(module).get(name) is not value:
                setattr(module, name, value)


def set_checkpointing(model: Any, on: bool) -> None:
    """Per-layer activation checkpointing (non-reentrant: frozen inputs need no grad hooks).
    transformers 5.2x names it activation_checkpointing_* (the gradient_checkpointing_* names
    warn, and go in v6); older releases know only those."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        if on:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.activation_checkpointing_disable()
    elif on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_disable()


def lora_config(params: TrainParams) -> Any:
    """PEFT's LoraConfig for the run: r, alpha and dropout from params, every linear projection."""
    from peft import LoraConfig

    return LoraConfig(
        r=params.lora_r,
        lora_alpha=params.lora_alpha,
        lora_dropout=params.lora_dropout,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )


def add_lora(model: Any, params: TrainParams, *, adapter_dtype: Any = None) -> Any:
    """LoRA on every linear projection (not the output layer); the base stays frozen.

    No `prepare_model_for_kbit_training`: it upcasts norms and the (tied) embedding to fp32,
    which runs the residual stream, attention and the output layer in fp32 for no gain here
    (benchmarks/README.md). The adapter stays fp32 (PEFT's default). `adapter_dtype` (the
    benchmark's lever) casts it, e.g. to bf16 as TRL does for QLoRA: faster on fixed-length
    batches, but measured 2x slower on variable-length packed batches, so not the default.
    """
    import torch
    from peft import get_peft_model

    torch.manual_seed(params.seed)
    model.config.use_cache = False
    with libwarnings.quiet():
        peft_model = get_peft_model(model, lora_config(params))
    if adapter_dtype is not None:
        for t in peft_model.parameters():
            if t.requires_grad:
                t.data = t.data.to(adapter_dtype)
    return peft_model


def probe_peak_bytes(model: Any, batch: Batch, *, fused: bool) -> int | None:
    """Peak GPU memory of one forward+backward on `batch`, or None if it ran out of memory."""
    import torch

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    try:
        completion_loss(model, batch, fused=fused).backward()
        torch.cuda.synchronize()
        peak: int | None = torch.cuda.max_memory_allocated()
    except torch.OutOfMemoryError:
        peak = None
    model.zero_grad(set_to_none=True)
    torch.cuda.empty_cache()
    return peak


def longest_batch(examples: Sequence[Example], batch_size: int) -> list[Example]:
    return sorted(examples, key=lambda e: len(e.input_ids), reverse=True)[:batch_size]


@dataclass(frozen=True)
class TrainResult:
    adapter_dir: Path
    metadata: dict[str, Any]


class TrainingFailed(SftgateError):
    """Training could not finish (NaN loss, out of memory); the message says why."""


Kernels = tuple[Literal["liger", "none"], str]  # the choice and its reason


def final_kernels(
    config: TrainConfig,
    loaded: LoadedModel,
    kernels: Kernels,
    wanted: GraphChoice,
    settled: GraphChoice,
) -> Kernels:
    """`kernels: auto` was resolved while CUDA graphs were wanted, and graphs rule Liger out; if
    settling the checkpointing then turned the graphs off, Liger is allowed after all: the choice
    resolved again without graphs. Any other choice stands."""
    if config.kernels != "auto" or not wanted.on or settled.on:
        return kernels
    name, reason = resolve_kernels(config, loaded, cuda_graphs=False)
    return name, (f"{reason}, CUDA graphs off" if name == "liger" else reason)


@contextmanager
def set_up(
    config: TrainConfig,
    loaded: LoadedModel,
    examples: Sequence[Example],
    kernels: Literal["liger", "none"],
    padding_free: bool,
) -> Iterator[tuple[TrainSetup, Checkpointing]]:
    """The base borrowed for one setup: Liger's kernels patched in, the segment attention, LoRA
    added, gradient checkpointing decided (on CUDA, by a probe step) and set. On exit the patches
    are undone and the base is as it was."""
    with borrowed(loaded.model), ExitStack() as patches:
        if kernels == "liger":
            patches.enter_context(liger_kernels(loaded.model))
        if padding_free:
            patches.enter_context(segment_attention(loaded.model))
        lora = add_lora(loaded.model, config.params)
        setup = TrainSetup.of(lora, loaded, padding_free, kernels)
        checkpointing = decide_checkpointing(config, setup, examples)
        set_checkpointing(setup.model, checkpointing.on)
        yield setup, checkpointing


@dataclass(frozen=True)
class Prepared:
    setup: TrainSetup
    checkpointing: Checkpointing
    machinery: Machinery


@contextmanager
def prepared(
    config: TrainConfig, loaded: LoadedModel, examples: Sequence[Example]
) -> Iterator[Prepared]:
    """The model set up to train, and the machinery as settled: kernels, padding-free,
    checkpointing, CUDA graphs (`wanted_graphs` from the config, `settle_graphs` once the
    checkpointing is known, `final_kernels` after that).

    The one choice that can change late: `kernels: auto` gives none while graphs are wanted, the
    probe step (without Liger) then needs checkpointing, which turns the graphs off and allows
    Liger. The first setup is then undone and done again with Liger patched in before LoRA is
    added: the order every Liger run takes (the one measured on GPUs; Liger patching a model that
    already holds LoRA layers is not). The second probe measures the step that will run, with
    Liger's lower memory (its fused loss keeps no full logits), so it may fit without
    checkpointing after all. The cost, on this path only: a second LoRA setup and probe step."""
    from sftgate.graphed import GraphChoice, settle_graphs, wanted_graphs

    wanted = wanted_graphs(
        config.cuda_graphs,
        loaded.device,
        config.params,
        config.gradient_checkpointing,
        config.kernels,
    )
    kernels = resolve_kernels(config, loaded, cuda_graphs=wanted.on)
    padding_free = resolve_padding_free(config, loaded)
    with set_up(config, loaded, examples, kernels[0], padding_free) as (setup, checkpointing):
        graphs = settle_graphs(wanted, config.cuda_graphs, checkpointing.on, checkpointing.reason)
        final = final_kernels(config, loaded, kernels, wanted, graphs)
        if final[0] == kernels[0]:
            machinery = describe_machinery(setup, loaded, final[1], checkpointing, graphs)
            yield Prepared(setup, checkpointing, machinery)
            return
    graphs = GraphChoice(
        False,
        f"auto: off, without Liger kernels a step needs gradient checkpointing "
        f"({checkpointing.reason})",
    )
    with set_up(config, loaded, examples, final[0], padding_free) as (setup, checkpointing):
        machinery = describe_machinery(setup, loaded, final[1], checkpointing, graphs)
        yield Prepared(setup, checkpointing, machinery)


def train(
    config: TrainConfig,
    *,
    progress: bool = True,
    device: str | None = None,
    on_step: Callable[[int, int], None] | None = None,
    base: ResidentBase | None = None,
) -> TrainResult:
    """Read the inputs, load the model (or take `base`'s, kept loaded across runs), tokenise, set
    up the machinery, run the loop, save the adapter folder (`sftgate.artifacts`). The base comes
    back as it was (`sftgate.resident.borrowed`: no LoRA layers, patches or flags left), and
    Liger's and the segment attention's patches are undone when the loop ends."""
    clock = Stopwatch()
    inputs = read_inputs(config)
    out = Path(config.out)
    refuse_existing_adapter(out)

    with clock.part("model_load"):
        loaded = (base or ResidentBase()).get(config.model, config.quantization, device)
    with clock.part("examples"):
        data = training_examples(config, loaded.tokenizer, inputs, base)
    config, epochs = steps_from_epochs(config, len(data.examples))
    with ExitStack() as run:
        with clock.part("setup"):
            ready = run.enter_context(prepared(config, loaded, data.examples))
        with clock.part("train_steps"):
            loop = train_loop(
                ready.setup,
                data.examples,
                config.params,
                progress=progress,
                on_step=on_step,
                snapshot_steps=config.checkpoint_steps,
                cuda_graphs=ready.machinery.cuda_graphs,
            )
        metadata = adapter_metadata(
            inputs,
            loaded,
            data,
            ready.setup,
            ready.machinery,
            ready.checkpointing,
            loop,
            timings=clock.split(),
        )
        metadata["steps_from_epochs"] = epochs  # None when max_steps was given
        save_adapter(
            ready.setup.model,
            out,
            metadata,
            also=lambda tmp: save_checkpoints(ready.setup, loop, tmp, metadata),
        )
    return TrainResult(out, metadata)


def save_checkpoints(
    setup: TrainSetup, loop: LoopResult, adapter_dir: Path, metadata: dict[str, Any]
) -> None:
    """Each snapshot as an adapter folder of its own (ADAPTER/checkpoints/step-K), its metadata
    the adapter's with `checkpoint_step`; the model gets its final weights back."""
    import torch

    if not loop.snapshots:
        return
    final = [t.detach().clone() for t in setup.trainable]
    try:
        for step, tensors in sorted(loop.snapshots.items()):
            with torch.no_grad():
                for t, saved in zip(setup.trainable, tensors):
                    t.copy_(saved)
            write_checkpoint(setup.model, checkpoint_dir(adapter_dir, step), metadata, step)
    finally:
        with torch.no_grad():
            for t, saved in zip(setup.trainable, final):
                t.copy_(saved)


def steps_from_epochs(
    config: TrainConfig, examples: int
) -> tuple[TrainConfig, dict[str, Any] | None]:
    """`num_epochs` as max_steps: enough optimiser steps to show every example num_epochs times
    (the last step may reach into the next pass); the config with that max_steps and the
    conversion, or the config unchanged and None when it gives max_steps."""
    if config.num_epochs is None:
        return config, None
    p = config.params
    per_step = p.batch_size * p.grad_accum_steps
    # Rounded first, so that 0.1 x 30 examples is 3 steps, not 4.
    steps = max(1, math.ceil(round(config.num_epochs * examples / per_step, 9)))
    outside = [s for s in config.checkpoint_steps if not 0 < s < steps]
    if outside:
        raise InputError(
            Problem(
                config.questions,
                "",
                "checkpoint_steps",
                f"num_epochs={config.num_epochs:g} over {examples} examples is max_steps={steps}, "
                f"but checkpoint_steps has {outside}",
                "give checkpoint steps between 0 and max_steps",
            )
        )
    conversion = {
        "num_epochs": config.num_epochs,
        "examples": examples,
        "examples_per_step": per_step,  # batch_size x grad_accum_steps
        "max_steps": steps,
    }
    params = p.model_copy(update={"max_steps": steps})
    return config.model_copy(update={"params": params}), conversion


@dataclass(frozen=True)
class TrainInputs:
    template: PromptTemplate
    questions: QuestionSet
    passages: dict[str, tuple[Passage, ...]]
    index_version: str


def read_inputs(config: TrainConfig) -> TrainInputs:
    """The prompt, the questions and the passages each question is trained with."""
    template = load_prompt(config.prompt)
    questions = load_questions(config.questions)
    contexts = load_contexts(config.contexts) if config.contexts else None
    passages, index_version = resolve_passages(questions, contexts)
    return TrainInputs(template, questions, passages, index_version)


def examples_key(config: TrainConfig, inputs: TrainInputs) -> str:
    """What the training examples are made from: the prompt (its sha256, read with it), the
    question and contexts files' bytes, max_length and the target format (with the tokenizer,
    which `ResidentBase` holds)."""
    files = [config.questions, config.contexts]
    return sha256_json(
        {
            "prompt": inputs.template.sha256,
            "files": [None if f is None else sha256_file(f) for f in files],
            "max_length": config.params.max_length,
            "target_format": config.params.target_format,
        }
    )


def training_examples(
    config: TrainConfig, tokenizer: Any, inputs: TrainInputs, base: ResidentBase | None = None
) -> Tokenized:
    """Every question as an example within max_length; one that does not fit even without
    passages is left out with a warning, and none fitting is an error (with no warning before
    it). With `base`, examples an earlier run tokenised from the same inputs are reused."""
    max_length = config.params.max_length
    questions = inputs.questions.questions

    def make() -> Tokenized:
        return tokenize_examples(
            tokenizer,
            inputs.template,
            questions,
            inputs.passages,
            max_length,
            config.params.target_format,
        )

    data = base.examples(examples_key(config, inputs), make) if base is not None else make()
    if not data.examples:
        raise InputError(
            Problem(
                config.questions,
                "",
                "params.max_length",
                f"no example fits in max_length={max_length} tokens, even without passages",
                "raise max_length",
            )
        )
    if data.dropped:
        named = ", ".join(data.dropped[:10]) + (" ..." if len(data.dropped) > 10 else "")
        warnings.warn(
            f"{len(data.dropped)} of {len(questions)} examples left out: longer than "
            f"max_length={max_length} tokens even without passages: {named} (all of them are "
            "listed in the adapter's metadata, examples_dropped)",
            SftgateWarning,
            stacklevel=3,  # the caller of `train`
        )
    return data


def resolve_padding_free(config: TrainConfig, loaded: LoadedModel) -> bool:
    if config.padding_free is not None:
        return config.padding_free
    return not uses_sliding_window(loaded.model.config)


@dataclass(frozen=True)
class TrainSetup:
    """The model being trained (LoRA added) and how its batches and its loss are made."""

    model: Any
    trainable: list[Any]
    pad_id: int
    device: str
    padding_free: bool
    kernels: Literal["liger", "none"]

    @classmethod
    def of(
        cls,
        model: Any,
        loaded: LoadedModel,
        padding_free: bool,
        kernels: Literal["liger", "none"],
    ) -> TrainSetup:
        trainable = [t for t in model.parameters() if t.requires_grad]
        pad_id = loaded.tokenizer.pad_token_id
        return cls(model, trainable, pad_id, loaded.device, padding_free, kernels)

    @property
    def fused(self) -> bool:
        """Liger's fused linear cross-entropy computes the loss."""
        return self.kernels == "liger"

    def batch(self, examples: Sequence[Example]) -> Batch:
        return make_batch(examples, self.pad_id, padding_free=self.padding_free, device=self.device)


@dataclass(frozen=True)
class Checkpointing:
    on: bool
    reason: str
    probe_peak_bytes: int | None = None  # the probe step's peak, when one ran


def decide_checkpointing(
    config: TrainConfig, setup: TrainSetup, examples: Sequence[Example]
) -> Checkpointing:
    """As configured; auto: off on CPU; on CUDA, off when a probe step without it on the longest
    batch, plus AdamW's moments, fits in max_memory_gib (default 90% of the card's free memory)."""
    if config.gradient_checkpointing is not None:
        on = config.gradient_checkpointing
        return Checkpointing(on, f"gradient_checkpointing: {str(on).lower()}")
    if setup.device != "cuda":
        return Checkpointing(False, "auto: off on CPU")
    import torch

    setup.model.train()
    free, _ = torch.cuda.mem_get_info()
    budget = (
        config.max_memory_gib * 2**30
        if config.max_memory_gib is not None
        else 0.9 * (free + torch.cuda.memory_reserved())
    )
    probe = setup.batch(longest_batch(examples, config.params.batch_size))
    peak = probe_peak_bytes(setup.model, probe, fused=setup.fused)
    # AdamW's two fp32 moments are allocated at the first step, after the probe.
    need = None if peak is None else peak + sum(8 * t.numel() for t in setup.trainable)
    without = "ran out of memory" if need is None else f"needs {need / 2**30:.1f} GiB"
    reason = f"auto: a step without it {without}, budget {budget / 2**30:.1f} GiB"
    return Checkpointing(need is None or need > budget, reason, peak)


def describe_machinery(
    setup: TrainSetup,
    loaded: LoadedModel,
    kernels_reason: str,
    checkpointing: Checkpointing,
    graphs: GraphChoice,
) -> Machinery:
    optimizer = "AdamW (fused)" if setup.device == "cuda" else "AdamW"
    if graphs.on:
        optimizer = "AdamW (fused, capturable)"
    return Machinery(
        loop="plain PyTorch loop over pre-tokenised examples (PEFT LoRA, transformers model)",
        compute_dtype=str(loaded.model.dtype).removeprefix("torch."),
        kernels=setup.kernels,
        kernels_reason=kernels_reason,
        padding_free=setup.padding_free,
        attention=str(loaded.model.config._attn_implementation),
        gradient_checkpointing=checkpointing.on,
        gradient_checkpointing_reason=checkpointing.reason,
        cuda_graphs=graphs.on,
        cuda_graphs_reason=graphs.reason,
        optimizer=optimizer,
        adapter_dtype=str(setup.trainable[0].dtype).removeprefix("torch."),
    )


def shuffled_batches(
    examples: Sequence[Example], batch_size: int, seed: int
) -> Iterator[list[Example]]:
    """Micro-batches without end: each epoch is the examples in a new seeded order, and a batch
    that reaches an epoch's end takes the rest from the next epoch."""
    rng = random.Random(seed)
    order: list[Example] = []
    while True:
        if len(order) < batch_size:
            epoch = list(examples)
            rng.shuffle(epoch)
            order.extend(epoch)
        batch, order = order[:batch_size], order[batch_size:]
        yield batch


@dataclass(frozen=True)
class LoopResult:
    params: TrainParams
    losses: list[float]  # per optimiser step
    tokens_seen: int
    wall_s: float
    peak_memory_bytes: int | None  # CUDA only
    snapshots: dict[int, list[Any]]  # step -> the trainable tensors after it (CPU copies)
    graphs: dict[str, Any] | None = None  # CUDA graphs captured (sftgate.graphed.GraphStats)


def lr_schedule(optimizer: Any, p: TrainParams) -> Any:
    """transformers' scheduler for the run: p.lr_scheduler over max_steps, after a warm-up of
    warmup_ratio of them."""
    from transformers import get_scheduler

    return get_scheduler(
        p.lr_scheduler,
        optimizer,
        num_warmup_steps=math.ceil(p.warmup_ratio * p.max_steps),
        num_training_steps=p.max_steps,
    )


def train_loop(
    setup: TrainSetup,
    examples: Sequence[Example],
    p: TrainParams,
    *,
    progress: bool,
    on_step: Callable[[int, int], None] | None,
    snapshot_steps: Sequence[int] = (),
    cuda_graphs: bool = False,
) -> LoopResult:
    """max_steps AdamW steps (fused on CUDA) of grad_accum_steps micro-batches each, gradients
    clipped at norm 1, the learning rate from the scheduler; a non-finite loss stops it.
    `cuda_graphs`: the same steps replayed as CUDA graphs (`sftgate.graphed`)."""
    import torch

    if cuda_graphs:
        from sftgate.graphed import graphed_loop

        return graphed_loop(
            setup, examples, p, progress=progress, on_step=on_step, snapshot_steps=snapshot_steps
        )

    cuda = setup.device == "cuda"
    optimizer = torch.optim.AdamW(setup.trainable, lr=p.lr, weight_decay=0.0, fused=cuda)
    scheduler = lr_schedule(optimizer, p)
    batches = shuffled_batches(examples, p.batch_size, p.seed)
    losses: list[float] = []
    snapshots: dict[int, list[Any]] = {}
    tokens_seen = 0
    setup.model.train()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    with step_progress(progress) as bar:
        task = bar.add_task("train", total=p.max_steps, loss="-")
        for _step in range(p.max_steps):
            step_loss = 0.0
            for _ in range(p.grad_accum_steps):
                batch = setup.batch(next(batches))
                loss = completion_loss(setup.model, batch, fused=setup.fused) / p.grad_accum_steps
                loss.backward()
                step_loss += float(loss.detach())
                tokens_seen += batch.tokens
            if not math.isfinite(step_loss):
                raise TrainingFailed(
                    f"loss is {step_loss} at step {len(losses) + 1}; lower lr (now {p.lr}) "
                    "or check the data"
                )
            torch.nn.utils.clip_grad_norm_(setup.trainable, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(round(step_loss, 6))
            if len(losses) in snapshot_steps:  # saved once training is over (save_checkpoints)
                snapshots[len(losses)] = [t.detach().to("cpu", copy=True) for t in setup.trainable]
            bar.update(task, advance=1, loss=f"{step_loss:.4f}")
            if on_step is not None:
                on_step(len(losses), p.max_steps)
    wall = time.perf_counter() - started
    return LoopResult(
        p,
        losses,
        tokens_seen,
        wall,
        torch.cuda.max_memory_allocated() if cuda else None,
        snapshots,
    )


def step_progress(progress: bool) -> Any:
    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [
        TextColumn("[bold]train[/bold]"),
        BarColumn(),
        TextColumn("step {task.completed}/{task.total}"),
        TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    return Progress(*columns, disable=not progress, transient=False)


def adapter_metadata(
    inputs: TrainInputs,
    loaded: LoadedModel,
    data: Tokenized,
    setup: TrainSetup,
    machinery: Machinery,
    checkpointing: Checkpointing,
    loop: LoopResult,
    *,
    timings: dict[str, float],
) -> dict[str, Any]:
    """What the adapter was trained from and with, and what the run measured (README, "Training");
    `timings`: the wall time until now by part (the adapter's save follows)."""

    def gib(n: int | None) -> float | None:
        return None if n is None else round(n / 2**30, 3)

    p, wall = loop.params, loop.wall_s
    return {
        "adapter_id": str(uuid.uuid4()),
        "model_id": loaded.model_id,
        "model_revision": loaded.model_revision,
        "quantization": quantization_label(loaded.quantized_4bit),
        "train_set_version": inputs.questions.version,
        "train_set_path": inputs.questions.path,
        "prompt_version": inputs.template.version,
        "prompt_sha256": inputs.template.sha256,
        "index_version": inputs.index_version,
        # pin_view: a setting added later is recorded only when set, so an adapter trained
        # before it existed still matches its run's params (sftgate.search.runner)
        "train_params": pin_view(p),
        "seed": p.seed,
        "gradient_checkpointing": checkpointing.on,
        "machinery": asdict(machinery),
        "cuda_graphs": loop.graphs,  # captured, buckets, loss_positions, capture_s; None: off
        "examples": len(data.examples),
        "examples_shortened": len(data.shortened),
        "examples_dropped": data.dropped,
        "trainable_parameters": sum(t.numel() for t in setup.trainable),
        "wall_time_s": round(wall, 3),
        "total_time_s": timings["total_s"],
        "timings": timings,
        "tokens_per_s": round(loop.tokens_seen / wall, 1) if wall > 0 else None,
        "peak_memory_gib": gib(loop.peak_memory_bytes),
        "probe_peak_memory_gib": gib(checkpointing.probe_peak_bytes),
        "loss_per_step": loop.losses,
        "checkpoints": sorted(loop.snapshots),
        "provenance": provenance(),
    }
