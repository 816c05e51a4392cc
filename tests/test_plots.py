"""The report's plots, checked on the matplotlib objects they draw (lines, texts, values)."""

from __future__ import annotations

import pytest

from sftgate.plots import (
    QuestionPoint,
    RunPoint,
    context_recall_figure,
    loss_figure,
    recall_groups,
    scores_figure,
    submetrics_figure,
    write_plots,
)

METRICS = {"schema_pass_rate": 0.9, "answer_f1": 0.5, "grounding_avg": 0.25, "context_recall": 0.78}
RUNS = [
    RunPoint("r0-0", 0, 41.0, (39.0, 43.0), METRICS, [2.0, 1.5, 1.0]),
    RunPoint("r1-0", 1, 62.5, (60.0, 65.0), METRICS, [2.0, 1.0, 0.5, 0.25]),
    RunPoint("r1-1", 1, None),  # failed: no bar, no loss
    RunPoint("r2-0", 2, 58.0, None, METRICS, [1.0]),
]
ZERO = [
    RunPoint(f"r{i}-0", i, 0.0, (0.0, 0.0), dict.fromkeys(METRICS, 0.0), [0.0, 0.0])
    for i in range(3)
]


def texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def hlines(fig) -> dict[str, float]:
    """Horizontal lines by legend label: their y."""
    out = {}
    for line in fig.axes[0].get_lines():
        y = line.get_ydata()
        if len(set(y)) == 1 and not line.get_label().startswith("_"):
            out[line.get_label()] = float(y[0])
    return out


def test_scores_plot_has_the_gate_ceiling_and_best_so_far():
    fig = scores_figure(RUNS, 95.0, (95.95, (94.5, 97.0)))
    assert hlines(fig) == {"gate 95": 95.0, "ceiling 96.0 (95% band)": 95.95}
    band = fig.axes[0].patches[-1].get_bbox()  # the ceiling's interval, drawn as a band
    assert (band.y0, band.y1) == (94.5, 97.0)
    bars = [p.get_height() for p in fig.axes[0].patches[:-1]]  # the bars, then the band
    assert bars == [41.0, 62.5, 58.0]  # the failed run has no bar
    best = next(line for line in fig.axes[0].get_lines() if line.get_label() == "best so far")
    assert list(best.get_ydata()) == [41.0, 62.5, 62.5]
    assert not any("is 0" in t for t in texts(fig))
    no_ceiling = scores_figure(RUNS, 95.0, None)
    assert set(hlines(no_ceiling)) == {"gate 95"}


def test_loss_plot_has_one_curve_per_trained_run():
    fig = loss_figure(RUNS)
    curves = {line.get_label(): list(line.get_ydata()) for line in fig.axes[0].get_lines()}
    assert curves == {"r0-0": [2.0, 1.5, 1.0], "r1-0": [2.0, 1.0, 0.5, 0.25], "r2-0": [1.0]}
    assert "no training loss recorded" in texts(loss_figure([RunPoint("x", 0, 1.0)]))


def test_submetrics_are_a_table_of_values_not_overlapping_lines():
    fig = submetrics_figure(RUNS)
    ax = fig.axes[0]
    assert ax.get_lines() == []
    assert [t.get_text() for t in ax.get_yticklabels()] == ["r0-0", "r1-0", "r2-0"]
    cells = texts(fig)
    assert cells.count("0.90") == 3 and cells.count("0.78") == 3 and "–" in cells  # missing dd_f1


@pytest.mark.parametrize(
    "figure",
    [
        lambda: scores_figure(ZERO, 95.0, None),
        lambda: loss_figure(ZERO),
        lambda: submetrics_figure(ZERO),
        lambda: context_recall_figure(
            [QuestionPoint(1.0, 0.0), QuestionPoint(None, 0.0)], "r0-0", 95.0
        ),
    ],
)
def test_a_plot_whose_values_are_all_zero_says_so(figure):
    assert any(t.startswith("every ") and t.endswith(" is 0") for t in texts(figure()))


def test_context_recall_groups_and_plot():
    points = [QuestionPoint(1.0, 90.0), QuestionPoint(1.0, 70.0), QuestionPoint(0.5, 40.0)]
    points += [QuestionPoint(0.0, 20.0), QuestionPoint(None, 100.0)]
    groups = recall_groups(points)
    assert groups == [
        ("all evidence retrieved", [90.0, 70.0]),
        ("part of it", [40.0]),
        ("none of it", [20.0]),
        ("unanswerable", [100.0]),
    ]
    fig = context_recall_figure(points, "r1-0", 95.0)
    assert [p.get_height() for p in fig.axes[0].patches] == [80.0, 40.0, 20.0, 100.0]
    assert fig.axes[0].get_title() == "by retrieved evidence (context_recall 0.62)"


def test_write_plots(tmp_path):
    names = write_plots(RUNS, ("r1-0", [QuestionPoint(1.0, 80.0)]), 95.0, None, tmp_path)
    assert names == ["scores.png", "loss.png", "submetrics.png", "context_recall.png"]
    for name in names:
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    assert write_plots(RUNS, None, 95.0, None, tmp_path / "b")[-1] == "submetrics.png"
