"""The files sftgate leaves on disk and reads back: the adapter folder and the evaluation folder.

Adapter folder (`sftgate train --out DIR`), written whole or not at all (into
`DIR.partial-<adapter_id>`, renamed to DIR at the end):
- `adapter_config.json`, `adapter_model.safetensors`: PEFT's own files (`save_pretrained`);
- `sftgate_train.json`: what trained it (README, "Training"); its presence marks a finished adapter.

Evaluation folder (`sftgate eval --out DIR`; README, "Evaluation"):
- `eval_meta.partial.json`: the evaluation's identity (model, adapter, prompt, index, question set,
  decoding) while it is in progress; a restart with the same identity resumes;
- `predictions.jsonl`: one `{"id", "output", "prompt_tokens", "completion_tokens",
  "finish_reason"}` line per question, appended batch by batch, rewritten in question order at
  the end;
- `per_question.jsonl`, `metrics.json`: the scorer's output (`sftgate.scoring`; its rules are
  versioned by `scoring_version`), also what `sftgate score` writes;
- `eval_meta.json`: the identity plus how it ran, written last; with no partial file beside it,
  the evaluation is finished.

The files carry no format version of their own: what their numbers mean is pinned by the values
inside them (`prompt_sha256`, `index_version`, `eval_set_version`, `scoring_version`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sftgate.errors import InputError, MismatchError, Problem, SftgateError
from sftgate.fsutil import atomic_write_json, atomic_write_jsonl, ordinary_modes
from sftgate.scoring import QuestionScore

ADAPTER_METADATA = "sftgate_train.json"
PREDICTIONS = "predictions.jsonl"
PER_QUESTION = "per_question.jsonl"
METRICS = "metrics.json"
EVAL_META = "eval_meta.json"
PARTIAL_EVAL_META = "eval_meta.partial.json"

# The metadata's "quantization" for a base loaded 4-bit (bitsandbytes NF4, double quantisation).
NF4_DOUBLE_QUANT = "nf4-double-quant"


def quantization_label(quantized_4bit: bool) -> str:
    return NF4_DOUBLE_QUANT if quantized_4bit else "none"


# ---------------------------------------------------------------- the adapter folder


def adapter_exists(adapter_dir: str | Path) -> bool:
    """A finished adapter is there (its metadata is written last)."""
    return (Path(adapter_dir) / ADAPTER_METADATA).exists()


def refuse_existing_adapter(adapter_dir: str | Path) -> None:
    """Checked before the work: the rename at the end of `save_adapter` would fail."""
    out = Path(adapter_dir)
    if out.exists():
        what = "an adapter already exists here" if adapter_exists(out) else "exists"
        raise InputError(Problem(str(out), "", "out", what, "choose another --out or delete it"))


def save_adapter(
    model: Any,
    adapter_dir: str | Path,
    metadata: Mapping[str, Any],
    also: Callable[[Path], None] | None = None,
) -> None:
    """The PEFT adapter and its metadata, in `DIR.partial-<adapter_id>` renamed to DIR at the end,
    so an interrupted save leaves nothing that looks complete; `also` writes more into the
    folder before that (its checkpoints)."""
    out = Path(adapter_dir)
    tmp = out.with_name(f"{out.name}.partial-{metadata['adapter_id']}")
    try:
        model.save_pretrained(str(tmp))
        if also is not None:
            also(tmp)
        ordinary_modes(tmp)
        atomic_write_json(tmp / ADAPTER_METADATA, dict(metadata))
        tmp.rename(out)  # only now does `out` exist, complete with its metadata
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def checkpoint_dir(adapter_dir: str | Path, step: int) -> Path:
    """ADAPTER/checkpoints/step-K: the adapter as it was after step K, a PEFT folder itself."""
    return Path(adapter_dir) / "checkpoints" / f"step-{step}"


def write_checkpoint(model: Any, folder: Path, metadata: Mapping[str, Any], step: int) -> None:
    """A checkpoint's PEFT files and the adapter's metadata with its `checkpoint_step`."""
    model.save_pretrained(str(folder))
    ordinary_modes(folder)
    atomic_write_json(folder / ADAPTER_METADATA, {**metadata, "checkpoint_step": step})


def read_adapter_metadata(adapter_dir: str | Path) -> dict[str, Any]:
    path = Path(adapter_dir) / ADAPTER_METADATA
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise InputError(
            Problem(
                str(adapter_dir),
                "",
                ADAPTER_METADATA,
                "not an sftgate adapter (no metadata file)",
                "train it with `sftgate train`",
            )
        ) from None


def trained_4bit(adapter_meta: Mapping[str, Any] | None) -> bool:
    """The adapter was trained on a 4-bit base."""
    return bool(adapter_meta and adapter_meta.get("quantization") == NF4_DOUBLE_QUANT)


# ---------------------------------------------------------------- the evaluation folder


@dataclass(frozen=True)
class EvalResult:
    """A finished evaluation: its folder, metrics, metadata and per-question scores."""

    out_dir: Path
    metrics: dict[str, Any]
    meta: dict[str, Any]
    scores: list[QuestionScore]


def start_evaluation(out_dir: Path, identity: Mapping[str, Any]) -> None:
    """Make the folder and record what is evaluated in it; a partial evaluation there must have
    the same identity (it is resumed), and finished predictions of another one refuse the folder."""
    out_dir.mkdir(parents=True, exist_ok=True)
    partial = out_dir / PARTIAL_EVAL_META
    if partial.exists():
        previous = json.loads(partial.read_text(encoding="utf-8"))
        if previous != identity:
            diff = [k for k in identity if previous.get(k) != identity[k]]
            raise MismatchError(
                f"{out_dir} holds a partial evaluation with other settings ({', '.join(diff)}); use another --out or delete it"
            )
    elif (out_dir / PREDICTIONS).exists():
        raise InputError(
            Problem(
                str(out_dir),
                "",
                PREDICTIONS,
                "the folder holds predictions from another evaluation",
                "use another --out",
            )
        )
    atomic_write_json(partial, dict(identity))


def read_done_predictions(out_dir: Path) -> dict[str, dict[str, Any]]:
    """Predictions already written; a trailing partial line (a kill mid-write) is cut off."""
    path = out_dir / PREDICTIONS
    if not path.exists():
        return {}
    raw = path.read_bytes()
    if raw and not raw.endswith(b"\n"):
        raw = raw[: raw.rfind(b"\n") + 1]
        path.write_bytes(raw)
    rows = [json.loads(line) for line in raw.decode("utf-8").splitlines() if line.strip()]
    return {r["id"]: r for r in rows}


@contextmanager
def appending_predictions(
    out_dir: Path,
) -> Iterator[Callable[[Sequence[Mapping[str, Any]]], None]]:
    """A function that appends prediction rows to the folder's predictions, flushed at each call."""
    with open(out_dir / PREDICTIONS, "a", encoding="utf-8") as f:

        def append(rows: Sequence[Mapping[str, Any]]) -> None:
            f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            f.flush()

        yield append


def write_predictions(out_dir: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    atomic_write_jsonl(out_dir / PREDICTIONS, rows)


def write_score_outputs(
    out_dir: str | Path, metrics: Mapping[str, Any], scores: Sequence[QuestionScore]
) -> None:
    """Each file is written atomically; metrics.json last, so its presence means both are complete."""
    out = Path(out_dir)
    atomic_write_jsonl(out / PER_QUESTION, [s.to_row() for s in scores])
    atomic_write_json(out / METRICS, dict(metrics))


def read_per_question(path: str | Path) -> list[QuestionScore]:
    with open(path, encoding="utf-8") as f:
        return [QuestionScore(**json.loads(line)) for line in f if line.strip()]


def finish_evaluation(out_dir: Path, meta: Mapping[str, Any]) -> None:
    atomic_write_json(out_dir / EVAL_META, dict(meta))
    (out_dir / PARTIAL_EVAL_META).unlink()


def finished_evaluation(
    eval_dir: Path, adapter_id: str, checkpoint_step: int | None = None
) -> EvalResult | None:
    """The complete evaluation of this adapter (at this checkpoint) in eval_dir, if there is one."""
    if not (eval_dir / EVAL_META).exists() or (eval_dir / PARTIAL_EVAL_META).exists():
        return None
    meta = json.loads((eval_dir / EVAL_META).read_text(encoding="utf-8"))
    found = (meta.get("adapter_id"), meta.get("checkpoint_step"))
    if found != (adapter_id, checkpoint_step):
        at = lambda step: f" at step {step}" if step is not None else ""  # noqa: E731
        raise SftgateError(
            f"{eval_dir} holds an evaluation of adapter {found[0]}{at(found[1])}, not "
            f"{adapter_id}{at(checkpoint_step)}; delete the folder to evaluate this run again"
        )
    metrics = json.loads((eval_dir / METRICS).read_text(encoding="utf-8"))
    return EvalResult(eval_dir, metrics, meta, read_per_question(eval_dir / PER_QUESTION))
