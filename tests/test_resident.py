"""A resident base model (sftgate/resident.py): runs in one worker, one model load, give the same
adapter bytes and the same predictions as the same runs each in a fresh process; a run leaves the
base as it found it. tiny-qwen3 on the CPU, for real."""

from __future__ import annotations

import multiprocessing
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from sftgate.evaluate import DecodeSettings, EvalConfig, evaluate
from sftgate.params import TrainParams
from sftgate.resident import ResidentBase
from sftgate.search.driver import Specs
from sftgate.search.inputs import pin_inputs, prepare_contexts
from sftgate.search.runner import RunOutcome, RunSpec, execute_run
from sftgate.search.study import load_study_config
from sftgate.train import TrainConfig, train
from tests.conftest import PROMPT_PATH
from tests.test_eval import question_file
from tests.test_search import make_project

DECODE = {"decode.max_new_tokens": 8, "decode.merge_check_questions": 2}


def two_specs(root: Path, where: str, quantization: str) -> list[RunSpec]:
    """Two different runs of one study (other steps, lr, rank and dropout; one with a
    checkpoint), their folders under `where`."""
    if not (root / "study.yaml").exists():
        make_project(root)
    config = load_study_config(root / "study.yaml", {**DECODE, "quantization": quantization})
    inputs = pin_inputs(config)
    prepare_contexts(config, inputs)
    specs = Specs(config, inputs, progress=False)
    first = config.policy.round0.model_copy(update={"max_steps": 3, "lora_dropout": 0.1})
    second = config.policy.round0.model_copy(
        update={"max_steps": 2, "lr": 1e-3, "lora_r": 8, "lora_alpha": 16, "seed": 7}
    )
    runs = [
        replace(specs.spec("r-a", first, "gate"), checkpoint_steps=(2,)),
        specs.spec("r-b", second, "gate"),
    ]
    return [replace(s, run_dir=str(root / where / s.run_id)) for s in runs]


def run_files(spec: RunSpec) -> dict[str, bytes]:
    """The bytes that must not depend on where the run ran: the adapter's tensors (and each
    checkpoint's), the predictions and scores of each evaluation."""
    run = Path(spec.run_dir)
    names = ["adapter_model.safetensors", "predictions.jsonl", "per_question.jsonl", "metrics.json"]
    files = sorted(p for name in names for p in run.rglob(name))
    return {str(p.relative_to(run)): p.read_bytes() for p in files}


def comparable_meta(outcome: RunOutcome) -> dict[str, Any]:
    assert outcome.train_meta is not None and outcome.eval_meta is not None
    return {
        "loss_per_step": outcome.train_meta["loss_per_step"],
        "merge_check": outcome.eval_meta["merge_check"],
        "merged": outcome.eval_meta["merged"],
    }


@pytest.mark.slow
@pytest.mark.parametrize("quantization", ["none", "4bit"])
def test_runs_in_one_resident_worker_equal_runs_in_fresh_processes(tmp_path, quantization):
    base = ResidentBase()
    resident_specs = two_specs(tmp_path, "resident", quantization)
    resident = [execute_run(s, base=base) for s in resident_specs]
    assert [o.status for o in resident] == ["done", "done"], [o.failure for o in resident]
    assert base.loads == 1  # one model load for both runs: training and every evaluation
    assert base.tokenisations == 1  # both runs train on the same examples, tokenised once
    timings = resident[1].eval_meta["timings"]  # type: ignore[index]
    assert timings["model_load_s"] < 0.05 and {"merge_s", "decode_s", "scoring_s"} <= set(timings)

    fresh_specs = two_specs(tmp_path, "fresh", quantization)
    with multiprocessing.get_context("spawn").Pool(2, maxtasksperchild=1) as pool:
        fresh = pool.map(execute_run, fresh_specs, chunksize=1)  # each run in its own process
    assert [o.status for o in fresh] == ["done", "done"], [o.failure for o in fresh]

    for r, f, spec_r, spec_f in zip(resident, fresh, resident_specs, fresh_specs):
        files_r, files_f = run_files(spec_r), run_files(spec_f)
        assert {"adapter/adapter_model.safetensors", "gate/predictions.jsonl"} <= files_r.keys()
        assert files_r.keys() == files_f.keys()
        for name in files_r:
            assert files_r[name] == files_f[name], f"{spec_r.run_id}: {name} differs"
        assert comparable_meta(r) == comparable_meta(f)
        assert r.eval_meta["merge_check"]["questions"] == 2  # type: ignore[index]
    # the checkpoint was evaluated too, and the two runs differ (the second repeated nothing)
    assert "adapter/checkpoints/step-2/adapter_model.safetensors" in run_files(fresh_specs[0])
    assert "gate-step-2/predictions.jsonl" in run_files(fresh_specs[0])
    adapters = [run_files(s)["adapter/adapter_model.safetensors"] for s in fresh_specs]
    assert adapters[0] != adapters[1]


def fingerprint(model: Any) -> dict[str, Any]:
    """What a run could leave behind on a model: its tensors (bit for bit), its module tree
    (types, attributes, hooks, train mode, checkpointing), requires_grad flags and config."""
    import torch

    def bits(t: Any) -> tuple[str, tuple[int, ...], bytes]:
        raw = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
        return str(t.dtype), tuple(t.shape), raw.numpy().tobytes()

    return {
        "tensors": {k: bits(v) for k, v in model.state_dict().items()},
        "modules": [
            (
                name,
                type(m).__name__,
                sorted(vars(m)),
                m.training,
                len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks),
                getattr(m, "gradient_checkpointing", None),
            )
            for name, m in model.named_modules()
        ],
        "requires_grad": [(n, p.requires_grad) for n, p in model.named_parameters()],
        "config": model.config.to_dict(),
    }


@pytest.mark.slow
def test_a_run_leaves_the_base_as_it_found_it(tmp_path):
    """Training (gradient checkpointing on, dropout, a checkpoint) and evaluating unmerged and
    merged (with the merge check) on a resident base: the base's tensors, modules, hooks, flags
    and config are as loaded; after a training run stopped midway too."""
    questions = str(question_file(tmp_path))  # items with their passages
    base = ResidentBase()
    loaded = base.get("tiny-qwen3")
    before = fingerprint(loaded.model)
    params = TrainParams(max_steps=3, lr=1e-2, max_length=4096)
    cfg = TrainConfig(
        model="tiny-qwen3",
        questions=questions,
        prompt=str(PROMPT_PATH),
        out=str(tmp_path / "adapter"),
        gradient_checkpointing=True,
        params=params,
        checkpoint_steps=[1],
    )
    adapter = train(cfg, progress=False, base=base).adapter_dir
    assert fingerprint(loaded.model) == before
    for merge in (False, True):
        evaluate(
            EvalConfig(
                model="tiny-qwen3",
                adapter=str(adapter),
                questions=questions,
                prompt=str(PROMPT_PATH),
                out=str(tmp_path / f"eval-{merge}"),
                decode=DecodeSettings(max_new_tokens=4, merge=merge, merge_check_questions=2),
            ),
            progress=False,
            base=base,
        )
        assert fingerprint(loaded.model) == before

    def interrupted(step: int, of: int) -> None:
        if step == 2:
            raise KeyboardInterrupt(f"stopped at step {step}")  # mid-loop, LoRA and all on the base

    with pytest.raises(KeyboardInterrupt, match="step 2"):
        train(
            cfg.model_copy(update={"out": str(tmp_path / "stopped")}),
            progress=False,
            on_step=interrupted,
            base=base,
        )
    assert fingerprint(loaded.model) == before
    assert base.loads == 1 and base.loaded is loaded


def test_a_resident_base_tokenises_a_training_set_once(tmp_path):
    """Runs on one base whose examples come from the same files and settings get the examples
    the first run tokenised; another max_length, another target format or changed file bytes
    tokenise again; replacing the base forgets them all."""
    from sftgate.models import load_tokenizer
    from sftgate.train import read_inputs, tokenize_examples, training_examples
    from tests.test_train import config

    base = ResidentBase()
    tokenizer = load_tokenizer("tiny-qwen3")
    first = config(tmp_path, max_length=4096)
    inputs = read_inputs(first)
    data = training_examples(first, tokenizer, inputs, base)
    other_steps = first.model_copy(update={"params": first.params.model_copy(update={"lr": 1e-3})})
    assert training_examples(other_steps, tokenizer, inputs, base) is data
    assert base.tokenisations == 1
    fresh = tokenize_examples(
        tokenizer, inputs.template, inputs.questions.questions, inputs.passages, 4096
    )
    assert [(e.id, e.input_ids, e.prompt_len) for e in data.examples] == [
        (e.id, e.input_ids, e.prompt_len) for e in fresh.examples
    ]

    shorter = first.model_copy(
        update={"params": first.params.model_copy(update={"max_length": 2048})}
    )
    answer_last = first.model_copy(
        update={"params": first.params.model_copy(update={"target_format": "answer_last"})}
    )
    for changed in (shorter, answer_last):
        assert training_examples(changed, tokenizer, inputs, base) is not data
    assert base.tokenisations == 3
    Path(first.questions).write_bytes(Path(first.questions).read_bytes() + b"\n")
    assert training_examples(first, tokenizer, read_inputs(first), base) is not data
    assert base.tokenisations == 4
    base.drop()
    assert not base.kept
