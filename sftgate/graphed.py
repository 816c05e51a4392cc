"""The training step as CUDA graphs: one graph per length bucket, replayed step after step.

At batch 1 an eager QLoRA step is bound by the host: thousands of small kernels (bitsandbytes'
dequantise + matmul, PEFT's dropout/A/B/scale/add for every projection, autograd) launched one
by one from Python. A CUDA graph records the whole step once - forward, loss, backward, gradient
clipping, the fused AdamW step - and replays it with one launch.

A graph replays fixed shapes, so every step's example becomes fixed-size tensors: right-padded
with pad_id to a length bucket (a multiple of BUCKET tokens) and no attention mask. Attention is
causal, so the padding after the real tokens never changes their outputs; the loss covers a fixed
number of positions (the run's longest completion, rounded up to LOSS_MULTIPLE), the unused ones
with IGNORE targets, so it is the mean over the real completion tokens, as the eager step's.

The learning rate is a device tensor that the scheduler fills in place, the loss of each step is
copied into a device buffer, and the host reads that buffer every CHECK_EVERY steps: no step waits
for the GPU. README, "Training", says when `cuda_graphs` is on and what it costs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sftgate.errors import InputError, Problem
from sftgate.params import TrainParams
from sftgate.train import (
    IGNORE,
    Batch,
    Example,
    LoopResult,
    TrainingFailed,
    TrainSetup,
    completion_loss,
    lr_schedule,
    shuffled_batches,
    step_progress,
)

BUCKET = 128  # tokens: a step's example is padded up to a multiple of this
LOSS_MULTIPLE = 64  # the loss positions of every step: the longest completion rounded up to this
CHECK_EVERY = 10  # steps between the host's reads of the losses (progress, the non-finite check)


def bucket_length(n: int, max_length: int) -> int:
    """The padded length of an n-token example: n rounded up to BUCKET, at most max_length
    rounded up to BUCKET."""
    cap = math.ceil(max_length / BUCKET) * BUCKET
    return min(math.ceil(n / BUCKET) * BUCKET, cap)


def loss_positions(examples: Sequence[Example]) -> int:
    """One loss width for the whole run: the longest completion, rounded up to LOSS_MULTIPLE."""
    longest = max(len(e.input_ids) - e.prompt_len for e in examples)
    return math.ceil(longest / LOSS_MULTIPLE) * LOSS_MULTIPLE


def static_row(example: Example, pad_id: int, length: int, positions: int) -> list[int]:
    """input_ids (`length`), keep (`positions`) and targets (`positions`) of one example, end to
    end: one host-to-device copy fills a graph's input buffer."""
    n, start = len(example.input_ids), example.prompt_len
    completion = n - start
    if n > length or completion > positions:
        raise ValueError(
            f"example {example.id}: {n} tokens ({completion} completion) do not fit a static "
            f"batch of {length} tokens and {positions} loss positions"
        )
    ids = example.input_ids + [pad_id] * (length - n)
    keep = list(range(start - 1, n - 1)) + [0] * (positions - completion)
    targets = example.input_ids[start:] + [IGNORE] * (positions - completion)
    return ids + keep + targets


def static_views(buffer: Any, length: int, positions: int, tokens: int) -> Batch:
    """A Batch whose tensors are views into `buffer` (what `static_row` lays out)."""
    return Batch(
        {"input_ids": buffer[:length].view(1, length)},
        buffer[length : length + positions],
        buffer[length + positions :].view(1, positions),
        tokens,
    )


def static_batch(
    example: Example, pad_id: int, *, length: int, positions: int, device: str
) -> Batch:
    """One example as a fixed-shape batch (no attention mask): the same loss as `make_batch`'s
    for that example alone (tests/test_graphed.py)."""
    import torch

    row = torch.tensor(static_row(example, pad_id, length, positions), device=device)
    return static_views(row, length, positions, len(example.input_ids))


@dataclass(frozen=True)
class GraphChoice:
    on: bool
    reason: str


def refuse(field_name: str, what: str, fix: str) -> InputError:
    return InputError(Problem("config", "", field_name, what, fix))


def wanted_graphs(
    cuda_graphs: bool | None,
    device: str,
    p: TrainParams,
    gradient_checkpointing: bool | None,
    kernels: str,
) -> GraphChoice:
    """Before the model is set up: whether the run will train with CUDA graphs, as far as the
    config tells (auto checkpointing is settled later, `settle_graphs`). Explicit true on a run
    that cannot be graphed is an InputError saying what to change."""
    blockers = [
        (device != "cuda", f"CUDA graphs need CUDA (the device is {device})", "run on a GPU"),
        (p.batch_size != 1, f"batch_size is {p.batch_size}", "set params.batch_size: 1"),
        (
            p.grad_accum_steps != 1,
            f"grad_accum_steps is {p.grad_accum_steps}",
            "set params.grad_accum_steps: 1",
        ),
        (
            gradient_checkpointing is True,
            "gradient checkpointing is on (it reads the RNG state on the host)",
            "set gradient_checkpointing: false",
        ),
        (
            kernels == "liger",
            "Liger's fused cross-entropy reads a value on the host",
            "set kernels: none or auto",
        ),
    ]
    for blocked, what, fix in blockers:
        if not blocked:
            continue
        if cuda_graphs:
            raise refuse(
                "cuda_graphs",
                f"cuda_graphs: true needs batch_size 1, grad_accum_steps 1, no gradient "
                f"checkpointing and no Liger kernels on CUDA, but {what}",
                f"{fix}, or set cuda_graphs: false (or auto)",
            )
        if cuda_graphs is None:
            return GraphChoice(False, f"auto: off, {what}")
    if cuda_graphs is False:
        return GraphChoice(False, "cuda_graphs: false")
    if cuda_graphs:
        return GraphChoice(True, "cuda_graphs: true")
    return GraphChoice(True, "auto: on (CUDA, batch_size 1, grad_accum_steps 1)")


def settle_graphs(
    choice: GraphChoice, cuda_graphs: bool | None, checkpointing_on: bool, why: str
) -> GraphChoice:
    """After the checkpointing choice (`why` its reason): graphs only without checkpointing."""
    if not choice.on or not checkpointing_on:
        return choice
    if cuda_graphs:
        raise refuse(
            "cuda_graphs",
            f"cuda_graphs: true needs gradient checkpointing off, but it is on ({why})",
            "set gradient_checkpointing: false (a larger max_memory_gib if the probe step did "
            "not fit), or cuda_graphs: false",
        )
    return GraphChoice(False, f"auto: off, gradient checkpointing is on ({why})")


@dataclass
class GraphStats:
    """What the graphed loop captured; recorded in the adapter's metadata (`cuda_graphs`)."""

    loss_positions: int
    buckets: list[int] = field(default_factory=list)  # captured lengths, in capture order
    capture_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "captured": len(self.buckets),
            "buckets": sorted(self.buckets),
            "loss_positions": self.loss_positions,
            "capture_s": round(self.capture_s, 3),
        }


class StepGraphs:
    """One captured training step per length bucket, all in one memory pool.

    Only each bucket's input buffer (allocated outside the pool) and its loss output live across
    replays; the gradients and every activation are scratch within a replay, so the graphs may
    reuse each other's memory and replay in any order."""

    def __init__(self, setup: TrainSetup, optimizer: Any, positions: int, max_length: int):
        import torch

        self.setup, self.optimizer = setup, optimizer
        self.positions, self.max_length = positions, max_length
        self.pool = torch.cuda.graph_pool_handle()
        self.stream = torch.cuda.Stream()
        self.buffers: dict[int, Any] = {}
        self.graphs: dict[int, tuple[Any, Any]] = {}  # length -> (graph, its loss output)
        self.stats = GraphStats(positions)

    def load(self, example: Example) -> Batch:
        """The example copied into its bucket's input buffer (made on first use)."""
        import torch

        length = bucket_length(len(example.input_ids), self.max_length)
        if length not in self.buffers:
            self.buffers[length] = torch.empty(
                length + 2 * self.positions, dtype=torch.long, device="cuda"
            )
        row = static_row(example, self.setup.pad_id, length, self.positions)
        host = torch.tensor(row, dtype=torch.long).pin_memory()
        self.buffers[length].copy_(host, non_blocking=True)
        return static_views(self.buffers[length], length, self.positions, len(example.input_ids))

    def step(self, example: Example) -> Any:
        """One training step on `example` by replaying its bucket's graph (captured the first
        time the bucket is met); the loss output, valid until that graph's next replay."""
        batch = self.load(example)
        length = batch.inputs["input_ids"].shape[1]
        if length not in self.graphs:
            self.capture(batch)
        graph, loss = self.graphs[length]
        graph.replay()
        return loss

    def capture(self, batch: Batch) -> None:
        import torch

        trainable = self.setup.trainable
        length = batch.inputs["input_ids"].shape[1]
        started = time.perf_counter()
        for t in trainable:
            t.grad = None  # each graph allocates (owns) its gradients
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, pool=self.pool, stream=self.stream):
                loss = whole_step(self.setup, batch, self.optimizer)
        except Exception as e:  # any library that syncs with the host fails here
            raise TrainingFailed(
                f"capturing the training step as a CUDA graph ({length}-token bucket) failed: "
                f"{type(e).__name__}: {e}; set cuda_graphs: false to train without CUDA graphs"
            ) from e
        torch.cuda.synchronize()
        self.graphs[length] = (graph, loss.detach())
        self.stats.buckets.append(length)
        self.stats.capture_s += time.perf_counter() - started

    def release(self) -> None:
        """The graphs, their pool and the buffers go (the base may train again in this process)."""
        import torch

        for t in self.setup.trainable:
            t.grad = None
        self.graphs.clear()
        self.buffers.clear()
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def whole_step(setup: TrainSetup, batch: Batch, optimizer: Any) -> Any:
    """What a graph captures, and step 1 runs eagerly: forward, loss, backward, gradients
    clipped at norm 1, the AdamW step. The loss tensor."""
    import torch

    loss = completion_loss(setup.model, batch, fused=False)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(setup.trainable, 1.0)
    optimizer.step()
    return loss


def capturable_optimizer(trainable: Sequence[Any], p: TrainParams) -> tuple[Any, Any]:
    """Fused AdamW whose state and learning rate live on the GPU, and transformers' scheduler,
    which fills that learning-rate tensor in place at each `scheduler.step()`."""
    import torch

    lr = torch.tensor(p.lr, dtype=torch.float32, device="cuda")
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0, fused=True, capturable=True)
    return optimizer, tensor_lr_scheduler(optimizer, p)


def tensor_lr_scheduler(optimizer: Any, p: TrainParams) -> Any:
    """The run's scheduler (`lr_schedule`) over an optimiser whose lr is a tensor: torch's
    LRScheduler fill_()s that tensor in place. Its base rate is set to the float lr first (the
    scheduler would otherwise clone the tensor and compute each rate on the device), so each
    step is one fill_ from a Python float."""
    for group in optimizer.param_groups:
        group["initial_lr"] = p.lr
    return lr_schedule(optimizer, p)


def eager_first_step(setup: TrainSetup, graphs: StepGraphs, example: Example) -> Any:
    """Step 1, eagerly on the graphs' static batch and on their capture stream: it warms the
    libraries up (cuBLAS's workspace for that stream, autograd, lazy initialisations) and creates
    the optimiser's state, so that no capture allocates any of it."""
    import torch

    batch = graphs.load(example)
    graphs.stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(graphs.stream):
        loss = whole_step(setup, batch, graphs.optimizer)
        graphs.optimizer.zero_grad(set_to_none=True)
        loss = loss.detach()
    torch.cuda.current_stream().wait_stream(graphs.stream)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()  # the graphs' pool may take the eager step's memory
    return loss


def check_losses(losses: Any, start: int, end: int, lr: float) -> list[float]:
    """Steps start+1..end's losses, read from the device; the first non-finite one stops the
    run with its step number."""
    values = [float(v) for v in losses[start:end].tolist()]
    for i, v in enumerate(values):
        if not math.isfinite(v):
            raise TrainingFailed(
                f"loss is {v} at step {start + i + 1}; lower lr (now {lr}) or check the data"
            )
    return values


def graphed_loop(
    setup: TrainSetup,
    examples: Sequence[Example],
    p: TrainParams,
    *,
    progress: bool,
    on_step: Callable[[int, int], None] | None,
    snapshot_steps: Sequence[int] = (),
) -> LoopResult:
    """`sftgate.train.train_loop` with CUDA graphs: the same examples in the same order, the
    same optimiser, schedule and clipping; batch 1, no accumulation (`wanted_graphs`), examples
    padded to buckets up to params.max_length."""
    import torch

    optimizer, scheduler = capturable_optimizer(setup.trainable, p)
    graphs = StepGraphs(setup, optimizer, loss_positions(examples), p.max_length)
    batches = shuffled_batches(examples, 1, p.seed)
    losses = torch.zeros(p.max_steps, dtype=torch.float32, device="cuda")
    snapshots: dict[int, list[Any]] = {}
    tokens_seen, checked = 0, 0
    setup.model.train()
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    try:
        with step_progress(progress) as bar:
            task = bar.add_task("train", total=p.max_steps, loss="-")
            for step in range(1, p.max_steps + 1):
                (example,) = next(batches)
                if step == 1:
                    loss = eager_first_step(setup, graphs, example)
                else:
                    loss = graphs.step(example)
                losses[step - 1].copy_(loss)
                scheduler.step()
                tokens_seen += len(example.input_ids)
                if step in snapshot_steps:  # saved once training is over (save_checkpoints)
                    snapshots[step] = [t.detach().to("cpu", copy=True) for t in setup.trainable]
                if step % CHECK_EVERY == 0 or step == p.max_steps:
                    seen = check_losses(losses, checked, step, p.lr)
                    checked = step
                    bar.update(task, loss=f"{seen[-1]:.4f}")
                bar.update(task, advance=1)
                if on_step is not None:
                    on_step(step, p.max_steps)
        torch.cuda.synchronize()
        wall = time.perf_counter() - started
        peak = torch.cuda.max_memory_allocated()
    finally:
        graphs.release()
    return LoopResult(
        p,
        [round(v, 6) for v in losses.tolist()],
        tokens_seen,
        wall,
        peak,
        snapshots,
        graphs.stats.as_dict(),
    )
