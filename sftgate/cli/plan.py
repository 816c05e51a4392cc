"""`sftgate plan --history HISTORY.json`: the planner's next step for a scripted history (a dry run).

The history file is checked before the planner sees it: types, rounds numbered 0, 1, 2, ... in
order, unique run ids, the seed's seven parameters on every run, and the metrics the planner
reads present and finite on every finished run (an absent metric is never read as 0, a NaN
score never chosen as the best).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from sftgate.config import validation_problems
from sftgate.errors import InputError, Problem
from sftgate.params import SEED_PARAM_NAMES
from sftgate.questions import read_text
from sftgate.search.planner import History, Policy, RunRecord, Thresholds, plan_next

# What the planner reads from a finished run's metrics.
PLANNER_METRICS = (
    "eval_score_avg",
    "schema_pass_rate",
    "grounding_avg",
    "detailed_description_f1",
    "original_evidence",
)


def run_problems(run: RunRecord, raw: dict[str, Any], file: str, item: str) -> list[Problem]:
    """The seed's parameters given (not filled in with round 0's defaults), metrics finite
    numbers (not true/false, which pydantic would read as 1 and 0)."""
    problems = []
    missing = [k for k in SEED_PARAM_NAMES if k not in raw["params"]]
    if missing:
        problems.append(
            Problem(file, item, f"params.{missing[0]}", "missing", "give all seven seed parameters")
        )
    for key in PLANNER_METRICS:
        value = (raw.get("metrics") or {}).get(key)
        if isinstance(value, bool) or (
            run.metrics and not math.isfinite(getattr(run.metrics, key))
        ):
            problems.append(
                Problem(file, item, f"metrics.{key}", f"must be a finite number, got {value!r}", "")
            )
    for qid, score in (run.per_question or {}).items():
        if not math.isfinite(score):
            problems.append(
                Problem(file, item, f"per_question.{qid}", f"must be finite, got {score!r}", "")
            )
    return problems


def history_problems(history: History, raw: dict[str, Any], file: str) -> list[Problem]:
    """What pydantic's types do not say: order, unique ids, parameters, finite metrics."""
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    misnumbered = False
    for i, r in enumerate(history.rounds):
        if r.round != i and not misnumbered:  # the first one out of place says it
            misnumbered = True
            problems.append(
                Problem(
                    file,
                    f"round {r.round}",
                    f"rounds[{i}].round",
                    f"rounds must be numbered 0, 1, 2, ... in order; expected {i}",
                    "order the rounds and number them from 0",
                )
            )
        if not r.runs:
            problems.append(
                Problem(file, f"round {r.round}", f"rounds[{i}].runs", "no runs", "add its runs")
            )
        for j, run in enumerate(r.runs):
            item = f"round {r.round}, run {run.run_id!r}"
            if run.run_id in seen:
                problems.append(
                    Problem(
                        file,
                        item,
                        "run_id",
                        f"duplicate run id (also in round {seen[run.run_id]})",
                        "give every run its own id",
                    )
                )
            seen.setdefault(run.run_id, r.round)
            problems += run_problems(run, raw["rounds"][i]["runs"][j], file, item)
    done = {run.run_id for r in history.rounds for run in r.runs if run.status == "done"}
    if history.full_eval_run is not None and history.full_eval_run not in done:
        problems.append(
            Problem(
                file, "", "full_eval_run", f"{history.full_eval_run!r} is not a finished run", ""
            )
        )
    return problems


def load_history(path: str) -> tuple[History, Policy]:
    try:
        raw = json.loads(read_text(Path(path)))
    except json.JSONDecodeError as e:
        raise InputError(
            Problem(path, "", "", f"not valid JSON: {e.msg} (line {e.lineno})", "fix the syntax")
        ) from None
    if not isinstance(raw, dict):
        raise InputError(
            Problem(path, "", "", "the history must be a JSON object", 'give {"rounds": [...]}')
        )
    thresholds = raw.pop("thresholds", None) or {}
    policy_raw = raw.pop("policy", None) or {}
    try:
        history = History.model_validate(raw)
    except ValidationError as e:
        raise InputError(validation_problems(e, path, data=raw)) from None
    try:
        given = Thresholds.model_validate(thresholds) if thresholds else None
    except ValidationError as e:
        raise InputError(
            validation_problems(e, path, prefix="thresholds", data=thresholds)
        ) from None
    if given is not None and isinstance(policy_raw, dict):
        policy_raw = {**policy_raw, "thresholds": given}
    try:
        policy = Policy.model_validate(policy_raw)
    except ValidationError as e:
        raise InputError(validation_problems(e, path, prefix="policy", data=policy_raw)) from None
    problems = history_problems(history, raw, path)
    if problems:
        raise InputError(problems)
    return history, policy


def run(args: argparse.Namespace) -> int:
    history, policy = load_history(args.history)
    print(plan_next(history, policy).model_dump_json(indent=2))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="dry run: the planner's next step for a history JSON")
    p.add_argument(
        "--history",
        required=True,
        help='{"rounds": [{"round": 0, "runs": [...]}], "thresholds": {...}, '
        '"policy": {"kind": "adaptive", ...}}',
    )
    p.set_defaults(func=run)
