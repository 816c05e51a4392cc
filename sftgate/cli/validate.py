"""`sftgate validate CONFIG`: check that a config file can run, without running anything.

Validate means runnable: the config's keys and values, every path it names (preflight), the
contents of every input (prompt, question sets, contexts, corpus: the same loaders the run
uses), and that round 0's max_length fits at least one training example with the model's
tokenizer when that tokenizer is available offline. Nothing is written.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sftgate.cli.console import stdout_console
from sftgate.config import StrictModel, load_config, read_yaml
from sftgate.contexts import load_contexts, resolve_passages
from sftgate.errors import InputError, MismatchError, Problem
from sftgate.preflight import (
    check_max_length,
    eval_problems,
    require,
    study_problems,
    train_problems,
)
from sftgate.prompt import load_prompt
from sftgate.questions import load_questions
from sftgate.search.registry import Registry, check_pins, default_path

if TYPE_CHECKING:
    from sftgate.search.study import StudyConfig

KINDS = ("eval", "study", "train")


@dataclass(frozen=True)
class Validated:
    config: StrictModel
    max_length_checked: bool  # False: the model's tokenizer is not available offline


def _study(path: str) -> Validated:
    from sftgate.search.inputs import pin_inputs
    from sftgate.search.study import load_study_config

    config = load_study_config(path)
    require(study_problems(config, path))
    inputs = pin_inputs(config)
    max_length = config.policy.round0.max_length
    checked = check_max_length(
        config.model,
        load_prompt(config.prompt),
        inputs.sets["train"],
        max_length,
        path,
        "policy.round0.max_length",
    )
    resumable(config, inputs.pins, path)
    return Validated(config, checked)


def resumable(config: StudyConfig, pins: dict[str, str], path: str) -> None:
    """A study of this name already in the registry must have been created with these pins
    (the search would refuse it). An absent registry is not created."""
    registry = Path(config.registry) if config.registry else default_path()
    if not registry.exists():
        return
    reg = Registry(registry)
    try:
        existing = reg.study(config.name)
        if existing is not None:
            check_pins(existing, pins)
    except MismatchError as e:
        raise InputError(Problem(path, "", "name", str(e))) from None
    finally:
        reg.close()


def _train(path: str) -> Validated:
    from sftgate.train import TrainConfig

    config = load_config(TrainConfig, path)
    require(train_problems(config, path))
    template = load_prompt(config.prompt)
    questions = load_questions(config.questions)
    resolve_passages(questions, load_contexts(config.contexts) if config.contexts else None)
    checked = check_max_length(
        config.model, template, questions, config.params.max_length, path, "params.max_length"
    )
    return Validated(config, checked)


def _eval(path: str) -> Validated:
    from sftgate.evaluate import EvalConfig

    config = load_config(EvalConfig, path)
    require(eval_problems(config, path))
    load_prompt(config.prompt)
    questions = load_questions(config.questions)
    resolve_passages(questions, load_contexts(config.contexts) if config.contexts else None)
    return Validated(config, True)


def validate(path: str) -> Validated:
    kind: Any = read_yaml(path).get("kind")
    if kind not in KINDS:
        raise InputError(
            Problem(
                path,
                "",
                "kind",
                f"unknown or missing config kind {kind!r}",
                f"start the file with 'kind: ' one of {', '.join(KINDS)}",
            )
        )
    return {"study": _study, "train": _train, "eval": _eval}[kind](path)


def validate_file(path: str) -> StrictModel:
    return validate(path).config


def run(args: argparse.Namespace) -> int:
    result = validate(args.config)
    kind = result.config.kind  # type: ignore[attr-defined]
    note = (
        ""
        if result.max_length_checked
        else ("; max_length not checked against the tokenizer (not available offline)")
    )
    stdout_console(highlight=False).print(
        f"[green]ok[/green] {args.config}: a runnable '{kind}' config: keys, paths and inputs "
        f"checked{note}"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "validate",
        help="check that a config file can run: keys and values, every path, the inputs' "
        "contents, max_length against the tokenizer (nothing is written)",
    )
    p.add_argument("config", help="a YAML config file (its top-level `kind:` says which)")
    p.set_defaults(func=run)
