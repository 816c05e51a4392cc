"""The planner: a pure function from a study's history to its next step.

`plan_next(history, policy) -> Decision` touches no GPU and no disk. Its default policy is the
seed's strategy (README, "Planner rules"): round 0 smoke, round 1's three configs, selection by
schema then score then grounding within the tie band, small round-2+ steps chosen by the low
sub-metric, and stops on plateau, oscillation, max_rounds or a passed gate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sftgate.config import StrictModel
from sftgate.params import SEED_PARAM_NAMES, TrainParams
from sftgate.scoring import paired_comparison


class Thresholds(StrictModel):
    gate_score: float = Field(95.0, description="gate: eval_score_avg >= this")
    gate_schema: float = Field(
        0.98,
        description="gate: schema_pass_rate >= this; also the bar a run must reach to be selected",
    )
    smoke_schema: float = Field(
        0.9,
        description="round 0 must reach this schema_pass_rate, else fix the prompt, not the parameters",
    )
    tie_band: float = Field(
        0.5, description="scores closer than this are a tie; the higher grounding_avg wins"
    )
    plateau: float = Field(
        0.3, description="stop when the latest round improved the best score by less than this"
    )
    oscillation_low: float = Field(
        94.5, description="stop when the best score stays in [low, high) for two rounds"
    )
    oscillation_high: float = Field(95.0)
    low_detailed_description_f1: float = Field(
        0.90, description="below this, round 2 trains longer or slightly hotter"
    )
    low_grounding: float = Field(
        0.95, description="below this, recommend stricter anchor rules in the prompt (a new study)"
    )
    low_original_evidence: float = Field(0.90, description="below this, round 2 raises max_length")
    max_rounds: int = Field(
        4, ge=1, description="rounds 0 .. max_rounds-1 may train; the seed stops at round 3"
    )


class Policy(StrictModel):
    thresholds: Thresholds = Field(default_factory=Thresholds)
    round0: TrainParams = Field(
        default_factory=TrainParams, description="the smoke config (the seed's round 0)"
    )
    round1: list[dict[str, float | int]] = Field(
        default_factory=lambda: [
            {"lr": 2e-4, "max_steps": 200},
            {"lr": 1e-4, "max_steps": 300},
            {"lr": 3e-4, "max_steps": 150},
        ],
        description="round 1's configs as changes to round0: base, conservative, stronger",
    )
    round1_reasons: list[str] = Field(
        default_factory=lambda: [
            "base: lr 2e-4, 200 steps",
            "conservative: lr 1e-4, 300 steps",
            "stronger: lr 3e-4, 150 steps",
        ]
    )
    steps_delta: int = Field(100, gt=0, description="round 2+: train longer by this many steps")
    lr_delta: float = Field(0.5e-4, gt=0, description="round 2+: or raise lr by this")
    long_max_length: int = Field(
        1536, gt=0, description="round 2+: max_length when original_evidence is low"
    )
    max_configs_per_round: int = Field(
        2, ge=1, description="round 2+ proposes at most this many configs"
    )

    @model_validator(mode="after")
    def _round1_reasons_match(self) -> Policy:
        if len(self.round1) != len(self.round1_reasons):
            raise ValueError(
                f"round1 has {len(self.round1)} configs but round1_reasons has "
                f"{len(self.round1_reasons)} reasons; give one reason per config"
            )
        if not 1 <= len(self.round1) <= 4:
            raise ValueError(
                f"round 1 runs 1 to 4 configs (the seed: 3), but got {len(self.round1)}"
            )
        return self


class RunRecord(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    run_id: str
    params: dict[str, Any]
    status: Literal["done", "failed"]
    metrics: dict[str, Any] = Field(default_factory=dict)
    per_question: dict[str, float] | None = None  # id -> eval_score, for the paired comparison
    failure: str | None = None


class RoundRecord(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    round: int
    runs: list[RunRecord]


class History(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rounds: list[RoundRecord] = Field(default_factory=list)
    full_eval_run: str | None = None  # the run whose full-set evaluation is done
    full_eval_failures: dict[str, str] = Field(
        default_factory=dict, description="run id -> why its full-set evaluation failed"
    )


class ProposedConfig(BaseModel):
    params: dict[str, Any]
    reason: str


class Decision(BaseModel):
    action: Literal["train", "full_eval", "stop"]
    round: int
    configs: list[ProposedConfig] = Field(default_factory=list)
    selected_run: str | None = None
    reason: str
    recommendations: list[str] = Field(default_factory=list)


PROMPT_ADVICE = [
    "Prompt: demand JSON only more explicitly, limit the number of evidence and anchor items, and require anchors to be copied from the given passages (a new prompt means a new study).",
]
RETRIEVAL_ADVICE = [
    "Retrieval: tune top_k and chunk size, and make source_path more precise (section anchors); check `sftgate index eval` recall first.",
]


def full_params(policy: Policy, changes: Mapping[str, Any]) -> dict[str, Any]:
    return {**policy.round0.seed_view(), **changes}


def _fmt(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={params[k]}" for k in SEED_PARAM_NAMES if k in params)


def _score(run: RunRecord) -> float:
    return float(run.metrics.get("eval_score_avg", float("-inf")))


def score_gap(a: RunRecord, b: RunRecord) -> float:
    """How many eval_score points a is ahead of b: paired mean difference where both have
    per-question scores (on other questions: MismatchError, runs are only compared on one gate
    set), else the difference of the averages."""
    if a.per_question and b.per_question:
        from sftgate.scoring import QuestionScore

        def qs(run: RunRecord) -> list[QuestionScore]:
            assert run.per_question is not None
            return [
                QuestionScore(i, True, None, 0, 0, 0, 0, None, s)
                for i, s in run.per_question.items()
            ]

        return float(paired_comparison(qs(b), qs(a), n_bootstrap=200)["mean_diff"])
    return _score(a) - _score(b)


def select_best(runs: Sequence[RunRecord], t: Thresholds) -> tuple[RunRecord | None, str]:
    """The seed's selection: schema_pass_rate must reach gate_schema; then the highest score;
    among runs within the tie band of the top score, the highest grounding_avg.

    If no run reaches gate_schema (the seed does not say what then), the highest schema_pass_rate
    is selected, then the highest score: the search goes on from the run closest to the format,
    and the gate (which needs gate_schema) stays out of reach until one gets there.
    None only when no run finished."""
    done = [r for r in runs if r.status == "done"]
    if not done:
        return None, "no run finished"
    eligible = [r for r in done if r.metrics.get("schema_pass_rate", 0.0) >= t.gate_schema]
    if not eligible:
        best = max(done, key=lambda r: (r.metrics.get("schema_pass_rate", 0.0), _score(r)))
        return best, (
            f"no run reaches schema_pass_rate {t.gate_schema}; {best.run_id} has the highest "
            f"({best.metrics.get('schema_pass_rate', 0.0):.3f}, eval_score_avg {_score(best):.2f})"
        )
    ranked = sorted(eligible, key=lambda r: (-_score(r), r.run_id))
    top = ranked[0]
    tied = [r for r in ranked if score_gap(top, r) < t.tie_band]
    best = max(
        tied, key=lambda r: (r.metrics.get("grounding_avg", 0.0), _score(r), -ranked.index(r))
    )
    if best is top:
        why = f"{top.run_id} has the highest eval_score_avg ({_score(top):.2f})"
        if len(tied) > 1:
            why += f" and the highest grounding_avg within the {t.tie_band}-point tie band"
    else:
        why = f"{best.run_id} is within {t.tie_band} points of {top.run_id} and has the higher grounding_avg ({best.metrics.get('grounding_avg', 0):.3f})"
    return best, why


def passes_gate(run: RunRecord, t: Thresholds) -> bool:
    return _score(run) >= t.gate_score and run.metrics.get("schema_pass_rate", 0.0) >= t.gate_schema


def round2_configs(
    best: RunRecord, tried: set[tuple[Any, ...]], policy: Policy
) -> tuple[list[ProposedConfig], list[str]]:
    """Small steps from the best run, by which sub-metric is low (the seed's round 2)."""
    t, m, base = policy.thresholds, best.metrics, best.params
    configs: list[ProposedConfig] = []
    recs: list[str] = []
    candidates: list[tuple[dict[str, Any], str]] = []
    dd, ev, gr = (
        m.get("detailed_description_f1", 1.0),
        m.get("original_evidence", 1.0),
        m.get("grounding_avg", 1.0),
    )
    if dd < t.low_detailed_description_f1:
        candidates.append(
            (
                {"max_steps": base["max_steps"] + policy.steps_delta},
                f"detailed_description_f1 {dd:.3f} < {t.low_detailed_description_f1}: train longer (+{policy.steps_delta} steps)",
            )
        )
    if ev < t.low_original_evidence:
        candidates.append(
            (
                {"max_length": policy.long_max_length},
                f"original_evidence {ev:.3f} < {t.low_original_evidence}: max_length {policy.long_max_length} keeps more passage text",
            )
        )
    if dd < t.low_detailed_description_f1:
        candidates.append(
            (
                {"lr": round(base["lr"] + policy.lr_delta, 10)},
                f"detailed_description_f1 {dd:.3f} < {t.low_detailed_description_f1}: slightly higher lr (+{policy.lr_delta:g})",
            )
        )
    if gr < t.low_grounding:
        recs.append(
            f"grounding_avg {gr:.3f} < {t.low_grounding}: stricter anchor rules in the prompt usually help more than tuning (a new prompt is a new study)."
        )
    if not candidates and not recs:
        # Nothing the seed names is low, yet the gate is not passed: its first knob is max_steps.
        candidates.append(
            (
                {"max_steps": base["max_steps"] + policy.steps_delta},
                "no sub-metric below its target, gate not passed: max_steps first (the seed's parameter priority)",
            )
        )
    for change, reason in candidates:
        params = {**base, **change}
        key = tuple(params[k] for k in SEED_PARAM_NAMES)
        if key in tried or len(configs) >= policy.max_configs_per_round:
            continue
        tried.add(key)
        configs.append(ProposedConfig(params=params, reason=f"from {best.run_id}: {reason}"))
    return configs, recs


def plan_next(history: History, policy: Policy | None = None) -> Decision:
    policy = policy or Policy()
    t = policy.thresholds
    rounds = sorted(history.rounds, key=lambda r: r.round)
    if not rounds:
        p = policy.round0.seed_view()
        return Decision(
            action="train",
            round=0,
            configs=[
                ProposedConfig(
                    params=p,
                    reason=f"smoke test ({_fmt(p)}): the pipeline must produce an adapter and schema_pass_rate >= {t.smoke_schema}",
                )
            ],
            reason="start with the seed's round 0",
        )
    last = rounds[-1]
    if last.round == 0:
        smoke = last.runs[0]
        if smoke.status == "failed":
            return Decision(
                action="stop",
                round=0,
                reason=f"the smoke run failed: {smoke.failure}",
                recommendations=["Fix the pipeline error above, then start a new study."],
            )
        schema = smoke.metrics.get("schema_pass_rate", 0.0)
        if schema < t.smoke_schema:
            return Decision(
                action="stop",
                round=0,
                selected_run=smoke.run_id,
                reason=f"smoke schema_pass_rate {schema:.3f} < {t.smoke_schema}: fix the prompt and output constraints, not the hyperparameters",
                recommendations=PROMPT_ADVICE,
            )
        smoke_key = tuple(smoke.params[k] for k in SEED_PARAM_NAMES)
        configs = [
            ProposedConfig(params=full_params(policy, c), reason=r)
            for c, r in zip(policy.round1, policy.round1_reasons)
            if tuple(full_params(policy, c)[k] for k in SEED_PARAM_NAMES) != smoke_key
        ]
        return Decision(
            action="train",
            round=1,
            configs=configs,
            reason=f"smoke passed (schema_pass_rate {schema:.3f}); round 1 compares three learning strengths",
        )

    later = [r for r in rounds if r.round >= 1]
    all_runs = [run for r in later for run in r.runs]
    if all(run.status == "failed" for run in last.runs):
        return Decision(
            action="stop",
            round=last.round,
            reason=f"every run of round {last.round} failed: "
            + "; ".join(f"{run.run_id}: {run.failure}" for run in last.runs),
            recommendations=[
                "Read the failure reasons (`sftgate runs`), fix them, and resume or start a new study."
            ],
        )
    best, why = select_best(all_runs, t)
    assert best is not None  # the latest round has a finished run
    if passes_gate(best, t):
        if history.full_eval_run == best.run_id:
            return Decision(
                action="stop",
                round=last.round,
                selected_run=best.run_id,
                reason=f"gate passed by {best.run_id} and its full-set evaluation is done",
            )
        if best.run_id in history.full_eval_failures:
            return Decision(
                action="stop",
                round=last.round,
                selected_run=best.run_id,
                reason=f"gate passed by {best.run_id}, but its full-set evaluation failed: "
                f"{history.full_eval_failures[best.run_id]}",
                recommendations=[
                    "Fix the cause above (for a lack of memory, a smaller decode batch_size), "
                    "then evaluate the adapter with `sftgate eval` on the full set."
                ],
            )
        return Decision(
            action="full_eval",
            round=last.round,
            selected_run=best.run_id,
            reason=f"{best.run_id} passes the gate (eval_score_avg {_score(best):.2f} >= {t.gate_score}, schema_pass_rate {best.metrics['schema_pass_rate']:.3f} >= {t.gate_schema}); evaluate it on the full set",
        )

    # Best score as of each round (cumulative), for the plateau and oscillation rules.
    best_by_round: list[float] = []
    schema_ok_by_round: list[bool] = []
    for r in later:
        b, _ = select_best([run for rr in later if rr.round <= r.round for run in rr.runs], t)
        best_by_round.append(_score(b) if b else float("-inf"))
        schema_ok_by_round.append(
            b is not None and b.metrics.get("schema_pass_rate", 0.0) >= t.gate_schema
        )
    recs_stop = PROMPT_ADVICE + RETRIEVAL_ADVICE
    if len(best_by_round) >= 2:
        # Rounded: 90.3 - 90.0 is 0.29999999999999716 in floating point, not < 0.3.
        gain = round(best_by_round[-1] - best_by_round[-2], 9)
        if gain < t.plateau:
            return Decision(
                action="stop",
                round=last.round,
                selected_run=best.run_id,
                reason=f"plateau: round {last.round} improved the best eval_score_avg by {gain:.2f} < {t.plateau}; {why}",
                recommendations=recs_stop,
            )
        if all(schema_ok_by_round[-2:]) and all(
            t.oscillation_low <= s < t.oscillation_high for s in best_by_round[-2:]
        ):
            return Decision(
                action="stop",
                round=last.round,
                selected_run=best.run_id,
                reason=f"oscillation: the best score stayed in [{t.oscillation_low}, {t.oscillation_high}) for two rounds; {why}",
                recommendations=recs_stop,
            )
    if last.round + 1 >= t.max_rounds:
        return Decision(
            action="stop",
            round=last.round,
            selected_run=best.run_id,
            reason=f"max_rounds ({t.max_rounds}) reached without passing the gate; {why}",
            recommendations=recs_stop,
        )
    tried = {tuple(run.params[k] for k in SEED_PARAM_NAMES) for r in rounds for run in r.runs}
    configs, recs = round2_configs(best, tried, policy)
    if not configs:
        return Decision(
            action="stop",
            round=last.round,
            selected_run=best.run_id,
            reason=f"no parameter change left to try from {best.run_id}; {why}",
            recommendations=recs or recs_stop,
        )
    return Decision(
        action="train",
        round=last.round + 1,
        configs=configs,
        selected_run=best.run_id,
        reason=f"best so far: {why}",
        recommendations=recs,
    )
