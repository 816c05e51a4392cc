"""The planner: a pure function from a study's history to its next step.

`plan_next(history, policy) -> Decision` touches no GPU and no disk. Its default policy is the
seed's strategy (README, "Planner rules"): round 0 smoke, round 1's three configs, selection by
schema then score then grounding within the tie band, small round-2+ steps chosen by the low
sub-metric, and stops on plateau, oscillation, max_rounds or a passed gate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_serializer,
    field_validator,
    model_validator,
)

from sftgate.ceiling import decompose_gap
from sftgate.config import ADDED, StrictModel
from sftgate.params import SEED_PARAM_NAMES, TrainParams
from sftgate.scoring import Metrics, paired_difference


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
    margin: float = Field(
        2.0,
        ge=0,
        description="a model is never perfect: the gate is reachable when the ceiling clears it "
        "by this; the adaptive policy stops when the best run is within this of the ceiling",
        json_schema_extra=ADDED,
    )

    def passes_gate(self, metrics: Metrics | None) -> bool:
        """The gate, the one rule the planner, the report and the CLI use."""
        return (
            metrics is not None
            and metrics.eval_score_avg >= self.gate_score
            and metrics.schema_pass_rate >= self.gate_schema
        )


class Policy(StrictModel):
    kind: Literal["seed", "adaptive"] = Field(
        "seed",
        description="seed: the seed's rules (README, Planner rules); adaptive: learning curves "
        "and paired comparisons decide (README, The adaptive policy)",
        json_schema_extra=ADDED,
    )
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
    checkpoints: list[float] = Field(
        default_factory=list,
        description="fractions of max_steps (0 < f < 1) at which each run's adapter is also "
        "evaluated on the gate set, e.g. [0.25, 0.5, 0.75]: a learning curve per run, which the "
        "adaptive policy reads as evidence about max_steps under lr_scheduler: constant. Each "
        "point costs one gate evaluation",
        json_schema_extra=ADDED,
    )
    budget_minutes: float | None = Field(
        None,
        gt=0,
        description="stop when the runs' training and evaluation time (summed over runs, checkpoint "
        "evaluations included) reaches this; checked between rounds, by either policy",
        json_schema_extra=ADDED,
    )
    max_runs: int | None = Field(
        None,
        ge=1,
        description="stop when this many runs are done (either policy, between rounds)",
        json_schema_extra=ADDED,
    )

    @model_validator(mode="before")
    @classmethod
    def _adaptive_checkpoints(cls, data: Any) -> Any:
        """The adaptive policy reads curves: its runs get checkpoints unless the config says."""
        if isinstance(data, dict) and data.get("kind") == "adaptive":
            data = {"checkpoints": [0.25, 0.5, 0.75], **data}
        return data

    auto_constrain: bool = Field(
        False,
        description="when round 0's schema_pass_rate is below smoke_schema, the stop proposes "
        "this study with `decode.constrain: json_schema` as a new study (its name and YAML in "
        "the recommendations; decode settings are pinned, so it cannot be this study)",
        json_schema_extra=ADDED,
    )
    allow_unreachable: bool = Field(
        False,
        description="search even when the ceiling is below gate_score + thresholds.margin (the "
        "search refuses such a study before round 0 otherwise); recorded with the study, not pinned",
        json_schema_extra=ADDED,
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
        if any(not 0 < f < 1 for f in self.checkpoints):
            raise ValueError(
                f"checkpoints are fractions of max_steps strictly between 0 and 1 (the end is "
                f"always evaluated), but got {self.checkpoints}"
            )
        return self

    def checkpoint_steps(self, max_steps: int) -> list[int]:
        """The steps before the end at which a run of max_steps is also evaluated."""
        return sorted({s for f in self.checkpoints if 0 < (s := round(f * max_steps)) < max_steps})


class CurvePoint(BaseModel):
    """The gate set evaluated at one step of a run (a checkpoint, or the end)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    step: int
    metrics: Metrics
    per_question: dict[str, float] | None = None


class RunRecord(BaseModel):
    """A finished run as the planner sees it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    run_id: str
    params: TrainParams
    status: Literal["done", "failed"]
    metrics: Metrics | None = None  # None for a failed run
    per_question: dict[str, float] | None = None  # id -> eval_score, for the paired comparison
    schema_errors: dict[str, str] | None = None  # id -> why its output failed parse or schema
    failure: str | None = None
    curve: list[CurvePoint] = Field(
        default_factory=list, description="checkpoints before the end, by step"
    )
    seconds: float | None = None  # training + evaluation time, for the adaptive budget

    @field_validator("metrics", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value == {} else value  # a failed run's metrics in a history file: {}

    @model_validator(mode="after")
    def _done_has_metrics(self) -> RunRecord:
        if self.status == "done" and self.metrics is None:
            raise ValueError(f"run {self.run_id} is done but has no metrics")
        return self

    @property
    def score(self) -> float:
        return self.metrics.eval_score_avg if self.metrics else float("-inf")

    @property
    def schema_rate(self) -> float:
        return self.metrics.schema_pass_rate if self.metrics else 0.0

    @property
    def grounding(self) -> float:
        return self.metrics.grounding_avg if self.metrics else 0.0

    def key(self) -> tuple[Any, ...]:
        return seed_key(self.params)


class RoundRecord(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    round: int
    runs: list[RunRecord]


class QuestionFacts(BaseModel):
    """One gate question's ceiling (docs/scoring/ceiling.md) under the study's retrieval."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ceiling: float
    evidence_retrieved: bool
    kinds: list[str]


class RetrievalOption(BaseModel):
    """Another top_k on the study's index: its gate ceiling and p95 prompt + completion tokens."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    top_k: int
    ceiling: float
    length_p95: float


class ReachFacts(BaseModel):
    """The study's ceiling on the gate set, measured before round 0 and stored with the study."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ceiling: float
    context_recall: float | None
    top_k: int | None  # the study's; None with contexts files of its own
    questions: dict[str, QuestionFacts]
    options: list[RetrievalOption] = Field(default_factory=list)


class History(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rounds: list[RoundRecord] = Field(default_factory=list)
    full_eval_run: str | None = None  # the run whose full-set evaluation is done
    full_eval_failures: dict[str, str] = Field(
        default_factory=dict, description="run id -> why its full-set evaluation failed"
    )
    ceiling: float | None = Field(
        None, description="the best gate score the study's retrieval allows (`sftgate ceiling`)"
    )
    reach: ReachFacts | None = Field(
        None, description="the study's ceiling; stop decisions then explain the gap with it"
    )
    study: str | None = Field(None, description="the study's name, for a proposed new study")
    constrain: Literal["none", "json_schema"] = Field(
        "none", description="the study's decode.constrain: its runs were decoded under it"
    )


class ProposedConfig(BaseModel):
    """A complete config; recorded (decisions, runs) as the seven parameters the seed names, since
    every other parameter is round 0's for every run of a study."""

    params: TrainParams
    reason: str

    @field_serializer("params")
    def _seed_view(self, params: TrainParams) -> dict[str, float | int]:
        return params.seed_view()


class Decision(BaseModel):
    action: Literal["train", "full_eval", "stop"]
    round: int
    configs: list[ProposedConfig] = Field(default_factory=list)
    selected_run: str | None = None
    reason: str
    recommendations: list[str] = Field(default_factory=list)
    gap: dict[str, Any] | None = Field(
        None,
        description="a stop's gate - eval_score_avg of the selected run, decomposed into "
        "retrieval, format and model (sftgate.ceiling.decompose_gap)",
    )
    new_study: dict[str, Any] | None = Field(
        None,
        description="a stop's proposal of a new study: its name and the settings that differ "
        "from this study's (policy.auto_constrain)",
    )


PROMPT_ADVICE = [
    "Prompt: demand JSON only more explicitly, limit the number of evidence and anchor items, and require anchors to be copied from the given passages (a new prompt means a new study).",
]
RETRIEVAL_ADVICE = [
    "Retrieval: tune top_k and chunk size, and make source_path more precise (section anchors); check `sftgate index eval` recall first.",
]


def seed_key(params: TrainParams) -> tuple[Any, ...]:
    """What makes two configs the same config for the seed: its seven parameters."""
    return tuple(getattr(params, k) for k in SEED_PARAM_NAMES)


def with_changes(base: TrainParams, changes: Mapping[str, Any]) -> TrainParams:
    return TrainParams.model_validate({**base.model_dump(), **changes})


def _fmt(params: TrainParams) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.seed_view().items())


def score_gap(a: RunRecord, b: RunRecord) -> float:
    """How many eval_score points a is ahead of b: paired mean difference where both have
    per-question scores (on other questions: MismatchError, runs are only compared on one gate
    set), else the difference of the averages."""
    if a.per_question and b.per_question:
        return float(
            paired_difference(b.per_question, a.per_question, n_bootstrap=200)["mean_diff"]
        )
    return a.score - b.score


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
    eligible = [r for r in done if r.schema_rate >= t.gate_schema]
    if not eligible:
        best = max(done, key=lambda r: (r.schema_rate, r.score))
        return best, (
            f"no run reaches schema_pass_rate {t.gate_schema}; {best.run_id} has the highest "
            f"({best.schema_rate:.3f}, eval_score_avg {best.score:.2f})"
        )
    ranked = sorted(eligible, key=lambda r: (-r.score, r.run_id))
    top = ranked[0]
    tied = [r for r in ranked if score_gap(top, r) < t.tie_band]
    best = max(tied, key=lambda r: (r.grounding, r.score, -ranked.index(r)))
    if best is top:
        why = f"{top.run_id} has the highest eval_score_avg ({top.score:.2f})"
        if len(tied) > 1:
            why += f" and the highest grounding_avg within the {t.tie_band}-point tie band"
    else:
        why = f"{best.run_id} is within {t.tie_band} points of {top.run_id} and has the higher grounding_avg ({best.grounding:.3f})"
    return best, why


def round2_configs(
    best: RunRecord, tried: set[tuple[Any, ...]], policy: Policy
) -> tuple[list[ProposedConfig], list[str]]:
    """Small steps from the best run, by which sub-metric is low (the seed's round 2)."""
    t, base = policy.thresholds, best.params
    assert best.metrics is not None
    dd, ev, gr = (
        best.metrics.detailed_description_f1,
        best.metrics.original_evidence,
        best.metrics.grounding_avg,
    )
    candidates: list[tuple[dict[str, Any], str]] = []
    recs: list[str] = []
    if dd < t.low_detailed_description_f1:
        candidates.append(
            (
                {"max_steps": base.max_steps + policy.steps_delta},
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
                {"lr": round(base.lr + policy.lr_delta, 10)},
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
                {"max_steps": base.max_steps + policy.steps_delta},
                "no sub-metric below its target, gate not passed: max_steps first (the seed's parameter priority)",
            )
        )
    configs: list[ProposedConfig] = []
    for change, reason in candidates:
        params = with_changes(base, change)
        key = seed_key(params)
        if key in tried or len(configs) >= policy.max_configs_per_round:
            continue
        tried.add(key)
        configs.append(ProposedConfig(params=params, reason=f"from {best.run_id}: {reason}"))
    return configs, recs


# ---------------------------------------------------------------------- plan_next, stage by stage


def plan_next(history: History, policy: Policy | None = None) -> Decision:
    """The seed's rules in order; the first that applies decides (README, "Planner rules").
    A stop is explained: the gap of its selected run and the recommendations ranked by it."""
    policy = policy or Policy()
    if policy.kind == "adaptive":
        from sftgate.search.adaptive import plan_adaptive

        return explain_stop(plan_adaptive(history, policy), history, policy)
    return explain_stop(seed_rules(history, policy), history, policy)


def seed_rules(history: History, policy: Policy) -> Decision:
    rounds = sorted(history.rounds, key=lambda r: r.round)
    opening = first_rounds(rounds, policy, history)
    if opening is not None:
        return opening
    last = rounds[-1]
    later = [r for r in rounds if r.round >= 1]
    best, why = select_best([run for r in later for run in r.runs], policy.thresholds)
    assert best is not None  # the latest round has a finished run
    if policy.thresholds.passes_gate(best.metrics):
        return gate_passed(best, last.round, history, policy.thresholds)
    stopped = stop_rule(later, best, why, policy.thresholds)
    if stopped:
        return stopped
    spent = spend_stop(history, policy)
    if spent:
        return Decision(
            action="stop",
            round=last.round,
            selected_run=best.run_id,
            reason=f"{spent}; {why}",
            recommendations=PROMPT_ADVICE + RETRIEVAL_ADVICE,
        )
    return next_small_steps(rounds, best, why, policy)


def spend_stop(history: History, policy: Policy) -> str | None:
    """The time and run budgets, checked between rounds (a round under way finishes), by
    either policy; None while neither is set or reached."""
    runs = [run for r in history.rounds for run in r.runs]
    spent = sum(r.seconds or 0.0 for r in runs)
    if policy.budget_minutes is not None and spent >= policy.budget_minutes * 60:
        return f"time budget: the runs took {spent / 60:.1f} min >= {policy.budget_minutes:g}"
    done = sum(r.status == "done" for r in runs)
    if policy.max_runs is not None and done >= policy.max_runs:
        return f"run budget: {done} runs done >= max_runs {policy.max_runs}"
    return None


def first_rounds(
    rounds: Sequence[RoundRecord], policy: Policy, history: History
) -> Decision | None:
    """What every policy decides alike: round 0, round 1, and a stop when every run of the
    latest round failed; None after that."""
    if not rounds:
        return smoke_round(policy)
    if rounds[-1].round == 0:
        return after_smoke(rounds[-1], policy, history)
    last = rounds[-1]
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
    return None


def smoke_round(policy: Policy) -> Decision:
    p = policy.round0
    return Decision(
        action="train",
        round=0,
        configs=[
            ProposedConfig(
                params=p,
                reason=f"smoke test ({_fmt(p)}): the pipeline must produce an adapter and schema_pass_rate >= {policy.thresholds.smoke_schema}",
            )
        ],
        reason="start with the seed's round 0",
    )


def after_smoke(round0: RoundRecord, policy: Policy, history: History) -> Decision:
    """Stop on a failed or format-breaking smoke run, else round 1's configs."""
    t, smoke = policy.thresholds, round0.runs[0]
    if smoke.status == "failed":
        return Decision(
            action="stop",
            round=0,
            reason=f"the smoke run failed: {smoke.failure}",
            recommendations=["Fix the pipeline error above, then start a new study."],
        )
    if smoke.schema_rate < t.smoke_schema:
        return format_stop(smoke, policy, history)
    proposed = [
        ProposedConfig(params=with_changes(policy.round0, c), reason=r)
        for c, r in zip(policy.round1, policy.round1_reasons)
    ]
    return Decision(
        action="train",
        round=1,
        configs=[c for c in proposed if seed_key(c.params) != smoke.key()],
        reason=f"smoke passed (schema_pass_rate {smoke.schema_rate:.3f}); round 1 compares three learning strengths",
    )


def format_stop(smoke: RunRecord, policy: Policy, history: History) -> Decision:
    """The seed's round-0 stop: fix the output constraints, not the hyperparameters. Where the
    study allows it (policy.auto_constrain) and its runs were not constrained, the stop proposes
    the same study decoded under the schema's grammar, as a new study: decode settings are pinned."""
    t = policy.thresholds
    reason = (
        f"smoke schema_pass_rate {smoke.schema_rate:.3f} < {t.smoke_schema}: fix the prompt "
        "and output constraints, not the hyperparameters"
    )
    stop = Decision(
        action="stop", round=0, selected_run=smoke.run_id, reason=reason, recommendations=[]
    )
    if history.constrain == "json_schema":
        advice = (
            "Output constraints: this study already decodes under the eval JSON v2 grammar "
            "(decode.constrain: json_schema), so its schema failures are answers cut at "
            "decode.max_new_tokens: raise it, or demand shorter answers in the prompt (a new study)."
        )
        return stop.model_copy(update={"recommendations": [advice, *PROMPT_ADVICE]})
    if not policy.auto_constrain:
        advice = (
            "Output constraints: `decode.constrain: json_schema` decodes under the eval JSON v2 "
            "grammar, so every finished answer parses and passes the schema (a new study; "
            "`policy.auto_constrain: true` has the planner propose it)."
        )
        return stop.model_copy(update={"recommendations": [*PROMPT_ADVICE, advice]})
    name = f"{history.study or 'STUDY'}-constrained"
    advice = (
        f"Output constraints (policy.auto_constrain): start the new study `{name}`, this study's "
        f"config with `name: {name}` and `decode: {{constrain: json_schema}}`; every finished "
        "answer then parses and passes the schema (decode settings are pinned: a new study)."
    )
    proposal = {"name": name, "decode": {"constrain": "json_schema"}}
    update = {"recommendations": [advice, *PROMPT_ADVICE], "new_study": proposal}
    return stop.model_copy(update=update)


def gate_passed(best: RunRecord, round_: int, history: History, t: Thresholds) -> Decision:
    """The full set for the gate-passing run, then stop."""
    if history.full_eval_run == best.run_id:
        return Decision(
            action="stop",
            round=round_,
            selected_run=best.run_id,
            reason=f"gate passed by {best.run_id} and its full-set evaluation is done",
        )
    if best.run_id in history.full_eval_failures:
        return Decision(
            action="stop",
            round=round_,
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
        round=round_,
        selected_run=best.run_id,
        reason=f"{best.run_id} passes the gate (eval_score_avg {best.score:.2f} >= {t.gate_score}, schema_pass_rate {best.schema_rate:.3f} >= {t.gate_schema}); evaluate it on the full set",
    )


def stop_rule(
    later: Sequence[RoundRecord], best: RunRecord, why: str, t: Thresholds
) -> Decision | None:
    """Plateau, oscillation or the round budget; None when the search goes on."""
    last = later[-1].round
    # Best score as of each round (cumulative), for the plateau and oscillation rules.
    best_by_round: list[float] = []
    schema_ok_by_round: list[bool] = []
    for r in later:
        b, _ = select_best([run for rr in later if rr.round <= r.round for run in rr.runs], t)
        best_by_round.append(b.score if b else float("-inf"))
        schema_ok_by_round.append(b is not None and b.schema_rate >= t.gate_schema)

    def stop(reason: str) -> Decision:
        return Decision(
            action="stop",
            round=last,
            selected_run=best.run_id,
            reason=reason,
            recommendations=PROMPT_ADVICE + RETRIEVAL_ADVICE,
        )

    if len(best_by_round) >= 2:
        # Rounded: 90.3 - 90.0 is 0.29999999999999716 in floating point, not < 0.3.
        gain = round(best_by_round[-1] - best_by_round[-2], 9)
        if gain < t.plateau:
            return stop(
                f"plateau: round {last} improved the best eval_score_avg by {gain:.2f} < {t.plateau}; {why}"
            )
        if all(schema_ok_by_round[-2:]) and all(
            t.oscillation_low <= s < t.oscillation_high for s in best_by_round[-2:]
        ):
            return stop(
                f"oscillation: the best score stayed in [{t.oscillation_low}, {t.oscillation_high}) for two rounds; {why}"
            )
    if last + 1 >= t.max_rounds:
        return stop(f"max_rounds ({t.max_rounds}) reached without passing the gate; {why}")
    return None


def next_small_steps(
    rounds: Sequence[RoundRecord], best: RunRecord, why: str, policy: Policy
) -> Decision:
    """Round 2+: small steps from the best run, or stop when none is left."""
    last = rounds[-1].round
    tried = {run.key() for r in rounds for run in r.runs}
    configs, recs = round2_configs(best, tried, policy)
    if not configs:
        return Decision(
            action="stop",
            round=last,
            selected_run=best.run_id,
            reason=f"no parameter change left to try from {best.run_id}; {why}",
            recommendations=recs or PROMPT_ADVICE + RETRIEVAL_ADVICE,
        )
    return Decision(
        action="train",
        round=last + 1,
        configs=configs,
        selected_run=best.run_id,
        reason=f"best so far: {why}",
        recommendations=recs,
    )


# ---------------------------------------------------------------------- the gap, explained


def _find_run(history: History, run_id: str | None) -> RunRecord | None:
    return next((r for rd in history.rounds for r in rd.runs if r.run_id == run_id), None)


def run_gap(history: History, run_id: str | None, gate_score: float) -> dict[str, Any] | None:
    """The gap decomposition of one scored run (None without a ceiling or per-question scores)."""
    reach, run = history.reach, _find_run(history, run_id)
    if reach is None or run is None or not run.per_question:
        return None
    if set(run.per_question) != set(reach.questions):
        return None  # scored on other questions than the ceiling (a hand-made history)
    return decompose_gap(
        gate_score=gate_score,
        ceilings={q: f.ceiling for q, f in reach.questions.items()},
        evidence_retrieved={q: f.evidence_retrieved for q, f in reach.questions.items()},
        kinds={q: f.kinds for q, f in reach.questions.items()},
        scores=run.per_question,
        schema_errors=run.schema_errors or {},
    )


def explain_stop(decision: Decision, history: History, policy: Policy) -> Decision:
    """A stop with a scored selected run and a known ceiling gets the gap decomposition, and the
    seed's generic recommendations become ranked ones with their numbers and next steps."""
    t = policy.thresholds
    gap = (
        run_gap(history, decision.selected_run, t.gate_score) if decision.action == "stop" else None
    )
    if gap is None or history.reach is None:
        return decision
    run = _find_run(history, decision.selected_run)
    if run is not None and t.passes_gate(run.metrics):
        return decision.model_copy(update={"gap": gap})
    generic = set(PROMPT_ADVICE + RETRIEVAL_ADVICE)
    others = [r for r in decision.recommendations if r not in generic]
    ranked = ranked_recommendations(gap, history.reach, policy)
    return decision.model_copy(update={"gap": gap, "recommendations": ranked + others})


def _needed_max_length(tokens: float, policy: Policy) -> str:
    fits = sorted(m for m in (policy.round0.max_length, policy.long_max_length) if m >= tokens)
    return f"max_length {fits[0]}" if fits else f"max_length above {tokens:,.0f}"


def ranked_recommendations(gap: dict[str, Any], reach: ReachFacts, policy: Policy) -> list[str]:
    """Retrieval, format and model advice, most points lost first, each with its numbers."""
    r, f, m = gap["retrieval"], gap["format"], gap["model"]
    better = [o for o in reach.options if o.ceiling > reach.ceiling]
    step = "`sftgate index tune --config STUDY.yaml` tries top_k and chunk sizes"
    if better:
        o = max(better, key=lambda o: o.ceiling)
        step = (
            f"top_k {o.top_k} raises the ceiling from {reach.ceiling:.1f} to {o.ceiling:.1f} "
            f"(p95 prompt + completion {o.length_p95:,.0f} tokens: needs "
            f"{_needed_max_length(o.length_p95, policy)}); " + step
        )
    retrieval = (
        f"Retrieval ({r['points']:.1f} points): {r['questions_missing_evidence']} of "
        f"{len(reach.questions)} gate questions miss some evidence in their passages (ceiling "
        f"{reach.ceiling:.2f}, {r['gate_minus_ceiling']:+.2f} from the gate; "
        f"{r['lost_on_missing_evidence']:.1f} more points lost on those questions); {step} "
        "(a new retrieval is a new study)."
    )
    if f["questions"]:
        reason, points = next(iter(f["by_reason"].items()))
        form = (
            f"Format ({f['points']:.1f} points): {f['questions']} output(s) failed parse or "
            f"schema, most with {reason!r} ({points:.1f} points). " + PROMPT_ADVICE[0]
        )
    else:
        form = "Format (0.0 points): every output parsed and passed the schema."
    model = (
        f"Model ({m['points']:.1f} points) on {m['questions']} questions whose evidence was "
        f"retrieved and whose output parsed: train longer or slightly hotter (max_steps + "
        f"{policy.steps_delta}, lr + {policy.lr_delta:g}) or start from a stronger base model."
    )
    ranked = sorted(
        [(r["points"], retrieval), (f["points"], form), (m["points"], model)], key=lambda x: -x[0]
    )
    return [text for _, text in ranked]
