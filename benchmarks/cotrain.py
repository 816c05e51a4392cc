"""Co-training: several batch-1 configs trained at once on one base, one row of the batch each.

The alternative to separate processes that `bench_cotrain.py` measures; sftgate does not use it.
On one H200 it was not faster than the round's runs in separate processes sharing the GPU (what
`executor.parallel_runs` does): 0.67x on Gemma 3 270M, 1.06x on the Qwen3-4B shape
(benchmarks/results/cotrain_h200_2026-12-01/README.md says why), so a round's runs stay in
processes of their own. It stays here, tested (tests/test_cotrain.py), so that the measurement can
be repeated on other GPUs and models.

Separate runs sharing one GPU take turns on it (the GPU time-slices between processes), and each
run's step dequantises every 4-bit weight again for its one 1-row batch. Co-training stacks each
member's next example into a row of one batch and routes row k through member k's LoRA adapter
only: one base forward and backward per step for all members, each member with its own adapter,
examples and order, optimiser, learning-rate schedule, gradient clipping, loss and number of
steps. A member that has reached its max_steps leaves the batch; the others go on.

Rows do not mix: attention, norms and the MLP work within a row, and member k's loss reaches only
row k's activations and member k's adapter, so each member trains as it would alone (up to
floating-point noise: other matrix shapes pick other kernels; `tests/test_cotrain.py` compares
both). Dropout masks are drawn in another order than in a run alone, so with lora_dropout > 0 a
member's numbers differ from its run alone as two seeds' do.

PEFT's mixed-adapter batches (`adapter_names=`) are refused in training mode, so the routing is
written here (`rows_forward`). On CUDA the step is replayed as CUDA graphs (`sftgate.graphed`),
one per length bucket and set of members still training.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sftgate import libwarnings
from sftgate.graphed import (
    CHECK_EVERY,
    bucket_length,
    capturable_optimizer,
    check_losses,
    loss_positions,
    static_row,
)
from sftgate.params import TrainParams
from sftgate.train import (
    IGNORE,
    Example,
    LoopResult,
    TrainingFailed,
    lr_schedule,
    shuffled_batches,
)

LORA_FIELDS = ("lora_r", "lora_alpha", "lora_dropout")


@dataclass
class Member:
    """One config of the group: its params (batch_size 1, no accumulation) and examples."""

    params: TrainParams
    examples: Sequence[Example]
    snapshot_steps: Sequence[int] = ()
    name: str = ""  # its adapter's name in the PEFT model, set by add_members


def cotrainable(params: Sequence[TrainParams]) -> str | None:
    """Why these configs cannot train together (None: they can): batch 1 without accumulation,
    and one LoRA shape for all (the adapters are saved as the model's one adapter in turn)."""
    for p in params:
        if p.batch_size != 1 or p.grad_accum_steps != 1:
            return f"batch_size {p.batch_size} x grad_accum_steps {p.grad_accum_steps} (need 1 x 1)"
    for name in LORA_FIELDS:
        values = {getattr(p, name) for p in params}
        if len(values) > 1:
            return f"{name} differs ({sorted(values)})"
    return None


def add_members(model: Any, members: Sequence[Member]) -> Any:
    """The PEFT model with one adapter per member: the first is PEFT's `default` (what
    `sftgate.train.add_lora` makes), the others `m1`, `m2`, ...; each initialised from its own
    seed, as `add_lora` would initialise it alone. All of them trainable."""
    import torch

    from sftgate.train import add_lora, lora_config

    why = cotrainable([m.params for m in members])
    if why is not None:
        raise ValueError(f"these configs cannot be co-trained: {why}")
    peft_model = add_lora(model, members[0].params)
    members[0].name = "default"
    for k, member in enumerate(members[1:], start=1):
        member.name = f"m{k}"
        torch.manual_seed(member.params.seed)
        with libwarnings.quiet():
            peft_model.add_adapter(member.name, lora_config(member.params))
    for name, t in peft_model.named_parameters():
        if ".lora_" in name:
            t.requires_grad_(True)
    return peft_model


def member_parameters(model: Any, name: str) -> list[Any]:
    """Member `name`'s LoRA tensors, in the model's order (the order `TrainSetup.trainable` of a
    run alone has)."""
    return [
        t for n, t in model.named_parameters() if f".lora_A.{name}." in n or f".lora_B.{name}." in n
    ]


def lora_layers(model: Any) -> list[Any]:
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer)]


def rows_forward(layer: Any, names: Sequence[str]) -> Callable[..., Any]:
    """A LoRA layer's forward for a batch whose row k belongs to adapter names[k]: the base
    layer on the whole batch, each adapter on its own row (PEFT's vanilla LoRA arithmetic:
    lora_B(lora_A(dropout(x))) * scaling in the adapter's dtype, added in the result's)."""
    import torch

    def forward(x: Any, *args: Any, **kwargs: Any) -> Any:
        result = layer.base_layer(x, *args, **kwargs)
        rows = []
        for k, name in enumerate(names):
            a, b = layer.lora_A[name], layer.lora_B[name]
            row = x[k : k + 1].to(a.weight.dtype)
            rows.append(b(a(layer.lora_dropout[name](row))) * layer.scaling[name])
        return result + torch.cat(rows).to(result.dtype)

    return forward


@contextmanager
def routed(model: Any, names: Sequence[str]) -> Iterator[None]:
    """Every LoRA layer routes row k to adapter names[k] while inside (an instance attribute
    shadows the class's forward, and is removed after)."""
    layers = lora_layers(model)
    for layer in layers:
        layer.forward = rows_forward(layer, names)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward


def row_losses(model: Any, ids: Any, keep: Any, targets: Any) -> Any:
    """Each row's mean cross-entropy over its completion tokens: the decoder's hidden states at
    row k's `keep[k]` positions through the output layer (`logits_to_keep` keeps the same positions
    in every row, and the rows' completions sit at different positions)."""
    import torch
    import torch.nn.functional as F

    causal = model.get_base_model()
    hidden = causal.get_decoder()(input_ids=ids).last_hidden_state
    picked = hidden.gather(1, keep.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
    logits = causal.get_output_embeddings()(picked)
    # Gemma-style models cap their logits in their own forward (None for most models).
    cap = getattr(causal.config, "final_logit_softcapping", None)
    if cap is not None:
        logits = torch.tanh(logits / cap) * cap
    ce = F.cross_entropy(
        logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE, reduction="none"
    ).view(targets.shape)
    counts = (targets != IGNORE).sum(dim=1)
    return ce.sum(dim=1) / counts


@dataclass
class Trainee:
    """A member while it trains: its tensors, optimiser, schedule, losses and snapshots."""

    member: Member
    tensors: list[Any]
    optimizer: Any
    scheduler: Any
    batches: Iterator[list[Example]]
    losses: Any  # (max_steps,) float32 on the device
    step: int = 0
    checked: int = 0
    tokens: int = 0
    snapshots: dict[int, list[Any]] = field(default_factory=dict)
    failure: TrainingFailed | None = None
    wall_s: float = 0.0
    peak: int | None = None

    @property
    def p(self) -> TrainParams:
        return self.member.params

    @property
    def training(self) -> bool:
        return self.failure is None and self.step < self.p.max_steps


def trainee(model: Any, member: Member, device: str, graphs: bool) -> Trainee:
    import torch

    tensors = member_parameters(model, member.name)
    p = member.params
    if graphs:
        optimizer, scheduler = capturable_optimizer(tensors, p)
    else:
        fused = device == "cuda"
        optimizer = torch.optim.AdamW(tensors, lr=p.lr, weight_decay=0.0, fused=fused)
        scheduler = lr_schedule(optimizer, p)
    batches = shuffled_batches(member.examples, 1, p.seed)
    losses = torch.zeros(p.max_steps, dtype=torch.float32, device=device)
    return Trainee(member, tensors, optimizer, scheduler, batches, losses)


def co_step(model: Any, trainees: Sequence[Trainee], ids: Any, keep: Any, targets: Any) -> Any:
    """What a graph captures: the rows' forward (each through its member's adapter), the summed
    loss's backward (member k's gradients are those of its own loss), each member's clipping at
    norm 1 and AdamW step. The rows' losses."""
    import torch

    with routed(model, [t.member.name for t in trainees]):
        losses = row_losses(model, ids, keep, targets)
    losses.sum().backward()
    for t in trainees:
        torch.nn.utils.clip_grad_norm_(t.tensors, 1.0)
        t.optimizer.step()
    return losses


class RowBuffers:
    """One input buffer per (bucket length, number of rows): each row is `static_row`'s layout
    (input_ids, keep, targets), right-padded; causal attention keeps the padding out of the real
    tokens' outputs."""

    def __init__(self, pad_id: int, positions: int, max_length: int, device: str):
        self.pad_id, self.positions = pad_id, positions
        self.max_length, self.device = max_length, device
        self.buffers: dict[tuple[int, int], Any] = {}

    def load(self, examples: Sequence[Example]) -> tuple[Any, Any, Any]:
        import torch

        length = max(bucket_length(len(e.input_ids), self.max_length) for e in examples)
        key = (length, len(examples))
        rows = [static_row(e, self.pad_id, length, self.positions) for e in examples]
        host = torch.tensor(rows, dtype=torch.long)
        if self.device != "cuda":
            buffer = host
        else:
            if key not in self.buffers:
                self.buffers[key] = torch.empty(host.shape, dtype=torch.long, device="cuda")
            buffer = self.buffers[key]
            buffer.copy_(host.pin_memory(), non_blocking=True)
        n, p = length, self.positions
        return buffer[:, :n], buffer[:, n : n + p], buffer[:, n + p :]


class CoGraphs:
    """Captured co-steps, one per (bucket length, members training), in one memory pool."""

    def __init__(self, model: Any):
        import torch

        self.model = model
        self.pool = torch.cuda.graph_pool_handle()
        self.stream = torch.cuda.Stream()
        self.graphs: dict[tuple[int, tuple[str, ...]], tuple[Any, Any]] = {}
        self.captured: list[list[Any]] = []
        self.capture_s = 0.0

    def eager(self, trainees: Sequence[Trainee], batch: tuple[Any, Any, Any]) -> Any:
        """The first co-step, eager on the capture stream: it warms the libraries up and makes
        every optimiser's state before any capture."""
        import torch

        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            losses = co_step(self.model, trainees, *batch).detach()
            for t in trainees:
                t.optimizer.zero_grad(set_to_none=True)
        torch.cuda.current_stream().wait_stream(self.stream)
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        return losses

    def step(self, trainees: Sequence[Trainee], batch: tuple[Any, Any, Any]) -> Any:
        import torch

        key = (batch[0].shape[1], tuple(t.member.name for t in trainees))
        if key not in self.graphs:
            started = time.perf_counter()
            for t in trainees:
                for tensor in t.tensors:
                    tensor.grad = None  # each graph owns its gradients
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph, pool=self.pool, stream=self.stream):
                    losses = co_step(self.model, trainees, *batch)
            except Exception as e:
                raise TrainingFailed(
                    f"capturing the co-training step as a CUDA graph ({key[0]}-token bucket, "
                    f"{len(trainees)} rows) failed: {type(e).__name__}: {e}; set cuda_graphs: "
                    "false"
                ) from e
            torch.cuda.synchronize()
            self.graphs[key] = (graph, losses.detach())
            self.captured.append([key[0], len(trainees)])
            self.capture_s += time.perf_counter() - started
        graph, losses = self.graphs[key]
        graph.replay()
        return losses

    def release(self, trainees: Sequence[Trainee]) -> None:
        import torch

        for t in trainees:
            for tensor in t.tensors:
                tensor.grad = None
        self.graphs.clear()
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def check_trainee(t: Trainee, done: bool) -> None:
    """Every CHECK_EVERY steps (and at its last): its losses so far read from the device; the
    first non-finite one fails this member alone."""
    if not (done or t.step % CHECK_EVERY == 0):
        return
    try:
        check_losses(t.losses, t.checked, t.step, t.p.lr)
        t.checked = t.step
    except TrainingFailed as e:
        t.failure = e


def cotrain_loop(
    model: Any,
    members: Sequence[Member],
    pad_id: int,
    device: str,
    *,
    cuda_graphs: bool,
    on_step: Callable[[int, int], None] | None = None,
) -> list[LoopResult | TrainingFailed]:
    """Train the members of `add_members`' model together, each for its own max_steps on its own
    examples in its own seeded order; one outcome per member: its LoopResult (losses, tokens,
    wall time until its last step, snapshots), or the TrainingFailed that stopped it alone.
    `on_step(step, longest)` after each co-step."""
    import torch

    trainees = [trainee(model, m, device, cuda_graphs) for m in members]
    longest = max(m.params.max_steps for m in members)
    positions = max(loss_positions(m.examples) for m in members)
    buffers = RowBuffers(pad_id, positions, max(m.params.max_length for m in members), device)
    graphs = CoGraphs(model) if cuda_graphs else None
    cuda = device == "cuda"
    model.train()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    try:
        for step in range(1, longest + 1):
            active = [t for t in trainees if t.training]
            if not active:
                break
            examples = [next(t.batches)[0] for t in active]
            batch = buffers.load(examples)
            if graphs is None:
                losses = co_step(model, active, *batch).detach()
                for t in active:
                    t.optimizer.zero_grad(set_to_none=True)
            elif step == 1:
                losses = graphs.eager(active, batch)
            else:
                losses = graphs.step(active, batch)
            for row, (t, example) in enumerate(zip(active, examples)):
                t.losses[t.step].copy_(losses[row])
                t.scheduler.step()
                t.step += 1
                t.tokens += len(example.input_ids)
                if t.step in t.member.snapshot_steps:
                    t.snapshots[t.step] = [x.detach().to("cpu", copy=True) for x in t.tensors]
                done = t.step == t.p.max_steps
                check_trainee(t, done)
                if done or t.failure is not None:
                    if cuda:
                        torch.cuda.synchronize()
                    t.wall_s = time.perf_counter() - started
                    t.peak = torch.cuda.max_memory_allocated() if cuda else None
            if on_step is not None:
                on_step(step, longest)
    finally:
        if graphs is not None:
            graphs.release(trainees)
    stats = None
    if graphs is not None:
        stats = {
            "captured": len(graphs.captured),
            "shapes": graphs.captured,
            "loss_positions": positions,
            "capture_s": round(graphs.capture_s, 3),
        }
    return [outcome(t, stats) for t in trainees]


def outcome(t: Trainee, graphs: dict[str, Any] | None) -> LoopResult | TrainingFailed:
    if t.failure is not None:
        return t.failure
    losses = [round(v, 6) for v in t.losses.tolist()]
    if not all(math.isfinite(v) for v in losses):  # pragma: no cover - check_trainee saw them
        return TrainingFailed(f"non-finite loss in {losses}")
    return LoopResult(t.p, losses, t.tokens, t.wall_s, t.peak, t.snapshots, graphs)
