"""Greedy decoding for evaluation: batches grouped by length, left padding, stop at end of turn.

Batches are formed over the whole prompt list (sorted by length, longest first), so a batch's
composition, and hence its padding and its outputs, never depends on what was decoded before:
a resumed evaluation regenerates exactly what an uninterrupted one would have.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from sftgate.models import uses_sliding_window

if TYPE_CHECKING:
    from sftgate.constrain import BatchMasks, JsonConstraint

Engine = Literal["static", "hf"]


@dataclass(frozen=True)
class Generation:
    index: int  # position in the caller's prompt list
    token_ids: list[int]  # generated tokens, end-of-turn excluded
    text: str
    prompt_tokens: int
    finish_reason: str  # "stop" (end of turn) or "length" (max_new_tokens)


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, longest first (stable for equal lengths)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def generate_batch(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[list[int]],
    *,
    max_new_tokens: int,
    eos_ids: Sequence[int],
    constraint: JsonConstraint | None = None,
) -> list[tuple[list[int], str]]:
    """Greedy-decode one batch (left-padded). Returns (token ids without padding/eos, finish reason).
    With a `constraint`, its grammar masks the logits at every step (xgrammar's LogitsProcessor)."""
    import torch
    from transformers import LogitsProcessorList

    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    pad = tokenizer.pad_token_id
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            eos_token_id=list(eos_ids),
            pad_token_id=pad,
            logits_processor=LogitsProcessorList(
                [constraint.logits_processor()] if constraint else []
            ),
        )
    return cut_at_end_of_turn(out[:, width:].tolist(), eos_ids)


def greedy_generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[list[int]],
    *,
    batch_size: int,
    max_new_tokens: int,
    eos_ids: Sequence[int],
    engine: Engine = "static",
    cuda_graph: bool = False,
    skip: Callable[[list[int]], bool] = lambda batch: False,
    constraint: JsonConstraint | None = None,
) -> Iterator[list[Generation]]:
    """Yield each batch's generations as it finishes; `skip(batch_indices)` skips finished batches.

    engine "static": `static_generate_batch` (CUDA graph when `cuda_graph`); "hf": `generate`.
    Both are greedy over the same left-padded batches and give the same tokens (tested on CPU),
    under the same grammar when a `constraint` is given (`sftgate.constrain`)."""
    for batch in length_batches([len(p) for p in prompts], batch_size):
        if skip(batch):
            continue
        batch_prompts = [prompts[i] for i in batch]
        if engine == "static":
            outs = static_generate_batch(
                model,
                batch_prompts,
                max_new_tokens=max_new_tokens,
                eos_ids=eos_ids,
                pad_id=tokenizer.pad_token_id,
                cuda_graph=cuda_graph,
                constraint=constraint,
            )
        else:
            outs = generate_batch(
                model,
                tokenizer,
                batch_prompts,
                max_new_tokens=max_new_tokens,
                eos_ids=eos_ids,
                constraint=constraint,
            )
        yield [
            Generation(
                i, toks, tokenizer.decode(toks, skip_special_tokens=False), len(prompts[i]), finish
            )
            for i, (toks, finish) in zip(batch, outs)
        ]


# --- the static decoder: one preallocated KV cache per batch, one-token steps in a CUDA graph ---

PACKED_ATTENTION = "sftgate_packed_sdpa"


def packed_gqa_sdpa(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """Attention for the static decoder. A one-token step with a padding mask runs on the key/value
    heads directly (the query heads of a group become that group's query rows), so the KV cache is
    read once per step instead of being copied n_rep times by `repeat_kv`; prefill is transformers'
    sdpa unchanged."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    batch, heads, q_len, dim = query.shape
    kv_heads = key.shape[1]
    if q_len != 1 or heads == kv_heads:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    q = query.reshape(batch, kv_heads, heads // kv_heads, dim)
    out = torch.nn.functional.scaled_dot_product_attention(
        q, key, value, attn_mask=attention_mask, scale=scaling
    )
    return out.reshape(batch, heads, 1, dim).transpose(1, 2).contiguous(), None


def _register_packed_attention() -> None:
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(PACKED_ATTENTION, packed_gqa_sdpa)
    AttentionMaskInterface.register(PACKED_ATTENTION, sdpa_mask)


def static_generate_batch(
    model: Any,
    prompts: Sequence[list[int]],
    *,
    max_new_tokens: int,
    eos_ids: Sequence[int],
    pad_id: int,
    cuda_graph: bool,
    stop_check_every: int = 16,
    fused: bool = True,
    constraint: JsonConstraint | None = None,
) -> list[tuple[list[int], str]]:
    """Greedy-decode one left-padded batch with a static KV cache; same contract as `generate_batch`.

    Prefill is one forward pass over the prompts (position ids and mask as `generate` makes them).
    Each decode step is a fixed-shape function of preallocated tensors (the next token, its
    position, the cache slot) that also advances them, so on CUDA it is captured once as a graph
    and replayed: no Python or kernel-launch cost per token. Finished rows keep decoding (their
    tokens are cut at the first end of turn); every `stop_check_every` steps the loop stops once
    every row has ended. With `fused` (the default), a plain Qwen3 model runs on
    `sftgate.qwen3_decoder` (the same computation in fewer, fused kernels); other models, or
    `fused=False`, run transformers' forward over its `StaticCache`. With a `constraint`, each
    step's logits are masked by its grammar before the argmax (`masked_decode_loop`).
    """
    import torch

    from sftgate import qwen3_decoder

    device = next(model.parameters()).device
    batch, width = len(prompts), max(len(p) for p in prompts)
    # a cache (and mask) length that is a multiple of 64 keeps sdpa on its fused kernels; the
    # extra slots are never visible (the mask hides every slot after the current one)
    cache_len = -(-(width + max_new_tokens) // 64) * 64
    forward: Callable[[Any, Any, Any], Any]  # (token, position, slot) -> next-token logits
    with torch.inference_mode():
        if fused and qwen3_decoder.supported(model):
            decoder = qwen3_decoder.Qwen3Decoder(model, batch, cache_len)
            logits, forward = decoder.prefill(prompts), decoder.step
        else:
            logits, forward = transformers_decoder(model, prompts, cache_len, pad_id)
        out = torch.full((batch, max_new_tokens), pad_id, dtype=torch.long, device=device)
        masks = constraint.batch(batch, device) if constraint is not None else None
        if masks is not None:
            masks.fill()
            masks.apply(logits)
        out[:, 0] = logits.argmax(-1)
        if masks is not None:
            masks.accept(out[:, 0].tolist())
        state = DecodeState(
            out=out,
            token=out[:, :1].clone(),
            position=torch.tensor([[len(p)] for p in prompts], device=device),
            slot=torch.tensor([width], device=device),
            step=torch.tensor([1], device=device),
            eos=torch.tensor(list(eos_ids) or [-1], device=device),
        )
        if masks is None:
            done = decode_loop(forward, state, max_new_tokens, cuda_graph, stop_check_every)
        else:
            done = masked_decode_loop(forward, state, masks, max_new_tokens, cuda_graph)
        rows = out[:, :done].tolist()
    return cut_at_end_of_turn(rows, eos_ids)


@dataclass
class DecodeState:
    """The preallocated tensors one decode step reads and advances in place."""

    out: Any  # (batch, max_new_tokens) tokens so far
    token: Any  # (batch, 1) the last token
    position: Any  # (batch, 1) its position
    slot: Any  # (1,) its cache slot
    step: Any  # (1,) its column in out
    eos: Any  # end-of-turn ids

    def advance(self, forward: Callable[[Any, Any, Any], Any]) -> None:
        self.record(forward(self.token, self.position, self.slot).argmax(-1, keepdim=True))

    def record(self, nxt: Any) -> None:
        """`nxt` (batch, 1) is the next token: into `out`, and the step's tensors move on."""
        self.out.index_copy_(1, self.step, nxt)
        self.token.copy_(nxt)
        self.position.add_(1)
        self.slot.add_(1)
        self.step.add_(1)

    def all_ended(self, done_steps: int) -> bool:
        import torch

        return bool(torch.isin(self.out[:, :done_steps], self.eos).any(-1).all())


def decode_loop(
    forward: Callable[[Any, Any, Any], Any],
    state: DecodeState,
    max_new_tokens: int,
    cuda_graph: bool,
    stop_check_every: int,
) -> int:
    """Decode steps until max_new_tokens or every row has ended (checked every
    `stop_check_every` steps); on CUDA the step is captured once as a graph and replayed.
    Returns the number of tokens decoded."""
    import torch

    def decode_step() -> None:
        state.advance(forward)

    steps_left = max_new_tokens - 1
    warmup = min(steps_left, 2 if cuda_graph else steps_left)
    done = 1
    if cuda_graph:
        # warm-up steps are real steps (run eagerly on a side stream, as capture requires)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                decode_step()
        torch.cuda.current_stream().wait_stream(side)
    else:
        warmup = 0
    done += warmup
    graph = None
    if cuda_graph and done < max_new_tokens:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            decode_step()  # recorded, not run
    while done < max_new_tokens:
        if done % stop_check_every == 0 and state.all_ended(done):
            break
        if graph is not None:
            graph.replay()
        else:
            decode_step()
        done += 1
    if graph is not None:
        torch.cuda.current_stream().synchronize()  # the replays are done before it is freed
    del graph
    return done


def masked_decode_loop(
    forward: Callable[[Any, Any, Any], Any],
    state: DecodeState,
    masks: BatchMasks,
    max_new_tokens: int,
    cuda_graph: bool,
) -> int:
    """`decode_loop` under a grammar. A step: the forward pass (a CUDA graph on a GPU, launched
    without waiting) while the host fills the next token's mask from the tokens so far; then the
    mask on the logits, the argmax, and the new tokens back to the host for the matchers (one
    synchronisation a step). Stops when every row's matcher has taken an end of turn."""
    step = graph_forward(forward, state) if cuda_graph else None
    done = 1
    while done < max_new_tokens and masks.live:
        logits = step() if step is not None else forward(state.token, state.position, state.slot)
        masks.fill()
        masks.apply(logits)
        nxt = logits.argmax(-1, keepdim=True)
        state.record(nxt)
        masks.accept(nxt.view(-1).tolist())
        done += 1
    del step
    return done


def graph_forward(forward: Callable[[Any, Any, Any], Any], state: DecodeState) -> Any:
    """The forward pass of the next token as a CUDA graph: a function that replays it and returns
    its (static) logits. A forward pass only writes the KV cache slot of `state.token`, so the
    warm-up run before the capture changes nothing that the first replay does not write again."""
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        forward(state.token, state.position, state.slot)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        logits = forward(state.token, state.position, state.slot)  # recorded, not run

    def replay() -> Any:
        graph.replay()
        return logits

    return replay


def cut_at_end_of_turn(
    rows: Sequence[list[int]], eos_ids: Sequence[int]
) -> list[tuple[list[int], str]]:
    """Each row up to its first end-of-turn token ("stop"), or whole ("length")."""
    stop = set(eos_ids)
    results = []
    for row in rows:
        end = next((j for j, t in enumerate(row) if t in stop), None)
        results.append((row[:end], "stop") if end is not None else (row, "length"))
    return results


def transformers_decoder(
    model: Any, prompts: Sequence[list[int]], cache_len: int, pad_id: int
) -> tuple[Any, Callable[[Any, Any, Any], Any]]:
    """Prefill left-padded prompts through transformers' forward into a `StaticCache`; returns
    the last-token logits and the one-token step over that cache (GQA attention on the key/value
    heads, `packed_gqa_sdpa`, for the steps only: the model's own attention is restored after).

    Sliding-window layers (Gemma 3) get a cache as long as every other layer's, and a mask of
    their own that hides keys more than the window behind the query: transformers' sliding
    cache keeps only the window, in slots that roll, which one mask over the whole cache cannot
    address. The layers see the same keys either way."""
    import torch
    from transformers import StaticCache

    _register_packed_attention()
    device = next(model.parameters()).device
    batch, width = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((batch, width), pad_id, dtype=torch.long)
    mask = torch.zeros((batch, width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = mask.cumsum(-1) - 1
    positions.masked_fill_(mask == 0, 1)
    config = model.config
    window = config.sliding_window if uses_sliding_window(config) else None
    cache_config = config
    if window is not None:
        cache_config = copy.deepcopy(config)
        cache_config.layer_types = ["full_attention"] * len(config.layer_types)
    cache = {cache_keyword(model): StaticCache(config=cache_config, max_cache_len=cache_len)}
    allowed = torch.ones((batch, cache_len), dtype=torch.bool, device=device)
    allowed[:, :width] = mask.bool()
    span = torch.arange(cache_len, device=device)

    def masks(visible: Any, query_slots: Any) -> Any:
        """One mask, or one per layer type when some layers see only a window."""
        if window is None:
            return visible
        near = span[None, :] > query_slots[:, None] - window  # (queries, cache)
        return {"full_attention": visible, "sliding_attention": visible & near[None, None]}

    prefill_mask: Any = mask
    if window is not None:  # the causal and padding mask transformers would build, per type
        slots = torch.arange(width, device=device)
        causal = span[None, :] <= slots[:, None]
        prefill_mask = masks(allowed[:, None, None, :] & causal[None, None], slots)
    with _attention(config, PACKED_ATTENTION):
        logits = model(
            input_ids=ids,
            attention_mask=prefill_mask,
            position_ids=positions,
            **cache,
            cache_position=torch.arange(width, device=device),
            use_cache=True,
            logits_to_keep=1,
        ).logits[:, -1]

    def forward(token: Any, position: Any, slot: Any) -> Any:
        visible = (allowed & (span <= slot))[:, None, None, :]
        with _attention(config, PACKED_ATTENTION):
            return model(
                input_ids=token,
                attention_mask=masks(visible, slot),
                position_ids=position,
                **cache,
                cache_position=slot,
                use_cache=True,
            ).logits[:, -1]

    return logits, forward


def cache_keyword(model: Any) -> str:
    """The name the model's forward takes its key/value cache by: transformers 5.2x renamed
    `past_key_values` to `cache` (the old name warns, and goes in 5.40); older releases know only
    `past_key_values`. A PEFT model passes its arguments through to the base model's forward."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


@contextmanager
def _attention(config: Any, implementation: str) -> Iterator[None]:
    previous = config._attn_implementation
    config._attn_implementation = implementation
    try:
        yield
    finally:
        config._attn_implementation = previous


def vllm_generate(
    model_dir: str,
    tokenizer: Any,
    prompts: Sequence[list[int]],
    *,
    max_new_tokens: int,
    eos_ids: Sequence[int],
) -> list[Generation]:
    """Greedy decoding with vLLM (optional; imported only here). `model_dir` is a hub id or a saved
    (merged) model folder. Same token ids in, same Generation rows out as the other engines."""
    try:
        from vllm import LLM, SamplingParams
        from vllm.inputs import TokensPrompt
    except ImportError as e:
        from sftgate.errors import SftgateError

        raise SftgateError(
            f"--engine vllm needs vLLM ({e}); install it (`pip install vllm`) or use --engine static"
        ) from e
    llm = LLM(model=model_dir, dtype="bfloat16", seed=0)
    params = SamplingParams(
        temperature=0.0,
        max_tokens=max_new_tokens,
        stop_token_ids=list(eos_ids),
        skip_special_tokens=False,
    )
    outputs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params)
    stop = set(eos_ids)
    gens = []
    for i, o in enumerate(outputs):
        toks = list(o.outputs[0].token_ids)
        end = next((j for j, t in enumerate(toks) if t in stop), None)
        toks, finish = (toks[:end], "stop") if end is not None else (toks, "length")
        gens.append(
            Generation(
                i, toks, tokenizer.decode(toks, skip_special_tokens=False), len(prompts[i]), finish
            )
        )
    return gens
