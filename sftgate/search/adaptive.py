"""`policy: {kind: adaptive}`: beyond the seed, the same records and round sizes, decided by
learning curves and paired comparisons instead of fixed steps and a plateau of averages.

A pure function like the seed's planner. In order, first match wins:
1. Round 0 and round 1 as the seed (smoke, then round1's configs); a round where every run failed
   stops; a gate-passing selected run gets the full set, then stops.
2. Selection: runs reaching gate_schema; the top score; every run the paired bootstrap does not
   separate from it (its 95% interval of the difference includes 0) is as good, and the cheapest
   of those (max_steps x max_length x batch_size) is selected.
3. Stops: the time budget (`budget_minutes`, training + evaluation of all runs), the run budget
   (`max_runs`), the best run within `margin` of the retrieval's ceiling (more training cannot
   pass a gate the passages do not allow), max_rounds.
4. Steps: the selected run's curve (its checkpoints and its end, under `lr_scheduler: constant`,
   where a checkpoint at step k is the model a k-step run gives) still rising beyond noise (the
   paired interval of its last point against the one before excludes 0) -> its config with
   max_steps x 2. With no curve to read (other schedules, no checkpoints), the same config at
   fewer steps, when run, is the previous point; with neither, steps are doubled once (the
   seed's first knob). A flat curve stops the steps.
5. The seed's other levers from the selected run: original_evidence low -> long_max_length;
   detailed_description_f1 low -> lr + lr_delta. Nothing left to try -> stop: flat within noise.
"""

from __future__ import annotations

from collections.abc import Sequence

from sftgate.params import TrainParams
from sftgate.scoring import paired_difference
from sftgate.search.planner import (
    PROMPT_ADVICE,
    RETRIEVAL_ADVICE,
    CurvePoint,
    Decision,
    History,
    Policy,
    ProposedConfig,
    RoundRecord,
    RunRecord,
    first_rounds,
    gate_passed,
    seed_key,
    spend_stop,
    with_changes,
)


def cost(params: TrainParams) -> int:
    """Training tokens, up to a constant: what a config costs to run."""
    return params.max_steps * params.max_length * params.batch_size * params.grad_accum_steps


def paired(a: dict[str, float] | None, b: dict[str, float] | None) -> tuple[float, float] | None:
    """The 95% paired-bootstrap interval of b - a in eval_score points, or None without scores."""
    if not a or not b or set(a) != set(b):
        return None
    lo, hi = paired_difference(a, b, n_bootstrap=1000)["ci95"]
    return lo, hi


def select(runs: Sequence[RunRecord], gate_schema: float) -> tuple[RunRecord | None, str]:
    done = [r for r in runs if r.status == "done"]
    if not done:
        return None, "no run finished"
    eligible = [r for r in done if r.schema_rate >= gate_schema]
    if not eligible:
        best = max(done, key=lambda r: (r.schema_rate, r.score))
        return best, (
            f"no run reaches schema_pass_rate {gate_schema}; {best.run_id} has the highest "
            f"({best.schema_rate:.3f}, eval_score_avg {best.score:.2f})"
        )
    top = max(eligible, key=lambda r: (r.score, -cost(r.params)))
    same = []
    for r in eligible:
        ci = paired(r.per_question, top.per_question)
        if r is top or (ci is not None and ci[0] <= 0 <= ci[1]):
            same.append(r)
    best = min(same, key=lambda r: (cost(r.params), -r.score))
    if best is top:
        return best, f"{top.run_id} has the highest eval_score_avg ({top.score:.2f})"
    ci = paired(best.per_question, top.per_question)
    assert ci is not None
    return best, (
        f"{best.run_id} ({best.score:.2f}) is not separated from the top run {top.run_id} "
        f"({top.score:.2f}; paired 95% interval of the difference {ci[0]:+.2f} to {ci[1]:+.2f}) "
        "and costs less"
    )


def curve(run: RunRecord, runs: Sequence[RunRecord]) -> list[CurvePoint]:
    """The learning curve of the run's config, by step: the end of every finished run of the same
    config at any max_steps and, under lr_scheduler: constant (where a checkpoint at step k is
    the model a k-step run gives), their checkpoints."""
    family = [
        r
        for r in runs
        if r.status == "done"
        and r.metrics is not None
        and r.params.model_copy(update={"max_steps": run.params.max_steps}) == run.params
    ]
    points: dict[int, CurvePoint] = {}
    for r in family:
        if r.params.lr_scheduler == "constant":
            points.update({p.step: p for p in r.curve if p.step not in points})
    for r in family:  # ends win over checkpoints at the same step
        assert r.metrics is not None
        points[r.params.max_steps] = CurvePoint(
            step=r.params.max_steps, metrics=r.metrics, per_question=r.per_question
        )
    return [points[k] for k in sorted(points)]


def rising(points: Sequence[CurvePoint]) -> tuple[bool | None, str]:
    """Whether the curve's last step rose beyond noise: True, False (flat within noise, or
    falling), or None when there is nothing to compare."""
    if len(points) < 2:
        return None, "no earlier point to compare with"
    a, b = points[-2], points[-1]
    ci = paired(a.per_question, b.per_question)
    diff = b.metrics.eval_score_avg - a.metrics.eval_score_avg
    if ci is None:
        return None, f"step {a.step} -> {b.step}: {diff:+.2f} points, no per-question scores"
    word = "rising" if ci[0] > 0 else "flat within noise" if ci[1] >= 0 else "falling"
    return ci[0] > 0, (
        f"step {a.step} -> {b.step}: {diff:+.2f} points (paired 95% interval "
        f"{ci[0]:+.2f} to {ci[1]:+.2f}): {word}"
    )


def budget_stop(history: History, policy: Policy, last_round: int) -> str | None:
    spent = spend_stop(history, policy)
    if spent:
        return spent
    if last_round + 1 >= policy.thresholds.max_rounds:
        return f"max_rounds ({policy.thresholds.max_rounds}) reached without passing the gate"
    return None


def plan_adaptive(history: History, policy: Policy) -> Decision:
    rounds = sorted(history.rounds, key=lambda r: r.round)
    opening = first_rounds(rounds, policy, history)
    if opening is not None:
        return opening
    last = rounds[-1]
    t = policy.thresholds
    later = [run for r in rounds if r.round >= 1 for run in r.runs]
    best, why = select(later, t.gate_schema)
    assert best is not None and best.metrics is not None
    if t.passes_gate(best.metrics):
        return gate_passed(best, last.round, history, t)

    def stop(reason: str, recs: list[str] | None = None) -> Decision:
        return Decision(
            action="stop",
            round=last.round,
            selected_run=best.run_id,
            reason=f"{reason}; {why}",
            recommendations=recs if recs is not None else PROMPT_ADVICE + RETRIEVAL_ADVICE,
        )

    if history.ceiling is not None and best.score >= history.ceiling - t.margin:
        return stop(
            f"the best run ({best.score:.2f}) is within {t.margin:g} points of the ceiling "
            f"{history.ceiling:.2f} that the retrieval allows: more training cannot pass the gate",
            RETRIEVAL_ADVICE,
        )
    budget = budget_stop(history, policy, last.round)
    if budget:
        return stop(budget)
    return next_round(rounds, best, why, policy)


def next_round(
    rounds: Sequence[RoundRecord], best: RunRecord, why: str, policy: Policy
) -> Decision:
    """Steps x2 while the curve rises, then the seed's other levers; stop when none is left."""
    t, last = policy.thresholds, rounds[-1].round
    assert best.metrics is not None
    runs = [run for r in rounds for run in r.runs]
    points = curve(best, runs)
    up, trend = rising(points)
    candidates: list[tuple[dict[str, float | int], str]] = []
    if up is not False:
        steps = points[-1].step * 2
        candidates.append(({"max_steps": steps}, f"{trend}: max_steps x2 ({steps})"))
    if best.metrics.original_evidence < t.low_original_evidence:
        candidates.append(
            (
                {"max_length": policy.long_max_length},
                f"original_evidence {best.metrics.original_evidence:.3f} < "
                f"{t.low_original_evidence}: max_length {policy.long_max_length}",
            )
        )
    if best.metrics.detailed_description_f1 < t.low_detailed_description_f1:
        lr = round(best.params.lr + policy.lr_delta, 10)
        candidates.append(
            (
                {"lr": lr},
                f"detailed_description_f1 {best.metrics.detailed_description_f1:.3f} < "
                f"{t.low_detailed_description_f1}: lr {lr:g}",
            )
        )
    tried = {run.key() for run in runs}
    configs: list[ProposedConfig] = []
    for change, reason in candidates:
        params = with_changes(best.params, change)
        if seed_key(params) in tried or len(configs) >= policy.max_configs_per_round:
            continue
        tried.add(seed_key(params))
        configs.append(ProposedConfig(params=params, reason=f"from {best.run_id}: {reason}"))
    if not configs:
        return Decision(
            action="stop",
            round=last,
            selected_run=best.run_id,
            reason=f"nothing left to try from {best.run_id} ({trend}); {why}",
            recommendations=PROMPT_ADVICE + RETRIEVAL_ADVICE,
        )
    return Decision(
        action="train",
        round=last + 1,
        configs=configs,
        selected_run=best.run_id,
        reason=f"best so far: {why}; its curve: {trend}",
    )
