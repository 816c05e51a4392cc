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

from sftgate.errors import SftgateError
from sftgate.fsutil import atomic_write_text
from sftgate.params import SEED_PARAM_NAMES
from sftgate.plots import SUBMETRICS, QuestionPoint, RunPoint, write_plots
from sftgate.scoring import METRIC_KEYS
from sftgate.search.browse import PAGE, write_study_browser
from sftgate.search.planner import CurvePoint, Policy, Thresholds
from sftgate.search.registry import PIN_KEYS, FullState, Registry, Run, Study, constrained
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
    study = reg.require_study(study_name)
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
        blocks.append(Block("p", PLOTS_NOTE))
        selected = selected_run(runs, final)
        ceiling = (study.reach["ceiling"], study.reach["ceiling_ci95"]) if study.reach else None
        names = plots(reg, runs, selected, thresholds.gate_score, image_dir, ceiling)
        blocks += [Block("image", name) for name in names]
        curves = {r.id: reg.curve(r.id) for r in runs if r.metrics is not None}
        if any(curves.values()):
            blocks.append(Block("h2", "Learning curves"))
            blocks.append(Block("p", CURVES_NOTE))
            pngs = curve_plots(runs, curves, thresholds.gate_score, image_dir)
            blocks += [Block("image", png) for png in pngs]
    if image_dir is not None:
        blocks += browser_blocks(reg, study, image_dir, thresholds.gate_score, final)
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
                + [["decode.constrain", f"`{study.constrain}`"]]
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
                    + (" (with uncommitted changes)" if git.get("dirty") else "")
                    + (
                        f"; source sha256 `{src[:12]}`"
                        if (src := prov.get("source_sha256"))
                        else ""
                    ),
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
                r.status + (" (constrained)" if constrained(r) != "none" else ""),
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


PLOTS_NOTE = (
    "Scores per run with the gate and the ceiling (with its 95% band, where the study records "
    "one) as lines; each "
    "run's training loss; the sub-metrics as a table of colours; the selected run's questions "
    "grouped by how much of their evidence retrieval found."
)


def selected_run(runs: Sequence[Run], final: dict[str, Any] | None) -> Run | None:
    """The final decision's selected run, else the best-scoring evaluated one."""
    done = [r for r in runs if r.metrics is not None]
    chosen = final.get("selected_run") if final else None
    found = next((r for r in done if r.id == chosen), None)
    return found or max(
        done, key=lambda r: r.metrics.eval_score_avg if r.metrics else 0, default=None
    )


def plots(
    reg: Registry,
    runs: Sequence[Run],
    selected: Run | None,
    gate_score: float,
    out_dir: Path,
    ceiling: tuple[float, Sequence[float]] | None,
) -> list[str]:
    """The plots of sftgate.plots from the runs; `ceiling`: (value, 95% interval), recorded with
    the study by `sftgate ceiling` before round 0 (None for a study without one)."""
    points = [
        RunPoint(
            label=f"r{r.round}-{r.position}",
            round=r.round,
            score=r.metrics.eval_score_avg if r.metrics else None,
            ci=r.metrics.eval_score_ci95 if r.metrics else None,
            metrics={k: getattr(r.metrics, k) for k in SUBMETRICS} if r.metrics else {},
            loss=(r.train_meta or {}).get("loss_per_step", ()),
        )
        for r in runs
    ]
    questions = None
    if selected is not None:
        scores = reg.question_scores(selected.id, "gate")
        label = f"r{selected.round}-{selected.position}"
        questions = (label, [QuestionPoint(s.context_recall, s.eval_score) for s in scores])
    return write_plots(points, questions, gate_score, ceiling, out_dir)


def browser_blocks(
    reg: Registry, study: Study, out_dir: Path, gate_score: float, final: dict[str, Any] | None
) -> list[Block]:
    runs = reg.runs(study.id)
    selected = selected_run(runs, final)
    try:
        write_study_browser(reg, study, out_dir, gate_score, selected.id if selected else None)
    except SftgateError as e:
        return [Block("h2", "Failure browser"), Block("p", f"Not written: {e}.")]
    text = (
        f"[{PAGE}]({PAGE}): every gate question of each evaluated run, lowest score first, with "
        "its passages (the reference evidence highlighted), the raw output, the schema error and "
        "each field's score; a second run side by side; filters by question kind and failure "
        "reason. One file, no server: open it in a browser."
    )
    return [Block("h2", "Failure browser"), Block("p", text)]


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
    t = re.sub(r"\[([^\]]+)\]\(([\w./-]+\.html)\)", r"<a href='\2'>\1</a>", t)  # [page](page.html)
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
