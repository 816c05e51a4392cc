"""The registry: studies, runs and the planner's decisions in SQLite. Every reported number comes from here.

WAL journal, one transaction per write, and a schema built from an append-only list of
migrations (never edit one that has shipped; add a new one).
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any

from sftgate.errors import InputError, MismatchError, Problem, SftgateError
from sftgate.params import TrainParams
from sftgate.paths import data_dir
from sftgate.scoring import METRIC_KEYS, Metrics, QuestionScore
from sftgate.search.planner import CurvePoint

MIGRATIONS: list[str] = [
    # 1: studies, runs, decisions
    """
    CREATE TABLE studies (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        created_at TEXT NOT NULL,
        config_path TEXT NOT NULL,
        config_json TEXT NOT NULL,
        pins_json TEXT NOT NULL,
        model_id TEXT NOT NULL,
        prompt_version TEXT NOT NULL,
        prompt_sha256 TEXT NOT NULL,
        index_version TEXT NOT NULL,
        train_set_version TEXT NOT NULL,
        gate_set_version TEXT NOT NULL,
        full_set_version TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'running'
    );
    CREATE TABLE runs (
        id TEXT PRIMARY KEY,
        study_id TEXT NOT NULL REFERENCES studies(id),
        round INTEGER NOT NULL,
        position INTEGER NOT NULL,
        params_json TEXT NOT NULL,
        reason TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('planned', 'training', 'evaluating', 'done', 'failed')),
        model_id TEXT NOT NULL,
        prompt_version TEXT NOT NULL,
        prompt_sha256 TEXT NOT NULL,
        index_version TEXT NOT NULL,
        eval_set_version TEXT NOT NULL,
        adapter_id TEXT,
        adapter_path TEXT,
        gate_dir TEXT,
        eval_score_avg REAL,
        schema_pass_rate REAL,
        grounding_avg REAL,
        detailed_description_f1 REAL,
        original_evidence REAL,
        answer_f1 REAL,
        context_recall REAL,
        eval_score_ci_low REAL,
        eval_score_ci_high REAL,
        metrics_json TEXT,
        train_meta_json TEXT,
        eval_meta_json TEXT,
        full_dir TEXT,
        full_metrics_json TEXT,
        failure TEXT,
        train_s REAL,
        eval_s REAL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        UNIQUE (study_id, round, position)
    );
    CREATE TABLE decisions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        study_id TEXT NOT NULL REFERENCES studies(id),
        round INTEGER NOT NULL,
        action TEXT NOT NULL,
        decision_json TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    """,
    # 2: the full-set evaluation's own state, and per-question scores for paired comparisons
    """
    ALTER TABLE runs ADD COLUMN full_status TEXT
        CHECK (full_status IS NULL OR full_status IN ('evaluating', 'done', 'failed'));
    ALTER TABLE runs ADD COLUMN full_eval_set_version TEXT;
    ALTER TABLE runs ADD COLUMN full_failure TEXT;
    ALTER TABLE runs ADD COLUMN full_eval_s REAL;
    CREATE TABLE question_scores (
        run_id TEXT NOT NULL REFERENCES runs(id),
        split TEXT NOT NULL CHECK (split IN ('gate', 'full')),
        question_id TEXT NOT NULL,
        schema_ok INTEGER NOT NULL,
        schema_error TEXT,
        answer_f1 REAL NOT NULL,
        detailed_description_f1 REAL NOT NULL,
        original_evidence REAL NOT NULL,
        grounding REAL NOT NULL,
        context_recall REAL,
        eval_score REAL NOT NULL,
        PRIMARY KEY (run_id, split, question_id)
    );
    """,
    # 3: runs on other processes and nodes: where each ran, and failures that were not the run's
    # own (its worker or node died), which resuming the study runs again
    """
    ALTER TABLE runs ADD COLUMN worker_json TEXT;
    ALTER TABLE runs ADD COLUMN lost INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE runs ADD COLUMN full_lost INTEGER NOT NULL DEFAULT 0;
    """,
    # 4: learning curves: a run's adapter evaluated on the gate set at checkpoints before its end
    """
    CREATE TABLE curve_points (
        run_id TEXT NOT NULL REFERENCES runs(id),
        step INTEGER NOT NULL,
        metrics_json TEXT NOT NULL,
        eval_dir TEXT NOT NULL,
        PRIMARY KEY (run_id, step)
    );
    CREATE TABLE curve_scores (
        run_id TEXT NOT NULL REFERENCES runs(id),
        step INTEGER NOT NULL,
        question_id TEXT NOT NULL,
        schema_ok INTEGER NOT NULL,
        schema_error TEXT,
        answer_f1 REAL NOT NULL,
        detailed_description_f1 REAL NOT NULL,
        original_evidence REAL NOT NULL,
        grounding REAL NOT NULL,
        context_recall REAL,
        eval_score REAL NOT NULL,
        PRIMARY KEY (run_id, step, question_id)
    );
    """,
    # 5: one writer per study: the search holding a study's lease (host, pid, start, heartbeat),
    # and a log of study events (lease taken, taken over from a killed search, released; failed
    # runs re-planned on purpose); a run held back by a failure of its environment keeps the cause
    """
    CREATE TABLE leases (
        study_name TEXT PRIMARY KEY,
        token TEXT NOT NULL,
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        started_at TEXT NOT NULL,
        heartbeat_at TEXT NOT NULL
    );
    CREATE TABLE study_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        study_name TEXT NOT NULL,
        event TEXT NOT NULL,
        detail_json TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    ALTER TABLE runs ADD COLUMN environment_failure TEXT;
    """,
    # 6: the study's ceiling and token budget (`sftgate ceiling`), measured before round 0
    """
    ALTER TABLE studies ADD COLUMN reach_json TEXT;
    """,
]

PIN_KEYS = (
    "model_id",
    "prompt_version",
    "prompt_sha256",
    "index_version",
    "train_set_version",
    "gate_set_version",
    "full_set_version",
)
METRIC_COLUMNS = METRIC_KEYS  # one column per aggregate metric
# Run fields that are their column's value as recorded (the `*_json` columns decoded).
_AS_RECORDED = (
    "id",
    "study_id",
    "round",
    "position",
    "reason",
    "model_id",
    "prompt_version",
    "prompt_sha256",
    "index_version",
    "eval_set_version",
    "adapter_id",
    "adapter_path",
    "gate_dir",
    "train_meta",
    "eval_meta",
    "failure",
    "train_s",
    "eval_s",
    "worker",
    "created_at",
    "updated_at",
)


class RunState(str, Enum):
    """A run's life: planned -> training -> evaluating -> done, or failed at any stage."""

    PLANNED = "planned"
    TRAINING = "training"
    EVALUATING = "evaluating"
    DONE = "done"
    FAILED = "failed"


class FullState(str, Enum):
    """The full-set evaluation of a gate-passing run."""

    EVALUATING = "evaluating"
    DONE = "done"
    FAILED = "failed"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def default_path() -> Path:
    return data_dir() / "registry.sqlite"


def new_run_id(round_: int, position: int) -> str:
    return f"r{round_}-{position}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class Study:
    id: str
    name: str
    pins: dict[str, str]
    config_path: str
    config: dict[str, Any]
    status: str
    created_at: str
    reach: dict[str, Any] | None = None  # sftgate.reach.Reach.to_json(), with per-question rows

    @property
    def round0(self) -> TrainParams:
        """Round 0's parameters: every run's parameters the seed does not name."""
        return TrainParams.model_validate(self.config.get("policy", {}).get("round0", {}))

    @property
    def constrain(self) -> str:
        """The study's decode.constrain (pinned: every run of the study was decoded so)."""
        return str((self.config.get("decode") or {}).get("constrain", "none"))


@dataclass(frozen=True)
class Checkpoint:
    """A run's adapter at one step before its end, evaluated on the gate set."""

    step: int
    metrics: Metrics
    scores: list[QuestionScore]
    eval_dir: str


@dataclass(frozen=True)
class Lease:
    """Who is searching a study: the one process allowed to write it."""

    token: str  # this holding's own id: only its holder heartbeats and releases it
    host: str
    pid: int
    started_at: str
    heartbeat_at: str

    def as_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "token"}


@dataclass(frozen=True)
class FullEval:
    state: FullState
    dir: str | None
    metrics: Metrics | None
    eval_set_version: str | None
    failure: str | None
    eval_s: float | None
    lost: bool


@dataclass(frozen=True)
class Run:
    """One run as recorded (a frozen view of its row)."""

    id: str
    study_id: str
    round: int
    position: int
    params: TrainParams  # round 0's, with the seven seed parameters the planner chose
    reason: str
    state: RunState
    lost: bool  # failed because its worker died: a resumed study runs it again
    model_id: str
    prompt_version: str
    prompt_sha256: str
    index_version: str
    eval_set_version: str
    adapter_id: str | None
    adapter_path: str | None
    gate_dir: str | None
    metrics: Metrics | None
    train_meta: dict[str, Any] | None
    eval_meta: dict[str, Any] | None
    failure: str | None
    train_s: float | None
    eval_s: float | None
    worker: dict[str, Any] | None
    full: FullEval | None
    created_at: str
    updated_at: str

    @property
    def status(self) -> str:
        """As `sftgate runs` and the report show it."""
        return self.state.value + (" (lost)" if self.lost else "")


class Registry:
    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else default_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self._round0: dict[str, TrainParams] = {}  # study id -> its round 0 (runs' other params)
        self.migrate()

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def schema_version(self) -> int:
        self.db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = self.db.execute("SELECT MAX(version) FROM schema_version").fetchone()
        return int(row[0] or 0)

    def migrate(self) -> None:
        current = self.schema_version()
        if current > len(MIGRATIONS):
            raise SftgateError(
                f"{self.path} was written by a newer sftgate (schema {current} > {len(MIGRATIONS)}); upgrade sftgate"
            )
        for version, sql in enumerate(MIGRATIONS[current:], start=current + 1):
            with self.tx() as db:
                for statement in filter(str.strip, sql.split(";")):
                    db.execute(statement)
                db.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))

    # ------------------------------------------------------------------ studies

    def study(self, name: str) -> Study | None:
        row = self.db.execute(
            "SELECT * FROM studies WHERE name = ? OR id = ?", (name, name)
        ).fetchone()
        if row is None:
            return None
        return Study(
            row["id"],
            row["name"],
            json.loads(row["pins_json"]),
            row["config_path"],
            json.loads(row["config_json"]),
            row["status"],
            row["created_at"],
            json.loads(row["reach_json"]) if row["reach_json"] else None,
        )

    def require_study(self, name: str) -> Study:
        """The study called `name` (or with that id); an InputError naming the known ones if none."""
        study = self.study(name)
        if study is None:
            names = ", ".join(s.name for s in self.studies()) or "none"
            raise InputError(
                Problem(str(self.path), name, "study", "no such study", f"known studies: {names}")
            )
        return study

    def studies(self) -> list[Study]:
        names = [r["name"] for r in self.db.execute("SELECT name FROM studies ORDER BY created_at")]
        return [s for s in map(self.study, names) if s is not None]

    def open_study(
        self, name: str, pins: Mapping[str, str], config_path: str, config: Mapping[str, Any]
    ) -> tuple[Study, bool]:
        """The study called `name`, created with these pins if new. (study, created).

        An existing study whose pins differ is refused: changed inputs make a new study.
        """
        existing = self.study(name)
        if existing is not None:
            check_pins(existing, pins)
            return existing, False
        study_id = uuid.uuid4().hex[:12]
        with self.tx() as db:
            db.execute(
                "INSERT INTO studies (id, name, created_at, config_path, config_json, pins_json, "
                + ", ".join(PIN_KEYS)
                + ") VALUES (?, ?, ?, ?, ?, ?"
                + ", ?" * len(PIN_KEYS)
                + ")",
                (
                    study_id,
                    name,
                    now(),
                    config_path,
                    json.dumps(config, ensure_ascii=False),
                    json.dumps(dict(pins)),
                    *(pins[k] for k in PIN_KEYS),
                ),
            )
        study = self.study(name)
        assert study is not None
        return study, True

    def set_study_reach(self, study_id: str, reach: Mapping[str, Any]) -> None:
        with self.tx() as db:
            db.execute(
                "UPDATE studies SET reach_json = ? WHERE id = ?",
                (json.dumps(dict(reach), ensure_ascii=False), study_id),
            )

    def set_study_status(self, study_id: str, status: str) -> None:
        with self.tx() as db:
            db.execute("UPDATE studies SET status = ? WHERE id = ?", (status, study_id))

    # ------------------------------------------------------------------ one writer per study

    def take_lease(
        self, study_name: str, me: Lease, stale: Callable[[Lease], bool]
    ) -> Lease | None:
        """Take the study's lease for `me` (in one transaction, so that of two searches started
        together one wins): None when taken, a stale holder's lease taken over and the takeover
        logged; else the live holder, whose lease is left as it is."""
        with self.tx() as db:
            row = db.execute("SELECT * FROM leases WHERE study_name = ?", (study_name,)).fetchone()
            if row is not None:
                holder = Lease(**{k: row[k] for k in Lease.__dataclass_fields__})
                if not stale(holder):
                    return holder
                db.execute("DELETE FROM leases WHERE study_name = ?", (study_name,))
                detail = {"from": holder.as_json(), "by": me.as_json()}
                self._event(db, study_name, "lease taken over", detail)
            else:
                self._event(db, study_name, "lease taken", me.as_json())
            db.execute(
                "INSERT INTO leases (study_name, token, host, pid, started_at, heartbeat_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (study_name, me.token, me.host, me.pid, me.started_at, me.heartbeat_at),
            )
        return None

    def heartbeat(self, study_name: str, token: str) -> bool:
        """Renew the lease; False when it is no longer this holder's (taken over)."""
        with self.tx() as db:
            cursor = db.execute(
                "UPDATE leases SET heartbeat_at = ? WHERE study_name = ? AND token = ?",
                (now(), study_name, token),
            )
        return cursor.rowcount == 1

    def release_lease(self, study_name: str, token: str) -> None:
        with self.tx() as db:
            row = db.execute(
                "SELECT * FROM leases WHERE study_name = ? AND token = ?", (study_name, token)
            ).fetchone()
            if row is None:
                return
            db.execute("DELETE FROM leases WHERE study_name = ?", (study_name,))
            held = Lease(**{k: row[k] for k in Lease.__dataclass_fields__})
            self._event(db, study_name, "lease released", held.as_json())

    def lease(self, study_name: str) -> Lease | None:
        row = self.db.execute("SELECT * FROM leases WHERE study_name = ?", (study_name,)).fetchone()
        return Lease(**{k: row[k] for k in Lease.__dataclass_fields__}) if row else None

    def _event(
        self, db: sqlite3.Connection, study_name: str, event: str, detail: Mapping[str, Any]
    ) -> None:
        db.execute(
            "INSERT INTO study_events (study_name, event, detail_json, created_at) "
            "VALUES (?, ?, ?, ?)",
            (study_name, event, json.dumps(detail, ensure_ascii=False), now()),
        )

    def events(self, study_name: str) -> list[dict[str, Any]]:
        """The study's log: lease taken / taken over / released, failed runs re-planned."""
        rows = self.db.execute(
            "SELECT event, detail_json, created_at FROM study_events WHERE study_name = ? "
            "ORDER BY id",
            (study_name,),
        ).fetchall()
        return [
            {"event": r["event"], "detail": json.loads(r["detail_json"]), "at": r["created_at"]}
            for r in rows
        ]

    # ------------------------------------------------------------------ runs

    def record_decision(
        self,
        study: Study,
        decision: Mapping[str, Any],
        configs: Sequence[tuple[TrainParams, str]] | None = None,
    ) -> list[str]:
        """The planner's decision and, for a train decision, its round's planned runs, in one
        transaction: a crash never leaves a decision without its runs. Idempotent: a resumed
        search that re-derives the same decision adds nothing."""
        with self.tx() as db:
            self._add_decision(db, study.id, decision)
            if configs is None:
                return []
            return self._add_round(db, study, int(decision["round"]), configs)

    def add_round(
        self, study: Study, round_: int, configs: Sequence[tuple[TrainParams, str]]
    ) -> list[str]:
        """Insert a round's planned runs (idempotent: an existing round is returned as is)."""
        with self.tx() as db:
            return self._add_round(db, study, round_, configs)

    def _add_round(
        self,
        db: sqlite3.Connection,
        study: Study,
        round_: int,
        configs: Sequence[tuple[TrainParams, str]],
    ) -> list[str]:
        existing = db.execute(
            "SELECT id FROM runs WHERE study_id = ? AND round = ? ORDER BY position",
            (study.id, round_),
        ).fetchall()
        if existing:
            return [r["id"] for r in existing]
        ids = []
        for pos, (params, reason) in enumerate(configs):
            run_id = new_run_id(round_, pos)
            ids.append(run_id)
            db.execute(
                "INSERT INTO runs (id, study_id, round, position, params_json, reason, status, model_id, prompt_version, prompt_sha256, index_version, eval_set_version, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, 'planned', ?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    study.id,
                    round_,
                    pos,
                    # The seed's seven: the others are round 0's for every run of the study.
                    json.dumps(params.seed_view()),
                    reason,
                    study.pins["model_id"],
                    study.pins["prompt_version"],
                    study.pins["prompt_sha256"],
                    study.pins["index_version"],
                    study.pins["gate_set_version"],
                    now(),
                    now(),
                ),
            )
        return ids

    def _update(self, db: sqlite3.Connection, run_id: str, **fields: Any) -> None:
        cols = {
            k: (json.dumps(v, ensure_ascii=False) if k.endswith("_json") else v)
            for k, v in fields.items()
        }
        cols["updated_at"] = now()
        db.execute(
            f"UPDATE runs SET {', '.join(f'{k} = ?' for k in cols)} WHERE id = ?",
            (*cols.values(), run_id),
        )

    def set_stage(
        self, run_id: str, state: RunState | None, worker: Mapping[str, Any] | None = None
    ) -> None:
        """A run's stage (training, evaluating) and where it runs, as its worker reports them."""
        fields: dict[str, Any] = {"worker_json": dict(worker)} if worker else {}
        if state is not None:
            if state not in (RunState.TRAINING, RunState.EVALUATING):
                raise ValueError(f"set_stage() sets training or evaluating, not {state.value}")
            fields["status"] = state.value
        if fields:
            with self.tx() as db:
                self._update(db, run_id, **fields)

    def record_done(
        self,
        run_id: str,
        metrics: Metrics,
        scores: Sequence[QuestionScore],
        curve: Sequence[Checkpoint] = (),
        **fields: Any,
    ) -> None:
        """A run trained and evaluated on the gate set: its metrics, its per-question scores, its
        checkpoints' and the other columns given (paths, metadata, timings), in one transaction."""
        lo, hi = metrics.eval_score_ci95 or (None, None)
        with self.tx() as db:
            self._write_scores(db, run_id, "gate", scores)
            self._write_curve(db, run_id, curve)
            self._update(
                db,
                run_id,
                **{k: getattr(metrics, k) for k in METRIC_COLUMNS},
                eval_score_ci_low=lo,
                eval_score_ci_high=hi,
                metrics_json=metrics.to_json(),
                status=RunState.DONE.value,
                failure=None,
                **fields,
            )

    def record_failed(self, run_id: str, failure: str, *, lost: bool, **fields: Any) -> None:
        """A run that failed (lost: its worker died), with what is known of it."""
        with self.tx() as db:
            self._update(
                db, run_id, status=RunState.FAILED.value, failure=failure, lost=int(lost), **fields
            )

    def hold_back(self, run_id: str, split: str, cause: str) -> None:
        """A run (or its full-set evaluation) that its environment failed: back to planned (the
        planner asks for the full set again), with the cause kept; a rerun after the fix goes on."""
        with self.tx() as db:
            if split == "full":
                self._update(db, run_id, full_status=None, environment_failure=cause)
            else:
                self._update(db, run_id, status=RunState.PLANNED.value, environment_failure=cause)

    def retry_failed(self, study: Study) -> list[str]:
        """Failed runs (and failed full-set evaluations) of a study planned again, on purpose
        (`sftgate search --retry-failed`): logged with what each had failed with."""
        with self.tx() as db:
            rows = db.execute(
                "SELECT id, status, failure, full_status, full_failure FROM runs "
                "WHERE study_id = ? AND (status = 'failed' OR full_status = 'failed')",
                (study.id,),
            ).fetchall()
            if not rows:
                return []
            failures = {
                r["id"]: r["failure"]
                if r["status"] == "failed"
                else f"full set: {r['full_failure']}"
                for r in rows
            }
            db.execute(
                "UPDATE runs SET status = 'planned', failure = NULL, lost = 0, updated_at = ? "
                "WHERE study_id = ? AND status = 'failed'",
                (now(), study.id),
            )
            db.execute(
                "UPDATE runs SET full_status = NULL, full_failure = NULL, full_lost = 0, "
                "updated_at = ? WHERE study_id = ? AND full_status = 'failed'",
                (now(), study.id),
            )
            db.execute("UPDATE studies SET status = 'running' WHERE id = ?", (study.id,))
            self._event(db, study.name, "failed runs re-planned (--retry-failed)", failures)
        return list(failures)

    def start_full(self, run_id: str) -> None:
        with self.tx() as db:
            self._update(db, run_id, full_status=FullState.EVALUATING.value)

    def record_full_done(
        self,
        run_id: str,
        metrics: Metrics,
        scores: Sequence[QuestionScore],
        *,
        full_dir: str,
        eval_s: float | None,
    ) -> None:
        with self.tx() as db:
            self._write_scores(db, run_id, "full", scores)
            self._update(
                db,
                run_id,
                full_status=FullState.DONE.value,
                full_dir=full_dir,
                full_metrics_json=metrics.to_json(),
                full_eval_set_version=metrics.eval_set_version,
                full_eval_s=eval_s,
                full_failure=None,
            )

    def record_full_failed(self, run_id: str, failure: str, *, lost: bool) -> None:
        with self.tx() as db:
            self._update(
                db,
                run_id,
                full_status=FullState.FAILED.value,
                full_failure=failure,
                full_lost=int(lost),
            )

    def run(self, run_id: str) -> Run | None:
        row = self.db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        return self._run(row) if row else None

    def run_json(self, run_id: str) -> dict[str, Any] | None:
        """Everything recorded about a run, as `sftgate show` prints it: the row, with each
        `*_json` column decoded under its name without the suffix."""
        row = self.db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            return None
        out = _row(row)
        curve = self.curve(run_id)
        if curve:  # the learning curve, when the run has checkpoints
            out["curve"] = [{"step": p.step, "metrics": p.metrics.to_json()} for p in curve]
        return out

    def runs(
        self,
        study_id: str | None = None,
        *,
        round_: int | None = None,
        state: RunState | None = None,
    ) -> list[Run]:
        sql, args = "SELECT * FROM runs WHERE 1=1", list[Any]()
        for column, value in (("study_id", study_id), ("round", round_), ("status", state)):
            if value is not None:
                sql += f" AND {column} = ?"
                args.append(value.value if isinstance(value, Enum) else value)
        return [self._run(r) for r in self.db.execute(sql + " ORDER BY round, position", args)]

    def _run(self, row: sqlite3.Row) -> Run:
        r = _row(row)
        if r["study_id"] not in self._round0:
            study = self.study(r["study_id"])
            assert study is not None  # a foreign key
            self._round0[r["study_id"]] = study.round0
        round0 = self._round0[r["study_id"]]
        full = None
        if r["full_status"] is not None:
            full = FullEval(
                state=FullState(r["full_status"]),
                dir=r["full_dir"],
                metrics=Metrics.model_validate(r["full_metrics"]) if r["full_metrics"] else None,
                eval_set_version=r["full_eval_set_version"],
                failure=r["full_failure"],
                eval_s=r["full_eval_s"],
                lost=bool(r["full_lost"]),
            )
        return Run(
            **{k: r[k] for k in _AS_RECORDED},
            params=TrainParams.model_validate({**round0.model_dump(), **r["params"]}),
            state=RunState(r["status"]),
            lost=bool(r["lost"]),
            metrics=Metrics.model_validate(r["metrics"]) if r["metrics"] else None,
            full=full,
        )

    def reset_interrupted(self, study_id: str) -> list[str]:
        """Runs left in training/evaluating by a killed search, and runs whose worker died (lost),
        go back to planned (they restart); an interrupted or lost full-set evaluation is forgotten
        (the planner asks for it again)."""
        busy = "status IN ('training', 'evaluating') OR (status = 'failed' AND lost = 1)"
        full_busy = "full_status = 'evaluating' OR (full_status = 'failed' AND full_lost = 1)"
        with self.tx() as db:
            rows = db.execute(
                f"SELECT id, lost FROM runs WHERE study_id = ? AND ({busy})", (study_id,)
            ).fetchall()
            db.execute(
                "UPDATE runs SET status = 'planned', lost = 0, failure = NULL, updated_at = ? "
                f"WHERE study_id = ? AND ({busy})",
                (now(), study_id),
            )
            full = db.execute(
                f"SELECT id, full_lost FROM runs WHERE study_id = ? AND ({full_busy})", (study_id,)
            ).fetchall()
            db.execute(
                "UPDATE runs SET full_status = NULL, full_lost = 0, full_failure = NULL, "
                f"updated_at = ? WHERE study_id = ? AND ({full_busy})",
                (now(), study_id),
            )
        return [r["id"] + (" (lost)" if r["lost"] else "") for r in rows] + [
            f"{r['id']} (full set{', lost' if r['full_lost'] else ''})" for r in full
        ]

    # ------------------------------------------------------------------ per-question scores

    def _write_curve(
        self, db: sqlite3.Connection, run_id: str, curve: Sequence[Checkpoint]
    ) -> None:
        db.execute("DELETE FROM curve_points WHERE run_id = ?", (run_id,))
        db.execute("DELETE FROM curve_scores WHERE run_id = ?", (run_id,))
        for point in curve:
            db.execute(
                "INSERT INTO curve_points (run_id, step, metrics_json, eval_dir) VALUES (?, ?, ?, ?)",
                (
                    run_id,
                    point.step,
                    json.dumps(point.metrics.to_json(), ensure_ascii=False),
                    point.eval_dir,
                ),
            )
            db.executemany(
                "INSERT INTO curve_scores (run_id, step, question_id, schema_ok, schema_error, "
                "answer_f1, detailed_description_f1, original_evidence, grounding, "
                "context_recall, eval_score) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(run_id, point.step, *_score_row(s)) for s in point.scores],
            )

    def curve(self, run_id: str) -> list[CurvePoint]:
        """The run's checkpoints, by step, with their per-question scores."""
        points = self.db.execute(
            "SELECT step, metrics_json FROM curve_points WHERE run_id = ? ORDER BY step", (run_id,)
        ).fetchall()
        out = []
        for step, metrics_json in points:
            rows = self.db.execute(
                "SELECT question_id, eval_score FROM curve_scores WHERE run_id = ? AND step = ?",
                (run_id, step),
            ).fetchall()
            out.append(
                CurvePoint(
                    step=step,
                    metrics=Metrics.model_validate(json.loads(metrics_json)),
                    per_question={r[0]: r[1] for r in rows} or None,
                )
            )
        return out

    def _write_scores(
        self, db: sqlite3.Connection, run_id: str, split: str, scores: Sequence[QuestionScore]
    ) -> None:
        db.execute("DELETE FROM question_scores WHERE run_id = ? AND split = ?", (run_id, split))
        db.executemany(
            "INSERT INTO question_scores (run_id, split, question_id, schema_ok, schema_error, "
            "answer_f1, detailed_description_f1, original_evidence, grounding, context_recall, "
            "eval_score) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(run_id, split, *_score_row(s)) for s in scores],
        )

    def question_scores(self, run_id: str, split: str = "gate") -> list[QuestionScore]:
        rows = self.db.execute(
            "SELECT * FROM question_scores WHERE run_id = ? AND split = ? ORDER BY question_id",
            (run_id, split),
        )
        return [
            QuestionScore(
                id=r["question_id"],
                schema_ok=bool(r["schema_ok"]),
                schema_error=r["schema_error"],
                answer_f1=r["answer_f1"],
                detailed_description_f1=r["detailed_description_f1"],
                original_evidence=r["original_evidence"],
                grounding=r["grounding"],
                context_recall=r["context_recall"],
                eval_score=r["eval_score"],
            )
            for r in rows
        ]

    # ------------------------------------------------------------------ decisions

    def add_decision(self, study_id: str, decision: Mapping[str, Any]) -> None:
        with self.tx() as db:
            self._add_decision(db, study_id, decision)

    def _add_decision(
        self, db: sqlite3.Connection, study_id: str, decision: Mapping[str, Any]
    ) -> None:
        last = db.execute(
            "SELECT decision_json FROM decisions WHERE study_id = ? ORDER BY id DESC LIMIT 1",
            (study_id,),
        ).fetchone()
        if last is not None and json.loads(last[0]) == dict(decision):
            return  # a resumed search re-derives the same decision: keep one copy
        db.execute(
            "INSERT INTO decisions (study_id, round, action, decision_json, created_at) VALUES (?, ?, ?, ?, ?)",
            (
                study_id,
                decision["round"],
                decision["action"],
                json.dumps(decision, ensure_ascii=False),
                now(),
            ),
        )

    def decisions(self, study_id: str) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT decision_json, created_at FROM decisions WHERE study_id = ? ORDER BY id",
            (study_id,),
        )
        return [{**json.loads(r[0]), "created_at": r[1]} for r in rows]


def _score_row(s: QuestionScore) -> tuple[Any, ...]:
    """A question score's columns after (run_id, split or step), in the tables' order."""
    return (
        s.id,
        int(s.schema_ok),
        s.schema_error,
        s.answer_f1,
        s.detailed_description_f1,
        s.original_evidence,
        s.grounding,
        s.context_recall,
        s.eval_score,
    )


def check_pins(study: Study, pins: Mapping[str, str]) -> None:
    """Raise MismatchError naming every pinned input that differs from the study's."""
    keys = [*PIN_KEYS, *sorted((set(study.pins) | set(pins)) - set(PIN_KEYS))]
    changed = [
        f"{k} (was {str(study.pins.get(k))[:16]}, now {str(pins.get(k))[:16]})"
        for k in keys
        if study.pins.get(k) != pins.get(k)
    ]
    if changed:
        raise MismatchError(
            f"study '{study.name}' was created with other inputs: {', '.join(changed)}. Results "
            "would not be comparable; give the study a new `name` in the config to start a new "
            "study (the old one stays in the registry), or restore the inputs to resume it"
        )


def _row(row: sqlite3.Row) -> dict[str, Any]:
    out = dict(row)
    for key in list(out):
        if key.endswith("_json") and out[key] is not None:
            out[key.removesuffix("_json")] = json.loads(out.pop(key))
        elif key.endswith("_json"):
            out[key.removesuffix("_json")] = out.pop(key)
    return out


def constrained(run: Run) -> str:
    """The run's decode.constrain, as its gate evaluation recorded it ("none" before it existed)."""
    decoding = (run.eval_meta or {}).get("decoding") or {}
    return str(decoding.get("constrain", "none"))


def comparable(a: Run, b: Run) -> None:
    """Refuse to compare two runs of different studies or evaluated under different pins, or one
    decoded under the schema's grammar with one decoded without it."""
    if constrained(a) != constrained(b):
        raise MismatchError(
            f"runs {a.id} and {b.id} are not comparable: {a.id} was decoded with "
            f"decode.constrain {constrained(a)}, {b.id} with {constrained(b)}; a constrained and "
            "an unconstrained run are never compared (the grammar changes which outputs pass the "
            "schema, so the score difference would not be the models')"
        )
    keys = ("study_id", "model_id", "prompt_sha256", "index_version", "eval_set_version")
    diff = [
        f"{k}: {getattr(a, k)[:12]} vs {getattr(b, k)[:12]}"
        for k in keys
        if getattr(a, k) != getattr(b, k)
    ]
    if diff:
        raise MismatchError(f"runs {a.id} and {b.id} are not comparable ({'; '.join(diff)})")
