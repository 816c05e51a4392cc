"""Checks that a config can run, made before any work: `sftgate validate` runs all of them, and
train, eval and search refuse at once what they would otherwise find out hours later.

Every path a config names is checked for what it must be (an input file exists and is a
readable file, a folder is a folder, an output would not overwrite something), the registry is
an SQLite file or absent, and the model reference is a model folder, a .gguf file, tiny-qwen3
or a well-formed Hugging Face hub id. Each problem names the config file, its field and what to
do; all of a config's problems are reported at once.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sftgate.errors import InputError, Problem
from sftgate.tiny import TINY_MODEL_ID

if TYPE_CHECKING:
    from sftgate.evaluate import DecodeSettings, EvalConfig
    from sftgate.prompt import PromptTemplate
    from sftgate.questions import QuestionSet
    from sftgate.search.study import StudyConfig
    from sftgate.train import TrainConfig

SQLITE_HEADER = b"SQLite format 3\x00"


def _problem(config: str, field: str, message: str, fix: str) -> Problem:
    return Problem(config, "", field, message, fix)


def input_file(path: str | None, config: str, field: str) -> list[Problem]:
    """A file the run reads: it exists, is a file and can be read."""
    if path is None:
        return []
    p = Path(path)
    if not p.exists():
        return [_problem(config, field, f"{path} does not exist", "check the path")]
    if not p.is_file():
        return [_problem(config, field, f"{path} is a folder, not a file", "give a file's path")]
    if not os.access(p, os.R_OK):
        return [_problem(config, field, f"{path} is not readable", "check its permissions")]
    return []


def corpus_path(path: str, config: str, field: str) -> list[Problem]:
    """A knowledge base: a folder of documents, or a .jsonl file of them."""
    p = Path(path)
    if not p.exists():
        return [_problem(config, field, f"{path} does not exist", "check the path")]
    if p.is_file() and p.suffix != ".jsonl":
        return [
            _problem(
                config,
                field,
                f"{path} is a file, not a folder of documents (or a .jsonl of them)",
                "give the knowledge base's folder",
            )
        ]
    return []


def output_folder(path: str | None, config: str, field: str, *, new: bool) -> list[Problem]:
    """A folder the run writes: not a file, no file in the way of its parents, and absent when
    `new` (a finished result is never overwritten)."""
    if path is None:
        return []
    p = Path(path)
    if p.exists() and not p.is_dir():
        return [
            _problem(
                config, field, f"{path} is a file; this is the folder to write", "give a folder"
            )
        ]
    if p.exists() and new:
        return [
            _problem(
                config,
                field,
                f"{path} already exists; it would be overwritten",
                "choose a new folder, or delete this one",
            )
        ]
    blocked = next((a for a in p.absolute().parents if a.exists() and not a.is_dir()), None)
    if blocked is not None:
        return [_problem(config, field, f"{blocked} is a file, not a folder", "fix the path")]
    return []


def registry_problems(path: str | Path, config: str, field: str) -> list[Problem]:
    """A registry file: absent (it is created), or an SQLite file."""
    p = Path(path)
    if p.is_dir():
        return [
            _problem(
                config,
                field,
                f"{path} is a folder, not a registry file",
                "give a file path such as REGISTRY/registry.sqlite",
            )
        ]
    if p.exists():
        try:
            with p.open("rb") as f:
                header = f.read(len(SQLITE_HEADER))
        except OSError as e:
            return [_problem(config, field, f"{path} cannot be read: {e.strerror}", "check it")]
        if header != SQLITE_HEADER:
            return [
                _problem(
                    config,
                    field,
                    f"{path} is not an SQLite registry",
                    "give the registry.sqlite that sftgate wrote, or a new path",
                )
            ]
        return _registry_tables(p, config, field)
    return output_folder(str(p.parent), config, field, new=False)


def _registry_tables(path: Path, config: str, field: str) -> list[Problem]:
    """An SQLite file is a registry if it is empty of tables (new) or has sftgate's; reading
    sqlite_master writes nothing."""
    try:
        db = sqlite3.connect(path)
        try:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            db.close()
    except sqlite3.DatabaseError as e:
        return [_problem(config, field, f"{path} is a damaged SQLite file ({e})", "restore it")]
    if tables and not {"schema_version", "studies", "runs"} <= tables:
        return [
            _problem(
                config,
                field,
                f"{path} is an SQLite database but not an sftgate registry",
                "give the registry.sqlite that sftgate wrote, or a new path",
            )
        ]
    return []


def check_registry_file(path: str | Path, field: str = "") -> None:
    problems = registry_problems(path, str(path) if not field else "command line", field)
    if problems:
        raise InputError(problems)


def model_problems(model: str, config: str, field: str = "model") -> list[Problem]:
    """tiny-qwen3, a .gguf file, a local model folder (with config.json), or a hub id."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if model == TINY_MODEL_ID:
        return []
    p = Path(model).expanduser()
    if p.suffix == ".gguf":
        return input_file(model, config, field)
    if p.is_dir():
        if not (p / "config.json").is_file():
            return [
                _problem(
                    config,
                    field,
                    f"{model} is a folder without config.json, not a model",
                    "point at a Hugging Face model folder",
                )
            ]
        return []
    if p.exists():
        return [
            _problem(
                config,
                field,
                f"{model} is a file, not a model folder or a .gguf file",
                "point at a model folder",
            )
        ]
    try:
        validate_repo_id(model)
    except HFValidationError:
        return [
            _problem(
                config,
                field,
                f"{model!r} is neither a local model folder nor a Hugging Face hub id",
                "give an existing folder, a .gguf file, an id like Qwen/Qwen3-4B, or tiny-qwen3",
            )
        ]
    return []


def adapter_problems(adapter: str | None, config: str, field: str = "adapter") -> list[Problem]:
    from sftgate.artifacts import ADAPTER_METADATA

    if adapter is None:
        return []
    p = Path(adapter)
    if not p.is_dir():
        what = "does not exist" if not p.exists() else "is a file"
        return [_problem(config, field, f"{adapter} {what}", "give an adapter folder")]
    if not (p / ADAPTER_METADATA).is_file():
        return [
            _problem(
                config,
                field,
                f"{adapter} is not an sftgate adapter (no {ADAPTER_METADATA})",
                "train it with `sftgate train`",
            )
        ]
    return []


def decode_problems(decode: DecodeSettings, file: str, field: str) -> list[Problem]:
    """Constrained decoding needs its grammar library, and an engine that applies it."""
    from sftgate.constrain import library_version

    if decode.constrain == "none":
        return []
    if library_version() is None:
        return [
            _problem(
                file,
                field,
                "constrain: json_schema needs xgrammar, which is not installed",
                "pip install 'sftgate[constrain]', or set constrain: none",
            )
        ]
    if decode.engine == "vllm":
        return [
            _problem(
                file,
                field,
                "engine vllm does not decode under sftgate's grammar",
                "use engine static (or hf) with constrain: json_schema",
            )
        ]
    return []


def require(problems: list[Problem]) -> None:
    if problems:
        raise InputError(problems)


# ---------------------------------------------------------------------- one kind of config each


def train_problems(config: TrainConfig, file: str) -> list[Problem]:
    return [
        *model_problems(config.model, file),
        *input_file(config.questions, file, "questions"),
        *input_file(config.contexts, file, "contexts"),
        *input_file(config.prompt, file, "prompt"),
        *output_folder(config.out, file, "out", new=True),
    ]


def eval_problems(config: EvalConfig, file: str) -> list[Problem]:
    return [
        *model_problems(config.model, file),
        *adapter_problems(config.adapter, file),
        *input_file(config.questions, file, "questions"),
        *input_file(config.contexts, file, "contexts"),
        *input_file(config.prompt, file, "prompt"),
        *output_folder(config.out, file, "out", new=False),  # an existing one is resumed
        *decode_problems(config.decode, file, "decode.constrain"),
    ]


def study_problems(config: StudyConfig, file: str) -> list[Problem]:
    """The study's paths (resolved against the config's folder, as the search reads them)."""
    from sftgate.search.registry import default_path

    problems = [
        *model_problems(config.model, file),
        *input_file(config.prompt, file, "prompt"),
        *input_file(config.train_questions, file, "train_questions"),
        *input_file(config.gate_questions, file, "gate_questions"),
        *input_file(config.full_questions, file, "full_questions"),
        *output_folder(str(config.work), file, "workdir", new=False),  # an existing one resumes
        *registry_problems(config.registry or default_path(), file, "registry"),
        *decode_problems(config.decode, file, "decode.constrain"),
    ]
    if config.retrieval is not None:
        problems += corpus_path(config.retrieval.corpus, file, "retrieval.corpus")
    if config.contexts is not None:
        for split in ("train", "gate", "full"):
            problems += input_file(getattr(config.contexts, split), file, f"contexts.{split}")
    return problems


def tokenizer_offline(model: str) -> Any | None:
    """The model's tokenizer if it is here without a download (tiny-qwen3, a local folder, a
    hub id already in the cache), else None."""
    from sftgate.tiny import build_tiny_tokenizer

    if model == TINY_MODEL_ID:
        return build_tiny_tokenizer()
    from transformers import AutoTokenizer

    path = Path(model)
    source, extra = (
        (str(path.parent), {"gguf_file": path.name}) if path.suffix == ".gguf" else (model, {})
    )
    try:
        return AutoTokenizer.from_pretrained(source, local_files_only=True, **extra)
    except (OSError, ValueError):
        return None


def check_max_length(
    model: str,
    template: PromptTemplate,
    questions: QuestionSet,
    max_length: int,
    config: str,
    field: str,
) -> bool:
    """Raise when not one training question fits in max_length tokens even without passages
    (the run would fail after loading the model). False: not checked, the model's tokenizer is
    not available offline."""
    from sftgate.train import build_example

    tokenizer = tokenizer_offline(model)
    if tokenizer is None:
        return False
    if any(build_example(tokenizer, template, q, (), max_length) for q in questions):
        return True
    raise InputError(
        _problem(
            config,
            field,
            f"not one question of {questions.path} fits in {max_length} tokens of {model}'s "
            "tokenizer, even without passages",
            f"raise {field}",
        )
    )
