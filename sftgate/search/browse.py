"""The failure browser of a study (`sftgate.browser`), from the registry and the study's files.

The scores are the registry's (per question); the question texts, the passages and the raw
outputs come from the files the runs read and wrote: the gate set, its frozen contexts file, and
each run's `predictions.jsonl`. A file that is gone or no longer matches the study's pins leaves
the browser out, with the reason, rather than showing text the model did not see. The study's
own copies of its inputs (WORKDIR/inputs) are read when they are there: the runs read those.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from sftgate.artifacts import PREDICTIONS
from sftgate.browser import RunView, write_browser
from sftgate.contexts import Contexts, load_contexts, resolve_passages
from sftgate.errors import SftgateError
from sftgate.questions import load_questions
from sftgate.scoring import load_predictions
from sftgate.search.inputs import pinned_copy
from sftgate.search.registry import Registry, Run, RunState, Study
from sftgate.search.study import StudyConfig

PAGE = "failures.html"


def run_label(run: Run) -> str:
    p = run.params
    return f"round {run.round}: {p.max_steps} steps, lr {p.lr:g}, max_length {p.max_length}, r {p.lora_r}"


def the_copy(config: StudyConfig, key: str, original: str) -> Path:
    """The file the runs read: the study's pinned copy, or the original for a study recorded
    before sftgate kept copies."""
    copy = pinned_copy(config, key, original)
    return copy if copy.exists() else Path(original)


def write_study_browser(
    reg: Registry, study: Study, out_dir: Path, gate_score: float, first: str | None
) -> Path:
    """OUT_DIR/failures.html for the study's evaluated runs. Raises SftgateError saying why it
    cannot be written (no evaluated run, a gate set or contexts file gone or changed)."""
    runs = [r for r in reg.runs(study.id) if r.state is RunState.DONE]
    if not runs:
        raise SftgateError("no run has been evaluated yet")
    try:
        config = StudyConfig.recorded(study.config)
    except ValidationError as e:
        raise SftgateError(
            f"the study's recorded config does not load ({e.error_count()} errors)"
        ) from None
    try:
        questions = load_questions(the_copy(config, "gate_questions", config.gate_questions))
        if questions.version != study.pins["gate_set_version"]:
            raise SftgateError(f"{config.gate_questions} changed since the study ran")
        contexts: Contexts | None = None  # None: the items carry their passages
        if config.retrieval is not None:
            contexts = load_contexts(config.work / "contexts_gate.jsonl")
        elif config.contexts is not None:
            contexts = load_contexts(the_copy(config, "contexts_gate", config.contexts.gate))
        passages, index_version = resolve_passages(questions, contexts)
        if index_version != study.pins["index_version"]:
            raise SftgateError("the gate set's contexts file comes from another index")
        views = [
            RunView(
                r.id,
                run_label(r),
                reg.question_scores(r.id, "gate"),
                load_predictions(Path(str(r.gate_dir)) / PREDICTIONS, questions),
            )
            for r in runs
        ]
    except SftgateError as e:  # InputError and MismatchError too: a file gone, moved or edited
        raise SftgateError(str(e).splitlines()[0]) from None
    title = f"sftgate study {study.name}: gate questions"
    return write_browser(out_dir / PAGE, title, list(questions), passages, views, gate_score, first)
