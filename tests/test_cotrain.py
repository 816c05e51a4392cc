"""Co-training (benchmarks/cotrain.py, the alternative that bench_cotrain.py measures): members
trained together on one base train as they would alone - the same loss curves and adapters as
sftgate.train.train_loop gives each one by itself (CPU, fp32, no dropout) - leave the batch at
their own max_steps, fail alone, and on a GPU, graphed, agree with their graphed runs alone."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

# benchmarks/ is no package: its scripts import each other as top-level modules
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from cotrain import (  # noqa: E402
    Member,
    add_members,
    cotrain_loop,
    cotrainable,
    member_parameters,
    routed,
    row_losses,
)

from sftgate.graphed import bucket_length, loss_positions, static_batch
from sftgate.models import load_model
from sftgate.params import TrainParams
from sftgate.train import (
    LoopResult,
    TrainingFailed,
    TrainSetup,
    add_lora,
    completion_loss,
    segment_attention,
    train_loop,
)
from tests.test_eval import tiny_gemma3
from tests.test_train import random_examples

GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def alone(member: Member, device: str = "cpu", graphs: bool = False) -> tuple[LoopResult, list]:
    """The member trained by itself, as `sftgate train` would (a fresh tiny base)."""
    loaded = load_model("tiny-qwen3", device=device)
    with segment_attention(loaded.model):
        model = add_lora(loaded.model, member.params)
        setup = TrainSetup.of(model, loaded, True, "none")
        loop = train_loop(
            setup,
            member.examples,
            member.params,
            progress=False,
            on_step=None,
            snapshot_steps=member.snapshot_steps,
            cuda_graphs=graphs,
        )
    return loop, [t.detach().cpu() for t in setup.trainable]


def together(members: list[Member], device: str = "cpu", graphs: bool = False, poison=None):
    loaded = load_model("tiny-qwen3", device=device)
    model = add_members(loaded.model, members)
    if poison is not None:  # one member's adapter made non-finite
        with torch.no_grad():
            member_parameters(model, poison)[1].fill_(float("nan"))
    outcomes = cotrain_loop(
        model, members, loaded.tokenizer.pad_token_id, device, cuda_graphs=graphs
    )
    tensors = [[t.detach().cpu() for t in member_parameters(model, m.name)] for m in members]
    return outcomes, tensors


def three_members(dropout: float = 0.0) -> list[Member]:
    examples = random_examples([40, 64, 90, 130, 57], completion=14)
    shorter = random_examples([30, 50, 45], completion=9)  # another run's (shorter) examples
    return [
        Member(TrainParams(max_steps=7, lr=1e-3, seed=0, lora_dropout=dropout), examples, (3,)),
        Member(
            TrainParams(
                max_steps=4, lr=5e-4, seed=1, lr_scheduler="constant", lora_dropout=dropout
            ),
            shorter,
        ),
        Member(
            TrainParams(max_steps=6, lr=2e-3, seed=2, warmup_ratio=0.5, lora_dropout=dropout),
            examples,
            (2, 5),
        ),
    ]


def test_members_train_as_they_would_alone():
    """Each member's loss per step, final adapter and snapshots equal its run alone: its own
    steps, learning rate, schedule, seed (initialisation and order) and examples."""
    members = three_members()
    outcomes, tensors = together(members)
    for member, outcome, got in zip(members, outcomes, tensors):
        assert isinstance(outcome, LoopResult)
        want, want_tensors = alone(member)
        assert len(outcome.losses) == member.params.max_steps
        assert outcome.losses == pytest.approx(want.losses, rel=1e-4, abs=1e-5)
        assert outcome.tokens_seen == want.tokens_seen
        assert len(got) == len(want_tensors) > 0
        for g, w in zip(got, want_tensors):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)
        assert sorted(outcome.snapshots) == sorted(want.snapshots) == sorted(member.snapshot_steps)
        for step, snap in outcome.snapshots.items():
            for g, w in zip(snap, want.snapshots[step]):
                torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)
    # The members started from different initialisations (their seeds) and moved apart.
    assert not torch.equal(tensors[0][0], tensors[1][0])


def test_a_member_that_fails_stops_alone():
    """A member whose loss is not finite fails with its step; its NaNs reach neither the other
    rows nor the other adapters, which finish as they would alone."""
    members = three_members()
    outcomes, _ = together(members, poison="m1")
    assert isinstance(outcomes[1], TrainingFailed)
    assert "loss is nan at step 1;" in str(outcomes[1]) and "lower lr" in str(outcomes[1])
    for k in (0, 2):
        assert isinstance(outcomes[k], LoopResult)
        want, _ = alone(members[k])
        assert outcomes[k].losses == pytest.approx(want.losses, rel=1e-4, abs=1e-5)


def test_row_losses_are_each_rows_completion_loss():
    """K rows of different examples (and completions at different positions), each through its
    own adapter: row k's loss is completion_loss of example k alone through adapter k - on Qwen3
    and on Gemma 3 (sliding window, its own output layer)."""
    for model, pad_id, vocab in (
        (load_model("tiny-qwen3").model, 0, 200),
        (tiny_gemma3(window=16), 0, 128),
    ):
        examples = random_examples([40, 75, 100], completion=17, vocab=vocab)
        members = [Member(TrainParams(seed=s, lora_dropout=0.0), examples) for s in (0, 1, 2)]
        peft_model = add_members(model, members)
        with torch.no_grad():  # B starts at zero: give every adapter an effect of its own
            for i, t in enumerate(p for n, p in peft_model.named_parameters() if "lora_B" in n):
                t.normal_(0, 0.05, generator=torch.Generator().manual_seed(i))
        peft_model.train()
        positions = loss_positions(examples)
        length = bucket_length(100, 1024)
        rows = [
            static_batch(e, pad_id, length=length, positions=positions, device="cpu")
            for e in examples
        ]
        ids = torch.cat([r.inputs["input_ids"] for r in rows])
        keep = torch.stack([r.keep for r in rows])
        targets = torch.cat([r.targets for r in rows])
        with routed(peft_model, [m.name for m in members]):
            got = row_losses(peft_model, ids, keep, targets)
        for k, member in enumerate(members):
            peft_model.set_adapter(member.name)
            want = completion_loss(peft_model, rows[k], fused=False)
            assert float(got[k].detach()) == pytest.approx(float(want.detach()), rel=1e-5)
        assert len({round(float(v), 4) for v in got.detach()}) == 3


def test_cotrainable_names_what_differs():
    p = TrainParams()
    assert cotrainable([p, p.model_copy(update={"lr": 1e-4, "max_steps": 300})]) is None
    assert "max_length" not in (cotrainable([p, p.model_copy(update={"max_length": 1536})]) or "")
    assert "batch_size 2" in cotrainable([p, p.model_copy(update={"batch_size": 2})])
    assert cotrainable([p, p.model_copy(update={"lora_r": 8})]) == "lora_r differs ([8, 16])"
    with pytest.raises(ValueError, match="lora_dropout differs"):
        add_members(
            load_model("tiny-qwen3").model,
            [Member(p, []), Member(p.model_copy(update={"lora_dropout": 0.1}), [])],
        )


@pytest.mark.gpu
@GPU
def test_graphed_co_training_matches_the_runs_alone_on_cuda():
    """On a GPU the co-step is replayed as CUDA graphs (buckets x members still training):
    the members' loss curves agree with their graphed runs alone (fp32 tiny model)."""
    members = three_members()
    outcomes, _ = together(members, device="cuda", graphs=True)
    for member, outcome in zip(members, outcomes):
        assert isinstance(outcome, LoopResult)
        want, _ = alone(member, device="cuda", graphs=True)
        assert outcome.losses == pytest.approx(want.losses, rel=1e-3, abs=1e-4)
        assert outcome.graphs["captured"] >= 2
