"""`sftgate prompt`: what a study feeds the model for one question, exactly.

For a gate or full-set question: the evaluation prompt (`render_prompt` over the question's frozen
passages) and its token ids (`encode_prompt`), as `sftgate eval` builds them. For a training
question: the example `sftgate.train.build_example` makes within max_length (passages dropped
from the end if it is too long), split into the prompt and the completion target (the reference
as eval JSON v2 and the end-of-turn token). The tokenizer is the study model's own
(`load_tokenizer`, the one training and evaluation load), not an approximation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sftgate.errors import InputError, Problem
from sftgate.models import load_tokenizer
from sftgate.prompt import encode_prompt, load_prompt, render_prompt
from sftgate.reach import split_passages
from sftgate.search.inputs import SPLITS, pin_inputs, prepare_contexts
from sftgate.search.study import load_study_config
from sftgate.train import build_example


@dataclass(frozen=True)
class Rendered:
    """One question's prompt (and, for training, its completion target), text and token ids."""

    study: str
    split: str  # train, gate or full
    in_sets: list[str]  # every set of the study that holds the question id
    question_id: str
    model_id: str
    prompt_version: str
    prompt_sha256: str
    index_version: str
    prompt: str  # the exact text the tokenizer encodes: the chat template applied
    prompt_token_ids: list[int]
    passages: list[str]  # the source_path of each passage in the prompt
    passages_retrieved: int  # the question's frozen passages (training may keep fewer)
    max_length: int | None = None  # training only
    completion: str | None = None  # training only: the target, end-of-turn token included
    completion_token_ids: list[int] | None = None
    shortened: bool = False  # training only: passages dropped or cut to fit max_length

    def to_json(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "prompt_tokens": len(self.prompt_token_ids),
            "completion_tokens": None
            if self.completion_token_ids is None
            else len(self.completion_token_ids),
        }


def which_split(file: str, question_id: str, split: str | None, holding: list[str]) -> str:
    """The set asked for, or the first that holds the question; refused if it is not there."""
    found = split or (holding[0] if holding else None)
    if found is None or found not in holding:
        where = f"the {split} set" if split else "any of the study's three sets"
        hint = f" (it is in: {', '.join(holding)})" if holding else ""
        raise InputError(
            Problem(
                file,
                question_id,
                "--question",
                f"no question with this id in {where}{hint}",
                "give an id from the study's question sets",
            )
        )
    return found


def study_prompt(
    config_path: str | Path,
    question_id: str,
    split: str | None = None,
    max_length: int | None = None,
) -> Rendered:
    """The prompt the study feeds the model for `question_id` in `split` (default: the first of
    train, gate, full that holds it); training examples within `max_length` (default round 0's).
    The study's index and contexts are built or reused first, as `sftgate ceiling` does."""
    config = load_study_config(config_path)
    inputs = pin_inputs(config)
    holding = [s for s in SPLITS if question_id in inputs.sets[s].by_id]
    split = which_split(str(config_path), question_id, split, holding)
    prepare_contexts(config, inputs)  # the study's own index and contexts, built or reused
    qs = inputs.sets[split]
    question = qs.by_id[question_id]
    passages = split_passages({split: qs}, {split: inputs.contexts[split]})[split][question_id]
    template = load_prompt(config.prompt)
    tokenizer = load_tokenizer(config.model)
    common: dict[str, Any] = {
        "study": config.name,
        "split": split,
        "in_sets": holding,
        "question_id": question_id,
        "model_id": config.model,
        "prompt_version": template.version,
        "prompt_sha256": template.sha256,
        "index_version": inputs.pins["index_version"],
        "passages_retrieved": len(passages),
    }
    if split != "train":
        return Rendered(
            **common,
            prompt=render_prompt(tokenizer, template, question.question, passages),
            prompt_token_ids=encode_prompt(tokenizer, template, question.question, passages),
            passages=[p.source_path for p in passages],
        )
    max_length = max_length or config.policy.round0.max_length
    target_format = config.policy.round0.target_format
    example = build_example(tokenizer, template, question, passages, max_length, target_format)
    if example is None:
        raise InputError(
            Problem(
                qs.path,
                question_id,
                "max_length",
                f"the example does not fit in max_length={max_length} tokens even without "
                "passages: training leaves it out",
                "pass a larger --max-length",
            )
        )
    completion_ids = example.input_ids[example.prompt_len :]
    return Rendered(
        **common,
        prompt=render_prompt(tokenizer, template, question.question, example.passages),
        prompt_token_ids=example.input_ids[: example.prompt_len],
        passages=[p.source_path for p in example.passages],
        max_length=max_length,
        completion=tokenizer.decode(completion_ids, skip_special_tokens=False),
        completion_token_ids=completion_ids,
        shortened=example.shortened,
    )
