"""The registry: studies, runs and the planner's decisions in SQLite. Every reported number comes from here.

WAL journal, one transaction per write, and a schema built from an append-only list of
migrations (never edit one that has shipped; add a new one).
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sftgate.errors import MismatchError, SftgateError
from sftgate.paths import data_dir
from sftgate.scoring import QuestionScore

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
RUN_STATES = ("planned", "training", "evaluating", "done", "failed")
METRIC_COLUMNS = (
    "eval_score_avg",
    "schema_pass_rate",
    "grounding_avg",
    "detailed_description_f1",
    "original_evidence",
    "answer_f1",
    "context_recall",
)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def default_path() -> Path:
    return data_dir() / "registry.sqlite"


@dataclass(frozen=True)
class Study:
    id: str
    name: str
    pins: dict[str, str]
    config_path: str
    config: dict[str, Any]
    status: str
    created_at: str


class Registry:
    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else default_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA foreign_keys=ON")
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
        )

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

    def set_study_status(self, study_id: str, status: str) -> None:
        with self.tx() as db:
            db.execute("UPDATE studies SET status = ? WHERE id = ?", (status, study_id))

    # ------------------------------------------------------------------ runs

    def record_decision(
        self,
        study: Study,
        decision: Mapping[str, Any],
        configs: list[tuple[dict[str, Any], str]] | None = None,
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
        self, study: Study, round_: int, configs: list[tuple[dict[str, Any], str]]
    ) -> list[str]:
        """Insert a round's planned runs (idempotent: an existing round is returned as is)."""
        with self.tx() as db:
            return self._add_round(db, study, round_, configs)

    def _add_round(
        self,
        db: sqlite3.Connection,
        study: Study,
        round_: int,
        configs: list[tuple[dict[str, Any], str]],
    ) -> list[str]:
        existing = db.execute(
            "SELECT id FROM runs WHERE study_id = ? AND round = ? ORDER BY position",
            (study.id, round_),
        ).fetchall()
        if existing:
            return [r["id"] for r in existing]
        ids = []
        for pos, (params, reason) in enumerate(configs):
            run_id = f"r{round_}-{pos}-{uuid.uuid4().hex[:6]}"
            ids.append(run_id)
            db.execute(
                "INSERT INTO runs (id, study_id, round, position, params_json, reason, status, model_id, prompt_version, prompt_sha256, index_version, eval_set_version, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, 'planned', ?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    study.id,
                    round_,
                    pos,
                    json.dumps(params),
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

    def update_run(self, run_id: str, **fields: Any) -> None:
        if "status" in fields and fields["status"] not in RUN_STATES:
            raise ValueError(f"unknown run status {fields['status']!r}")
        cols = {
            k: (json.dumps(v, ensure_ascii=False) if k.endswith("_json") else v)
            for k, v in fields.items()
        }
        cols["updated_at"] = now()
        with self.tx() as db:
            db.execute(
                f"UPDATE runs SET {', '.join(f'{k} = ?' for k in cols)} WHERE id = ?",
                (*cols.values(), run_id),
            )

    def record_metrics(self, run_id: str, metrics: Mapping[str, Any], **fields: Any) -> None:
        lo, hi = metrics["eval_score_ci95"]
        self.update_run(
            run_id,
            **{k: metrics[k] for k in METRIC_COLUMNS},
            eval_score_ci_low=lo,
            eval_score_ci_high=hi,
            metrics_json=dict(metrics),
            **fields,
        )

    def run(self, run_id: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        return _row(row) if row else None

    def runs(
        self, study_id: str | None = None, *, round_: int | None = None
    ) -> list[dict[str, Any]]:
        sql, args = "SELECT * FROM runs WHERE 1=1", list[Any]()
        if study_id is not None:
            sql += " AND study_id = ?"
            args.append(study_id)
        if round_ is not None:
            sql += " AND round = ?"
            args.append(round_)
        return [_row(r) for r in self.db.execute(sql + " ORDER BY round, position", args)]

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

    def record_question_scores(
        self, run_id: str, split: str, scores: Sequence[QuestionScore]
    ) -> None:
        with self.tx() as db:
            db.execute(
                "DELETE FROM question_scores WHERE run_id = ? AND split = ?", (run_id, split)
            )
            db.executemany(
                "INSERT INTO question_scores (run_id, split, question_id, schema_ok, schema_error, "
                "answer_f1, detailed_description_f1, original_evidence, grounding, context_recall, "
                "eval_score) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        run_id,
                        split,
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
                    for s in scores
                ],
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


def comparable(a: Mapping[str, Any], b: Mapping[str, Any]) -> None:
    """Refuse to compare two runs of different studies or evaluated under different pins."""
    keys = ("study_id", "model_id", "prompt_sha256", "index_version", "eval_set_version")
    diff = [f"{k}: {a[k][:12]} vs {b[k][:12]}" for k in keys if a[k] != b[k]]
    if diff:
        raise MismatchError(f"runs {a['id']} and {b['id']} are not comparable ({'; '.join(diff)})")
