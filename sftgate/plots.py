"""The report's plots, from plain data: what a person would rather see than read.

- `scores.png`: eval_score_avg of each run (95% interval), the best score so far, the gate and,
  when one is recorded, the ceiling (the best score the study's passages allow, with its 95%
  band) as lines.
- `loss.png`: each run's training loss per step.
- `submetrics.png`: each run's sub-metrics as a table of colours with their values (five lines
  on one axis overlap into one when runs are close).
- `context_recall.png`: the selected run's questions grouped by how much of their reference
  evidence retrieval found, with the mean eval_score of each group: what retrieval misses cost.

A plot whose every value is 0 says so on the plot, instead of a flat line on the axis.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftgate.scoring import METRIC_KEYS

SUBMETRICS = tuple(k for k in METRIC_KEYS if k != "eval_score_avg")
GATE_COLOR, CEILING_COLOR = "#c44e52", "#555555"


@dataclass(frozen=True)
class RunPoint:
    """One run as the plots see it; `score` None: the run has no gate metrics (failed)."""

    label: str
    round: int
    score: float | None = None
    ci: tuple[float, float] | None = None
    metrics: dict[str, float | None] = field(default_factory=dict)  # SUBMETRICS
    loss: Sequence[float] = ()


@dataclass(frozen=True)
class QuestionPoint:
    """One gate question of the selected run: its context_recall (None: unanswerable) and score."""

    context_recall: float | None
    eval_score: float


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def note_if_zero(ax: Any, values: Sequence[float], what: str) -> None:
    if values and all(v == 0 for v in values):
        ax.text(
            0.5,
            0.5,
            f"every {what} is 0",
            transform=ax.transAxes,
            ha="center",
            va="center",
            fontsize=11,
            bbox={"boxstyle": "round", "facecolor": "#fff4d6", "edgecolor": "#c9a227"},
        )


Ceiling = tuple[float, Sequence[float]]  # the ceiling and its 95% interval


def _gate_and_ceiling(ax: Any, gate: float, ceiling: Ceiling | None) -> None:
    ax.axhline(gate, color=GATE_COLOR, linestyle="--", label=f"gate {gate:g}")
    if ceiling is not None:
        value, (lo, hi) = ceiling
        ax.axhspan(lo, hi, color=CEILING_COLOR, alpha=0.12)
        ax.axhline(
            value, color=CEILING_COLOR, linestyle=":", label=f"ceiling {value:.1f} (95% band)"
        )


def scores_figure(runs: Sequence[RunPoint], gate: float, ceiling: Ceiling | None) -> Any:
    plt = _pyplot()
    done = [r for r in runs if r.score is not None]
    fig, ax = plt.subplots(figsize=(max(7.0, 0.6 * len(done) + 4), 4))
    x = list(range(len(done)))
    scores = [float(r.score) for r in done if r.score is not None]
    err = [
        [s - (r.ci[0] if r.ci else s) for s, r in zip(scores, done)],
        [(r.ci[1] if r.ci else s) - s for s, r in zip(scores, done)],
    ]
    colors = plt.get_cmap("tab10")
    ax.bar(x, scores, yerr=err, capsize=3, color=[colors(r.round % 10) for r in done])
    best, so_far = [], float("-inf")
    for s in scores:
        so_far = max(so_far, s)
        best.append(so_far)
    ax.step(x, best, where="mid", color="#333333", label="best so far")
    _gate_and_ceiling(ax, gate, ceiling)
    ax.set_xticks(x, [r.label for r in done], rotation=45, ha="right")
    ax.set_ylim(0, 100)
    ax.set_ylabel("eval_score_avg (gate set, 95% CI)")
    ax.set_title("score per run (bar colour: round)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)  # beside the bars
    note_if_zero(ax, scores, "run's eval_score_avg")
    fig.tight_layout()
    return fig


def loss_figure(runs: Sequence[RunPoint]) -> Any:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    curves = [r for r in runs if r.loss]
    for r in curves:
        ax.plot(range(1, len(r.loss) + 1), r.loss, label=r.label, linewidth=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("loss per step")
    if curves:
        ax.legend(fontsize=7, ncol=2)
    else:
        ax.text(0.5, 0.5, "no training loss recorded", transform=ax.transAxes, ha="center")
    note_if_zero(ax, [v for r in curves for v in r.loss], "loss value")
    fig.tight_layout()
    return fig


def submetrics_figure(runs: Sequence[RunPoint]) -> Any:
    plt = _pyplot()
    done = [r for r in runs if r.score is not None]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(done) + 1.8))
    values = [[r.metrics.get(k) for k in SUBMETRICS] for r in done]
    grid = [[float("nan") if v is None else v for v in row] for row in values]
    ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            ax.text(j, i, "–" if v is None else f"{v:.2f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(SUBMETRICS)), SUBMETRICS, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(done)), [r.label for r in done], fontsize=8)
    ax.set_title("sub-metrics per run (0 red, 1 green)")
    note_if_zero(ax, [v for row in values for v in row if v is not None], "sub-metric")
    fig.tight_layout()
    return fig


def recall_groups(points: Sequence[QuestionPoint]) -> list[tuple[str, list[float]]]:
    groups: dict[str, list[float]] = {
        "all evidence retrieved": [],
        "part of it": [],
        "none of it": [],
        "unanswerable": [],
    }
    for p in points:
        if p.context_recall is None:
            key = "unanswerable"
        elif p.context_recall >= 1:
            key = "all evidence retrieved"
        else:
            key = "part of it" if p.context_recall > 0 else "none of it"
        groups[key].append(p.eval_score)
    return [(k, v) for k, v in groups.items() if v]


def context_recall_figure(points: Sequence[QuestionPoint], label: str, gate: float) -> Any:
    plt = _pyplot()
    groups = recall_groups(points)
    fig, ax = plt.subplots(figsize=(7, 4))
    means = [sum(v) / len(v) for _, v in groups]
    ax.bar(range(len(groups)), means, color="#4c72b0")
    for i, (_, v) in enumerate(groups):
        ax.text(i, means[i] + 1, f"{len(v)} q", ha="center", fontsize=8)
    ax.axhline(gate, color=GATE_COLOR, linestyle="--", label=f"gate {gate:g}")
    answerable = [p.context_recall for p in points if p.context_recall is not None]
    recall = sum(answerable) / len(answerable) if answerable else None
    ax.set_xticks(range(len(groups)), [k for k, _ in groups])
    ax.set_ylim(0, 100)
    ax.set_ylabel(f"mean eval_score of {label}")
    shown = "–" if recall is None else f"{recall:.2f}"
    ax.set_title(f"by retrieved evidence (context_recall {shown})")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    note_if_zero(ax, means, "group's mean score")
    fig.tight_layout()
    return fig


def write_plots(
    runs: Sequence[RunPoint],
    selected: tuple[str, Sequence[QuestionPoint]] | None,
    gate: float,
    ceiling: Ceiling | None,
    out_dir: Path,
) -> list[str]:
    """Write the plots into out_dir; returns their file names, in the report's order.
    `selected`: the selected run's label and its gate questions, for context_recall.png."""
    plt = _pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = {
        "scores.png": scores_figure(runs, gate, ceiling),
        "loss.png": loss_figure(runs),
        "submetrics.png": submetrics_figure(runs),
    }
    if selected is not None and selected[1]:
        figures["context_recall.png"] = context_recall_figure(selected[1], selected[0], gate)
    for name, fig in figures.items():
        fig.savefig(out_dir / name, dpi=110)
        plt.close(fig)
    return list(figures)
