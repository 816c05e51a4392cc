"""A study's inputs: loaded and hashed into pins (reading only), then the index built and each
question set's passages frozen into a contexts file; the study's own byte-identical copies of
its pinned files, the only ones its runs read.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rich import get_console

from sftgate.contexts import load_contexts, write_contexts
from sftgate.errors import InputError, Problem, SftgateError
from sftgate.fsutil import atomic_write_bytes
from sftgate.hashing import sha256_file
from sftgate.index import (
    build_index,
    compute_index_version,
    load_index,
    read_corpus,
    retrieve_contexts,
)
from sftgate.prompt import load_prompt
from sftgate.questions import QuestionSet, load_questions
from sftgate.reach import Reach, split_passages, study_reach
from sftgate.search.study import ContextFiles, RetrievalConfig, StudyConfig

console = get_console()

SPLITS = ("train", "gate", "full")


@dataclass(frozen=True)
class Inputs:
    """The study's resolved inputs and their pins."""

    sets: dict[str, QuestionSet]  # train, gate, full
    contexts: dict[str, Path | None]  # None: the items carry their passages
    pins: dict[str, str]


def _index_version(r: RetrievalConfig) -> str:
    """The index_version the corpus and settings give, computed without writing anything."""
    fingerprint = None
    if r.settings.retriever != "bm25":
        from sftgate.index import dense

        assert r.settings.embedding_model is not None
        fingerprint = dense.model_fingerprint(dense.load_model(r.settings.embedding_model))
    return compute_index_version(read_corpus(r.corpus), r.settings, fingerprint)


def pin_inputs(config: StudyConfig) -> Inputs:
    """Load and hash every pinned input. Reads only: nothing is built or written here, so a
    study whose inputs changed is refused before its files are touched."""
    template = load_prompt(config.prompt)
    sets = {
        "train": load_questions(config.train_questions),
        "gate": load_questions(config.gate_questions),
        "full": load_questions(config.full_questions),
    }
    contexts: dict[str, Path | None] = dict.fromkeys(SPLITS)
    extra: dict[str, str] = {}
    if config.retrieval is not None:
        index_version = _index_version(config.retrieval)
        contexts = {s: config.work / f"contexts_{s}.jsonl" for s in SPLITS}
    elif config.contexts is not None:
        files = {s: Path(getattr(config.contexts, s)) for s in SPLITS}
        versions = {load_contexts(f).index_version for f in files.values()}
        if len(versions) != 1:
            raise InputError(
                Problem(
                    config.contexts.train,
                    "",
                    "index_version",
                    f"the three contexts files come from different indexes ({', '.join(sorted(versions))})",
                    "retrieve all three from one index",
                )
            )
        index_version = versions.pop()
        contexts = dict(files)
        extra = {f"contexts_{s}_sha256": sha256_file(f) for s, f in files.items()}
    else:
        declared = {qs.index_version for qs in sets.values()}
        if None in declared or len(declared) != 1:
            raise InputError(
                Problem(
                    config.train_questions,
                    "",
                    "retrieval",
                    "no retrieval, no contexts files, and the question sets do not all carry "
                    "contexts from one index",
                    "add `retrieval:` or `contexts:` to the study config",
                )
            )
        index_version = str(declared.pop())
    pins = {
        "model_id": config.model,
        "prompt_version": template.version,
        "prompt_sha256": template.sha256,
        "index_version": index_version,
        "train_set_version": sets["train"].version,
        "gate_set_version": sets["gate"].version,
        "full_set_version": sets["full"].version,
        **extra,
        **config.settings_pins(),
    }
    return Inputs(sets, contexts, pins)


def contexts_current(path: Path, index_version: str, eval_set_version: str, top_k: int) -> bool:
    """Whether a contexts file was retrieved from this index, for this question set, at this top_k."""
    if not path.exists():
        return False
    meta = load_contexts(path).meta
    return (meta.index_version, meta.eval_set_version, meta.top_k) == (
        index_version,
        eval_set_version,
        top_k,
    )


def prepare_contexts(config: StudyConfig, inputs: Inputs) -> None:
    """Build the index (when missing or stale) and retrieve the contexts files of the three sets."""
    r = config.retrieval
    if r is None:
        return
    index_dir = config.work / "index"
    wanted = inputs.pins["index_version"]
    if not (index_dir / "manifest.json").exists() or load_index(index_dir).version != wanted:
        console.print(f"building the index of {r.corpus}")
        build_index(r.corpus, index_dir, r.settings)
    built = load_index(index_dir).version
    if built != wanted:  # the corpus changed between pinning and building
        raise SftgateError(f"the index built from {r.corpus} is {built[:12]}, not {wanted[:12]}")
    for split, qs in inputs.sets.items():
        path = inputs.contexts[split]
        assert path is not None
        if not contexts_current(path, built, qs.version, r.top_k):
            write_contexts(path, *retrieve_contexts(index_dir, qs, r.top_k))


PINNED_FILES = ("prompt", "train_questions", "gate_questions", "full_questions")


def pinned_copy(config: StudyConfig, key: str, source: str | Path) -> Path:
    """Where the study keeps its copy of a pinned file (`key`: prompt, gate_questions,
    contexts_gate, ...)."""
    return config.work / "inputs" / key / Path(source).name


def pinned_copies(config: StudyConfig, inputs: Inputs) -> tuple[StudyConfig, Inputs]:
    """The study's own copies of its pinned files, in WORK/inputs (storage every node reaches,
    on a cluster): the prompt, the three question sets and, when brought, the contexts files.

    Made when missing (the originals match the pins then: the study was just opened), never
    rewritten, and checked against the pins at every start. Runs read only these copies, so an
    original edited while the search runs changes nothing; the next start reports the edit
    (the pins no longer match) and refuses it.
    """
    sources = {key: Path(getattr(config, key)) for key in PINNED_FILES}
    if config.contexts is not None:
        sources |= {f"contexts_{s}": Path(getattr(config.contexts, s)) for s in SPLITS}
    copies = {}
    for key, source in sources.items():
        copy = pinned_copy(config, key, source)
        if not copy.exists():
            atomic_write_bytes(copy, source.read_bytes())
        copies[key] = copy
    found = {
        "prompt_sha256": load_prompt(copies["prompt"]).sha256,
        **{f"{s}_set_version": load_questions(copies[f"{s}_questions"]).version for s in SPLITS},
        **{
            f"contexts_{s}_sha256": sha256_file(copies[f"contexts_{s}"])
            for s in SPLITS
            if f"contexts_{s}" in copies
        },
    }
    wrong = [k for k, v in found.items() if inputs.pins[k] != v]
    if wrong:
        raise SftgateError(
            f"the study's copies of its inputs in {config.work / 'inputs'} no longer match its "
            f"pins ({', '.join(wrong)}): they were changed after the study began; restore them "
            "or start a new study"
        )
    update: dict[str, Any] = {key: str(copies[key]) for key in PINNED_FILES}
    contexts = dict(inputs.contexts)
    if config.contexts is not None:
        update["contexts"] = ContextFiles(**{s: str(copies[f"contexts_{s}"]) for s in SPLITS})
        contexts = {s: copies[f"contexts_{s}"] for s in SPLITS}
    return config.model_copy(update=update), replace(inputs, contexts=contexts)


def measure_reach(config: StudyConfig, inputs: Inputs) -> Reach:
    """The study's ceiling on the gate set and its token budget (`sftgate ceiling`), from the
    contexts `prepare_contexts` froze; with a retrieval, also at a few larger top_k."""
    policy = config.policy
    max_lengths = {policy.round0.max_length, policy.long_max_length}
    max_lengths |= {int(c["max_length"]) for c in policy.round1 if "max_length" in c}
    r = config.retrieval
    return study_reach(
        model_id=config.model,
        template=load_prompt(config.prompt),
        sets=inputs.sets,
        passages=split_passages(inputs.sets, inputs.contexts),
        index_version=inputs.pins["index_version"],
        gate_score=policy.thresholds.gate_score,
        margin=policy.thresholds.margin,
        max_lengths=sorted(max_lengths),
        index=load_index(config.work / "index") if r else None,
        top_k=r.top_k if r else None,
    )
