"""`sftgate report`: a study's rounds, runs, decisions and verdict, from the registry alone.

The report is a list of blocks (heading, text, table, image) rendered to Markdown or HTML, with
matplotlib plots written beside it.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sftgate.errors import InputError, Problem
from sftgate.fsutil import atomic_write_text
from sftgate.params import SEED_PARAM_NAMES
from sftgate.planner import Policy
from sftgate.registry import PIN_KEYS, Registry
from sftgate.tiny import TINY_MODEL_ID

TINY_MODEL_NOTE = (
    "**This study used tiny-qwen3, a random 2-layer model built in code.** It demonstrates the "
    "search's flow (rounds, decisions, registry, report) on a CPU with scaled-down steps. A random "
    "tiny model is not expected to pass the gate, and its numbers say nothing about Qwen3-4B."
)


@dataclass(frozen=True)
class Block:
    kind: str  # "h1" | "h2" | "p" | "list" | "table" | "image"
    content: Any


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def build_blocks(reg: Registry, study_name: str, image_dir: Path | None) -> list[Block]:
    study = reg.study(study_name)
    if study is None:
        names = ", ".join(s.name for s in reg.studies()) or "none"
        raise InputError(
            Problem(str(reg.path), study_name, "study", "no such study", f"known studies: {names}")
        )
    runs = reg.runs(study.id)
    decisions = reg.decisions(study.id)
    thresholds = Policy.model_validate(study.config.get("policy", {})).thresholds
    gate_score, gate_schema = thresholds.gate_score, thresholds.gate_schema
    blocks = [Block("h1", f"sftgate study: {study.name}")]
    if study.pins["model_id"] == TINY_MODEL_ID:
        blocks.append(Block("p", TINY_MODEL_NOTE))
    note = study.config.get("note")
    if note:
        blocks.append(Block("p", f"**Note.** {note}"))
    final = decisions[-1] if decisions else None
    best_id = final.get("selected_run") if final else None
    best = next((r for r in runs if r["id"] == best_id), None)
    passed = (
        best is not None
        and (best["eval_score_avg"] or 0) >= gate_score
        and (best["schema_pass_rate"] or 0) >= gate_schema
    )
    verdict = "**Gate: PASSED**" if passed else "**Gate: not passed**"
    verdict += (
        f" (eval_score_avg >= {gate_score} and schema_pass_rate >= {gate_schema} on the gate set)."
    )
    if best is not None:
        lo, hi = best["eval_score_ci_low"], best["eval_score_ci_high"]
        verdict += f" Selected run: `{best['id']}`, eval_score_avg {fmt(best['eval_score_avg'], 2)} (95% CI {fmt(lo, 2)}–{fmt(hi, 2)}), schema_pass_rate {fmt(best['schema_pass_rate'])}."
    blocks.append(Block("p", verdict + f" Study status: {study.status}."))
    for r in runs:
        if r["full_status"] == "failed":
            blocks.append(
                Block(
                    "p", f"**Full set** for `{r['id']}`: the evaluation failed: {r['full_failure']}"
                )
            )
    full = next((r for r in runs if r["full_metrics"]), None)
    if full is not None:
        m = full["full_metrics"]
        blocks.append(
            Block(
                "p",
                f"**Full set** ({m['n']} questions) for `{full['id']}`: eval_score_avg {fmt(m['eval_score_avg'], 2)} (95% CI {fmt(m['eval_score_ci95'][0], 2)}–{fmt(m['eval_score_ci95'][1], 2)}), schema_pass_rate {fmt(m['schema_pass_rate'])}, grounding_avg {fmt(m['grounding_avg'])}.",
            )
        )
    if final is not None:
        blocks.append(Block("h2", "Final decision"))
        blocks.append(Block("p", f"{final['action']} (round {final['round']}): {final['reason']}"))
        if final.get("recommendations"):
            blocks.append(Block("list", final["recommendations"]))

    blocks.append(Block("h2", "Pinned inputs"))
    blocks.append(
        Block(
            "table",
            (
                ["input", "value"],
                [[k, f"`{study.pins[k]}`"] for k in PIN_KEYS]
                + [[k, f"`{v}`"] for k, v in sorted(study.pins.items()) if k not in PIN_KEYS]
                + [["created", study.created_at], ["config", f"`{study.config_path}`"]],
            ),
        )
    )
    first = next((r for r in runs if r["train_meta"]), None)
    if first is not None:
        prov = first["train_meta"].get("provenance", {})
        git = prov.get("git", {})
        libs = ", ".join(f"{k} {v}" for k, v in sorted(prov.get("libraries", {}).items()))
        blocks.append(Block("h2", "Provenance"))
        blocks.append(
            Block(
                "list",
                [
                    f"sftgate commit `{git.get('commit')}`"
                    + (" (with uncommitted changes)" if git.get("dirty") else ""),
                    f"device: {prov.get('device')}; Python {prov.get('python')}",
                    f"libraries: {libs}",
                    "every run row in the registry carries its own provenance (`sftgate show RUN`)",
                ],
            )
        )

    header = [
        "run",
        "status",
        "adapter_id",
        *SEED_PARAM_NAMES,
        "eval_score_avg [95% CI]",
        "schema",
        "grounding",
        "dd_f1",
        "evidence",
        "answer_f1",
        "ctx_recall",
        "train s",
        "eval s",
    ]
    for round_ in sorted({r["round"] for r in runs}):
        blocks.append(Block("h2", f"Round {round_}"))
        rows = []
        for r in (x for x in runs if x["round"] == round_):
            score = (
                f"{fmt(r['eval_score_avg'], 2)} [{fmt(r['eval_score_ci_low'], 1)}, {fmt(r['eval_score_ci_high'], 1)}]"
                if r["eval_score_avg"] is not None
                else "–"
            )
            rows.append(
                [
                    f"`{r['id']}`",
                    r["status"] + (" (lost)" if r["lost"] else ""),
                    f"`{r['adapter_id'][:8]}`" if r["adapter_id"] else "–",
                    *(f"{r['params'][k]:g}" for k in SEED_PARAM_NAMES),
                    score,
                    fmt(r["schema_pass_rate"]),
                    fmt(r["grounding_avg"]),
                    fmt(r["detailed_description_f1"]),
                    fmt(r["original_evidence"]),
                    fmt(r["answer_f1"]),
                    fmt(r["context_recall"]),
                    fmt(r["train_s"], 1),
                    fmt(r["eval_s"], 1),
                ]
            )
        blocks.append(Block("table", (header, rows)))
        reasons = [
            f"`{r['id']}`: {r['reason']}"
            + (f" — **failed:** {r['failure']}" if r["failure"] else "")
            for r in runs
            if r["round"] == round_
        ]
        blocks.append(Block("list", reasons))

    if image_dir is not None and any(r["eval_score_avg"] is not None for r in runs):
        blocks.append(Block("h2", "Plots"))
        blocks += [Block("image", name) for name in plot(runs, gate_score, image_dir)]

    blocks.append(Block("h2", "Planner decisions"))
    blocks.append(
        Block(
            "table",
            (
                ["#", "round", "action", "selected", "reason"],
                [
                    [
                        str(i),
                        str(d["round"]),
                        d["action"],
                        f"`{d['selected_run']}`" if d.get("selected_run") else "–",
                        d["reason"],
                    ]
                    for i, d in enumerate(decisions, 1)
                ],
            ),
        )
    )
    return blocks


def plot(runs: Sequence[dict[str, Any]], gate_score: float, out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in runs if r["eval_score_avg"] is not None]
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = [r["id"].rsplit("-", 1)[0] for r in done]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    scores = [r["eval_score_avg"] for r in done]
    err = [
        [s - (r["eval_score_ci_low"] or s) for s, r in zip(scores, done)],
        [(r["eval_score_ci_high"] or s) - s for s, r in zip(scores, done)],
    ]
    axes[0].bar(labels, scores, yerr=err, color="#4c72b0", capsize=3)
    axes[0].axhline(gate_score, color="#c44e52", linestyle="--", label=f"gate {gate_score}")
    axes[0].set_ylim(0, 100)
    axes[0].set_title("eval_score_avg per run (95% CI)")
    axes[0].legend()
    for key, color in (
        ("schema_pass_rate", "#55a868"),
        ("grounding_avg", "#8172b2"),
        ("detailed_description_f1", "#ccb974"),
        ("original_evidence", "#64b5cd"),
        ("answer_f1", "#dd8452"),
    ):
        axes[1].plot(labels, [r[key] for r in done], marker="o", label=key, color=color)
    axes[1].set_ylim(-0.02, 1.02)
    axes[1].set_title("sub-metrics per run")
    axes[1].legend(fontsize=7)
    for ax in axes:
        ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    fig.savefig(out_dir / "metrics_per_run.png", dpi=110)
    plt.close(fig)

    rounds = sorted({r["round"] for r in done})
    best, running = [], float("-inf")
    for rd in rounds:
        running = max(running, max(r["eval_score_avg"] for r in done if r["round"] == rd))
        best.append(running)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(rounds, best, marker="o", label="best eval_score_avg so far")
    ax.axhline(gate_score, color="#c44e52", linestyle="--", label=f"gate {gate_score}")
    ax.set_xticks(rounds)
    ax.set_xlabel("round")
    ax.set_ylim(0, 100)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "best_by_round.png", dpi=110)
    plt.close(fig)
    return ["metrics_per_run.png", "best_by_round.png"]


def to_markdown(blocks: Sequence[Block]) -> str:
    out = []
    for b in blocks:
        if b.kind == "h1":
            out.append(f"# {b.content}")
        elif b.kind == "h2":
            out.append(f"## {b.content}")
        elif b.kind == "p":
            out.append(b.content)
        elif b.kind == "list":
            out.append("\n".join(f"- {item}" for item in b.content))
        elif b.kind == "table":
            header, rows = b.content
            lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
            out.append("\n".join(lines))
        elif b.kind == "image":
            out.append(f"![{b.content}]({b.content})")
    return "\n\n".join(out) + "\n"


def _inline(text: str) -> str:
    """Escape, then the two inline marks the report uses: `code` and **bold**."""
    import re

    t = html.escape(text)
    t = re.sub(r"`([^`]+)`", r"<code>\1</code>", t)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", t)


def to_html(blocks: Sequence[Block], title: str) -> str:
    out = [
        f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1200px;margin:2em auto}table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}</style>",
    ]
    for b in blocks:
        if b.kind in ("h1", "h2"):
            out.append(f"<{b.kind}>{_inline(b.content)}</{b.kind}>")
        elif b.kind == "p":
            out.append(f"<p>{_inline(b.content)}</p>")
        elif b.kind == "list":
            out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b.content) + "</ul>")
        elif b.kind == "table":
            header, rows = b.content
            out.append(
                "<table><tr>"
                + "".join(f"<th>{_inline(h)}</th>" for h in header)
                + "</tr>"
                + "".join(
                    "<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>"
                    for row in rows
                )
                + "</table>"
            )
        elif b.kind == "image":
            out.append(f"<img src='{html.escape(b.content)}' alt='{html.escape(b.content)}'>")
    return "\n".join(out) + "\n"


def write_report(
    reg: Registry, study_name: str, path: str | Path, fmt_: str = "md", plots: bool = True
) -> Path:
    path = Path(path)
    blocks = build_blocks(reg, study_name, path.parent if plots else None)
    text = to_markdown(blocks) if fmt_ == "md" else to_html(blocks, study_name)
    atomic_write_text(path, text)
    return path
