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
from sftgate.scoring import METRIC_KEYS
from sftgate.search.planner import CurvePoint, Policy, Thresholds
from sftgate.search.registry import PIN_KEYS, FullState, Registry, Run, Study
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
    blocks = [Block("h1", f"sftgate study: {study.name}")]
    if study.pins["model_id"] == TINY_MODEL_ID:
        blocks.append(Block("p", TINY_MODEL_NOTE))
    note = study.config.get("note")
    if note:
        blocks.append(Block("p", f"**Note.** {note}"))
    final = decisions[-1] if decisions else None
    blocks += verdict(study, runs, final, thresholds)
    blocks += reach_blocks(study, final)
    blocks += pins_and_provenance(study, runs)
    for round_ in sorted({r.round for r in runs}):
        blocks += round_blocks(round_, [r for r in runs if r.round == round_])
    if image_dir is not None and any(r.metrics is not None for r in runs):
        blocks.append(Block("h2", "Plots"))
        ceiling = (study.reach["ceiling"], study.reach["ceiling_ci95"]) if study.reach else None
        images = plot(runs, thresholds.gate_score, image_dir, ceiling)
        blocks += [Block("image", name) for name in images]
        curves = {r.id: reg.curve(r.id) for r in runs if r.metrics is not None}
        if any(curves.values()):
            blocks.append(Block("h2", "Learning curves"))
            blocks.append(Block("p", CURVES_NOTE))
            pngs = curve_plots(runs, curves, thresholds.gate_score, image_dir)
            blocks += [Block("image", png) for png in pngs]
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


def verdict(
    study: Study, runs: Sequence[Run], final: dict[str, Any] | None, t: Thresholds
) -> list[Block]:
    """The gate verdict for the selected run, the full set, and the final decision."""
    best_id = final.get("selected_run") if final else None
    best = next((r for r in runs if r.id == best_id), None)
    passed = best is not None and t.passes_gate(best.metrics)
    text = "**Gate: PASSED**" if passed else "**Gate: not passed**"
    text += f" (eval_score_avg >= {t.gate_score} and schema_pass_rate >= {t.gate_schema} on the gate set)."
    if best is not None:
        m = best.metrics
        lo, hi = (m.eval_score_ci95 or (None, None)) if m else (None, None)
        text += f" Selected run: `{best.id}`, eval_score_avg {fmt(m.eval_score_avg if m else None, 2)} (95% CI {fmt(lo, 2)}–{fmt(hi, 2)}), schema_pass_rate {fmt(m.schema_pass_rate if m else None)}."
    blocks = [Block("p", text + f" Study status: {study.status}.")]
    for r in runs:
        if r.full is not None and r.full.state is FullState.FAILED:
            blocks.append(
                Block("p", f"**Full set** for `{r.id}`: the evaluation failed: {r.full.failure}")
            )
    full = next((r for r in runs if r.full is not None and r.full.metrics), None)
    if full is not None:
        assert full.full is not None and full.full.metrics is not None
        fm = full.full.metrics
        ci = fm.eval_score_ci95 or (None, None)
        blocks.append(
            Block(
                "p",
                f"**Full set** ({fm.n} questions) for `{full.id}`: eval_score_avg {fmt(fm.eval_score_avg, 2)} (95% CI {fmt(ci[0], 2)}–{fmt(ci[1], 2)}), schema_pass_rate {fmt(fm.schema_pass_rate)}, grounding_avg {fmt(fm.grounding_avg)}.",
            )
        )
    if final is not None:
        blocks.append(Block("h2", "Final decision"))
        blocks.append(Block("p", f"{final['action']} (round {final['round']}): {final['reason']}"))
        if final.get("recommendations"):
            blocks.append(Block("list", final["recommendations"]))
    return blocks


def reach_blocks(study: Study, final: dict[str, Any] | None) -> list[Block]:
    """The ceiling measured before round 0, and the final decision's gap decomposition."""
    reach = study.reach
    if reach is None:
        return []
    lo, hi = reach["ceiling_ci95"]
    verdict = "reachable" if reach["reachable"] else "**not reachable**"
    text = (
        f"Ceiling {reach['ceiling']:.2f} (95% CI {lo:.2f}–{hi:.2f}): the best score a perfect answer "
        f"gets from the frozen passages (docs/scoring/ceiling.md); context_recall "
        f"{fmt(reach['context_recall'])}, {reach['questions_missing_evidence']} of {reach['n']} gate "
        f"questions miss some evidence. Gate {reach['gate_score']:g} + margin {reach['margin']:g}: "
        f"{verdict}."
    )
    if reach.get("allowed_unreachable"):
        text += " The search ran anyway: `policy.allow_unreachable: true` (recorded)."
    blocks = [Block("h2", "Is the gate reachable?"), Block("p", text)]
    gap = final.get("gap") if final else None
    if final is not None and gap:
        r, f, m = gap["retrieval"], gap["format"], gap["model"]
        blocks.append(
            Block(
                "p",
                f"**The gap** of `{final['selected_run']}` (final decision): gate "
                f"{gap['gate_score']:g} − eval_score_avg {gap['eval_score_avg']:.2f} = "
                f"{gap['gap']:.2f} points = gate − ceiling {r['gate_minus_ceiling']:+.2f} + points "
                f"lost on questions missing evidence {r['lost_on_missing_evidence']:.2f} + format "
                f"{f['points']:.2f} + model {m['points']:.2f}. Points lost of 100: retrieval "
                f"{r['points']:.2f}, format {f['points']:.2f} ({f['questions']} questions), model "
                f"{m['points']:.2f} ({m['questions']} questions).",
            )
        )
        if f["by_reason"]:
            rows = [[f"`{reason}`", f"{p:.2f}"] for reason, p in f["by_reason"].items()]
            blocks.append(Block("table", (["format failure", "points"], rows)))
        header = ["kind", "questions", "ceiling", "eval_score_avg", "retrieval", "format", "model"]
        rows = [
            [k, str(v["n"]), *(f"{v[c]:.2f}" for c in header[2:])]
            for k, v in gap["by_kind"].items()
        ]
        blocks.append(Block("table", (header, rows)))
    return blocks


def pins_and_provenance(study: Study, runs: Sequence[Run]) -> list[Block]:
    blocks = [Block("h2", "Pinned inputs")]
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
    first = next((r for r in runs if r.train_meta), None)
    if first is not None:
        assert first.train_meta is not None
        prov = first.train_meta.get("provenance", {})
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
    return blocks


ROUND_HEADER = [
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


def round_blocks(round_: int, runs: Sequence[Run]) -> list[Block]:
    """A round's table (one row per run) and each run's reason and failure."""
    rows = []
    for r in runs:
        m = r.metrics
        score = "–"
        if m is not None:
            lo, hi = m.eval_score_ci95 or (None, None)
            score = f"{fmt(m.eval_score_avg, 2)} [{fmt(lo, 1)}, {fmt(hi, 1)}]"
        rows.append(
            [
                f"`{r.id}`",
                r.status,
                f"`{r.adapter_id[:8]}`" if r.adapter_id else "–",
                *(f"{v:g}" for v in r.params.seed_view().values()),
                score,
                *(fmt(getattr(m, k) if m else None) for k in METRIC_KEYS[1:]),
                fmt(r.train_s, 1),
                fmt(r.eval_s, 1),
            ]
        )
    reasons = [
        f"`{r.id}`: {r.reason}" + (f" — **failed:** {r.failure}" if r.failure else "") for r in runs
    ]
    return [
        Block("h2", f"Round {round_}"),
        Block("table", (ROUND_HEADER, rows)),
        Block("list", reasons),
    ]


CURVES_NOTE = (
    "Each run's gate score at its checkpoints and its end (`policy.checkpoints`). Under a "
    "constant learning rate a checkpoint at step k is the model a k-step run gives; under a "
    "decaying schedule it is not (the rate was still high at step k), and the adaptive policy "
    "does not read it as evidence about max_steps."
)


def curve_plots(
    runs: Sequence[Run], curves: dict[str, list[CurvePoint]], gate_score: float, out_dir: Path
) -> list[str]:
    """One plot per round with curves: eval_score_avg and schema_pass_rate against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for round_ in sorted({r.round for r in runs if curves.get(r.id)}):
        fig, (score_ax, schema_ax) = plt.subplots(1, 2, figsize=(12, 4))
        for r in runs:
            if r.round != round_ or not curves.get(r.id) or r.metrics is None:
                continue
            steps = [p.step for p in curves[r.id]] + [r.params.max_steps]
            label = f"{r.id.rsplit('-', 1)[0]} (lr {r.params.lr:g}, {r.params.lr_scheduler})"
            score_ax.plot(
                steps,
                [p.metrics.eval_score_avg for p in curves[r.id]] + [r.metrics.eval_score_avg],
                marker="o",
                label=label,
            )
            schema_ax.plot(
                steps,
                [p.metrics.schema_pass_rate for p in curves[r.id]] + [r.metrics.schema_pass_rate],
                marker="o",
                label=label,
            )
        score_ax.axhline(gate_score, color="#c44e52", linestyle="--", label=f"gate {gate_score}")
        score_ax.set_ylim(0, 100)
        score_ax.set_title(f"round {round_}: eval_score_avg by step")
        schema_ax.set_ylim(-0.02, 1.02)
        schema_ax.set_title(f"round {round_}: schema_pass_rate by step")
        for ax in (score_ax, schema_ax):
            ax.set_xlabel("step")
            ax.legend(fontsize=7)
        fig.tight_layout()
        name = f"curves_round{round_}.png"
        fig.savefig(out_dir / name, dpi=110)
        plt.close(fig)
        names.append(name)
    return names


def plot(
    runs: Sequence[Run],
    gate_score: float,
    out_dir: Path,
    ceiling: tuple[float, Sequence[float]] | None = None,
) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [(r, r.metrics) for r in runs if r.metrics is not None]
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = [r.id.rsplit("-", 1)[0] for r, _ in done]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    scores = [m.eval_score_avg for _, m in done]
    cis = [m.eval_score_ci95 or (None, None) for _, m in done]
    err = [
        [s - (lo or s) for s, (lo, _) in zip(scores, cis)],
        [(hi or s) - s for s, (_, hi) in zip(scores, cis)],
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
        axes[1].plot(labels, [getattr(m, key) for _, m in done], marker="o", label=key, color=color)
    axes[1].set_ylim(-0.02, 1.02)
    axes[1].set_title("sub-metrics per run")
    axes[1].legend(fontsize=7)
    for ax in axes:
        ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    fig.savefig(out_dir / "metrics_per_run.png", dpi=110)
    plt.close(fig)

    rounds = sorted({r.round for r, _ in done})
    best, running = [], float("-inf")
    for rd in rounds:
        running = max(running, max(m.eval_score_avg for r, m in done if r.round == rd))
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
    if ceiling is None:
        return ["metrics_per_run.png", "best_by_round.png"]
    value, (lo, hi) = ceiling
    fig, ax = plt.subplots(figsize=(8, 3.8))
    ax.plot(labels, scores, marker="o", linestyle="none", color="#4c72b0", label="eval_score_avg")
    ax.axhspan(lo, hi, color="#55a868", alpha=0.2)
    ax.axhline(value, color="#55a868", label=f"ceiling {value:.2f} (95% CI band)")
    ax.axhline(gate_score, color="#c44e52", linestyle="--", label=f"gate {gate_score}")
    ax.set_ylim(0, 100)
    ax.set_title("runs against the ceiling and the gate")
    ax.tick_params(axis="x", rotation=45)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(out_dir / "scores_vs_ceiling.png", dpi=110)
    plt.close(fig)
    return ["metrics_per_run.png", "best_by_round.png", "scores_vs_ceiling.png"]


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
