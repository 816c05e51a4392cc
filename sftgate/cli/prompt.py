"""`sftgate prompt --config STUDY.yaml --question ID [--set train|gate|full]`."""

from __future__ import annotations

import argparse
import json
import sys

from rich import get_console

from sftgate.hashing import short
from sftgate.rendered import Rendered, study_prompt
from sftgate.search.inputs import SPLITS


def print_rendered(r: Rendered) -> None:
    """The header, then the prompt (and completion) verbatim between marker lines."""
    also = [s for s in r.in_sets if s != r.split]
    fit = f", max_length {r.max_length}" + (": shortened to fit" if r.shortened else "")
    lines = [
        f"study {r.study}: question {r.question_id} of the {r.split} set"
        + (f" (also in: {', '.join(also)})" if also else ""),
        f"model {r.model_id}; prompt {r.prompt_version} (sha256 {short(r.prompt_sha256)}); "
        f"index {short(r.index_version)}",
        f"passages in the prompt: {len(r.passages)} of {r.passages_retrieved}"
        + (fit if r.max_length is not None else "")
        + (f" ({', '.join(r.passages)})" if r.passages else ""),
        f"--- prompt: {len(r.prompt_token_ids)} tokens ---",
    ]
    out = sys.stdout
    out.write("\n".join(lines) + "\n" + r.prompt + ("" if r.prompt.endswith("\n") else "\n"))
    if r.completion is not None and r.completion_token_ids is not None:
        out.write(f"--- completion target: {len(r.completion_token_ids)} tokens ---\n")
        out.write(r.completion + "\n")
    out.write("--- end ---\n")


def run(args: argparse.Namespace) -> int:
    get_console().stderr = True  # index building messages stay off the prompt
    rendered = study_prompt(args.config, args.question, args.set, args.max_length)
    if args.json:
        print(json.dumps(rendered.to_json(), ensure_ascii=False, indent=2))
    else:
        print_rendered(rendered)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prompt",
        help="the exact prompt (chat template applied) a study feeds the model for one question, "
        "and its token count; for a training question also the completion target",
    )
    p.add_argument("--config", required=True, help="study YAML (`kind: study`)")
    p.add_argument("--question", required=True, metavar="ID", help="the question's id")
    p.add_argument(
        "--set",
        choices=SPLITS,
        help="train: the training example (prompt + completion within max_length); gate, full: "
        "the evaluation prompt (default: the first of train, gate, full that holds the id)",
    )
    p.add_argument(
        "--max-length",
        type=int,
        help="training: the run's max_length (default: the study's policy.round0.max_length)",
    )
    p.add_argument(
        "--json", action="store_true", help="print it as JSON, with the token ids (for scripts)"
    )
    p.set_defaults(func=run)
