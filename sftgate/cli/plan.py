"""`sftgate plan --history HISTORY.json`: the planner's next step for a scripted history (a dry run)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pydantic import ValidationError

from sftgate.config import validation_problems
from sftgate.errors import InputError, Problem
from sftgate.search.planner import History, Policy, Thresholds, plan_next


def run(args: argparse.Namespace) -> int:
    try:
        raw = json.loads(Path(args.history).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(
            Problem(args.history, "", "", f"cannot read the history: {e}", "give a JSON file")
        ) from None
    if not isinstance(raw, dict):
        raise InputError(
            Problem(args.history, "", "", "the history must be a JSON object with 'rounds'", "")
        )
    thresholds = raw.pop("thresholds", {}) or {}
    policy_raw = raw.pop("policy", {}) or {}
    try:
        history = History.model_validate(raw)
        if thresholds:
            policy_raw = {**policy_raw, "thresholds": Thresholds.model_validate(thresholds)}
        policy = Policy.model_validate(policy_raw)
    except ValidationError as e:
        prefix = "thresholds" if "rounds" not in str(e) and thresholds else ""
        raise InputError(validation_problems(e, args.history, prefix=prefix)) from None
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
