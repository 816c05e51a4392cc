"""Build, persist, load and search an index.

On disk an index is a folder:

    INDEX/manifest.json        written last; names the data folder and the index_version
    INDEX/data-XXXXXXXX/       chunks.jsonl, bm25/ (bm25s), embeddings.npy (dense, hybrid)

A build writes a new data folder, fsyncs it, and then replaces manifest.json in one atomic
rename; only then is the previous data folder removed. A crash at any point leaves either the
old index or the new one loadable, never a mix, and loading refuses a folder without a valid
manifest whose files are all present with their recorded sizes.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from sftgate.config import StrictModel
from sftgate.errors import InputError, MismatchError, Problem
from sftgate.fsutil import atomic_write_json, current_umask
from sftgate.hashing import canonical_json, sha256_json, sha256_text
from sftgate.index import dense
from sftgate.index.corpus import CHUNKER_VERSION, Chunk, Corpus, chunk_document, read_corpus
from sftgate.index.tokens import TOKENIZER_VERSION, bm25_tokens

FORMAT_VERSION = 2
MANIFEST = "manifest.json"
BM25_METHOD = "lucene"  # bm25s's default scoring variant; recorded in index_version
RRF_DEPTH = 100  # hybrid: how many top chunks of each retriever are fused


class IndexSettings(StrictModel):
    """Everything about an index that changes which passages a question gets."""

    chunk_chars: int = Field(
        500,
        ge=100,
        description="largest chunk in characters, heading lines included; larger chunks give each "
        "passage more context but fewer passages fit in the model's max_length",
    )
    overlap_chars: int = Field(
        100,
        ge=0,
        description="a chunk starts with the previous chunk's last whole paragraphs/sentences, up "
        "to this many characters, so a fact cut at a boundary is whole in one of them",
    )
    retriever: Literal["bm25", "dense", "hybrid"] = Field(
        "bm25",
        description="bm25 needs no model; dense and hybrid (reciprocal rank fusion of both) need "
        "embedding_model and sentence-transformers",
    )
    k1: float = Field(1.5, gt=0, description="BM25 term-frequency saturation")
    b: float = Field(0.75, ge=0, le=1, description="BM25 document-length normalisation")
    embedding_model: str | None = Field(
        None,
        description="sentence-transformers model (local folder or Hugging Face id) for dense and "
        "hybrid; pinned in index_version by a hash of its weights, not by this name",
    )
    rrf_k: int = Field(60, ge=1, description="hybrid: the k in 1 / (k + rank)")

    @model_validator(mode="after")
    def _consistent(self) -> IndexSettings:
        if self.overlap_chars >= self.chunk_chars:
            raise ValueError(
                f"overlap_chars must be smaller than chunk_chars, but got "
                f"{self.overlap_chars=} and {self.chunk_chars=}"
            )
        if self.retriever != "bm25" and not self.embedding_model:
            raise ValueError(f"retriever {self.retriever!r} needs embedding_model")
        if self.retriever == "bm25" and self.embedding_model:
            raise ValueError("embedding_model is only used by the dense and hybrid retrievers")
        return self


def import_bm25s() -> Any:
    """bm25s, with JAX kept off the GPU.

    When JAX is installed, importing bm25s runs a JAX operation, and JAX then takes 75% of the
    GPU's memory for itself: measured on an H100, training and evaluation in the same process
    (`sftgate search`) ran out of memory. sftgate scores with numpy, so unless this process has
    already set JAX up, JAX is confined to the CPU (JAX_PLATFORMS=cpu, inherited by child
    processes)."""
    import sys

    if "jax" not in sys.modules:
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import bm25s

    return bm25s


@dataclass(frozen=True)
class Hit:
    source_path: str
    text: str
    score: float  # BM25 score, cosine similarity (dense) or fused reciprocal-rank score (hybrid)


def version_inputs(
    corpus: Corpus, settings: IndexSettings, model_fingerprint: str | None
) -> dict[str, Any]:
    """What index_version is the hash of. The corpus enters as each document's path and the
    SHA-256 of its normalised text (NFC, '\\n' line endings); the chunker and tokenizer by their
    version strings; libraries by the versions that change results."""
    libraries = {"bm25s": metadata.version("bm25s")} if settings.retriever != "dense" else {}
    if settings.retriever != "bm25":
        libraries["sentence-transformers"] = dense.sentence_transformers_version()
    return {
        "format": FORMAT_VERSION,
        "documents": sorted((d.source_path, sha256_text(d.text)) for d in corpus.documents),
        "chunker": CHUNKER_VERSION,
        "tokenizer": TOKENIZER_VERSION,
        "settings": settings.model_dump(mode="json", exclude={"embedding_model"}),
        "bm25_method": BM25_METHOD,
        "rrf_depth": RRF_DEPTH,
        "model_fingerprint": model_fingerprint,
        "libraries": libraries,
    }


def compute_index_version(
    corpus: Corpus, settings: IndexSettings, model_fingerprint: str | None = None
) -> str:
    return sha256_json(version_inputs(corpus, settings, model_fingerprint))


class Index:
    """A loaded index: its manifest, chunks, and the retriever(s) over them."""

    def __init__(
        self,
        path: Path,
        manifest: dict[str, Any],
        chunks: list[Chunk],
        bm25: Any | None,
        embeddings: np.ndarray | None,
    ):
        self.path = path
        self.manifest = manifest
        self.chunks = chunks
        self.bm25 = bm25
        self.embeddings = embeddings
        self.settings = IndexSettings.model_validate(manifest["settings"])
        self._model: Any = None

    @property
    def version(self) -> str:
        return str(self.manifest["index_version"])

    def retriever_description(self) -> dict[str, Any]:
        """The retriever settings recorded in a contexts file's header."""
        return {
            **self.manifest["settings"],
            "tokenizer": self.manifest["tokenizer"],
            "chunker": self.manifest["chunker"],
            "libraries": self.manifest["libraries"],
        }

    def search(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        """The top k chunks for each query, best first. BM25 returns only chunks that share a
        token with the query, so a list can be shorter than k."""
        if k < 1:
            raise ValueError(f"k must be at least 1, but got {k=}")
        retriever = self.settings.retriever
        if retriever == "bm25":
            ranked = [self._bm25_ranked(q, k) for q in queries]
        elif retriever == "dense":
            ranked = self._dense_ranked(queries, k)
        else:
            depth = max(k, RRF_DEPTH)
            lexical = [self._bm25_ranked(q, depth) for q in queries]
            semantic = self._dense_ranked(queries, depth)
            ranked = [
                dense.reciprocal_rank_fusion(
                    [[i for i, _ in lex], [i for i, _ in sem]], self.settings.rrf_k
                )[:k]
                for lex, sem in zip(lexical, semantic)
            ]
        return [
            [Hit(self.chunks[i].source_path, self.chunks[i].text, score) for i, score in hits]
            for hits in ranked
        ]

    def _bm25_ranked(self, query: str, k: int) -> list[tuple[int, float]]:
        assert self.bm25 is not None
        vocab = self.bm25.vocab_dict
        ids = [vocab[t] for t in bm25_tokens(query) if t in vocab]
        if not ids:
            return []
        scores = self.bm25.get_scores_from_ids(ids)
        order = np.argsort(-scores, kind="stable")[:k]  # ties: earlier chunk first
        return [(int(i), float(scores[i])) for i in order if scores[i] > 0]

    def _dense_ranked(self, queries: Sequence[str], k: int) -> list[list[tuple[int, float]]]:
        assert self.embeddings is not None
        if self._model is None:
            name = str(self.manifest["embedding_model"])
            model = dense.load_model(name)
            dense.check_fingerprint(model, name, str(self.manifest["model_fingerprint"]))
            self._model = model
        sims = dense.embed(self._model, queries) @ self.embeddings.T
        out = []
        for row in sims:
            order = np.argsort(-row, kind="stable")[:k]
            out.append([(int(i), float(row[i])) for i in order])
        return out


# ----------------------------------------------------------------------------- build


@contextmanager
def _progress(enabled: bool) -> Iterator[Any]:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("{task.description:<12}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        disable=not enabled,
        transient=False,
    ) as progress:
        yield progress


def build_index(
    corpus_path: str | Path,
    out: str | Path,
    settings: IndexSettings,
    *,
    skip_bad: bool = False,
    progress: bool = False,
) -> tuple[Index, Corpus]:
    """Read, chunk and index a corpus into the folder `out` (replacing an index there)."""
    out = Path(out)
    _check_out(out)
    corpus = read_corpus(corpus_path, skip_bad=skip_bad)
    chunks: list[Chunk] = []
    bm25 = embeddings = fingerprint = None
    with _progress(progress) as bar:
        task = bar.add_task("chunking", total=len(corpus.documents))
        for doc in corpus.documents:
            chunks.extend(chunk_document(doc, settings.chunk_chars, settings.overlap_chars))
            bar.advance(task)
        if not chunks:
            raise InputError(
                Problem(str(corpus_path), "", "", "the documents hold no text", "check the corpus")
            )
        if settings.retriever != "dense":
            bm25s = import_bm25s()
            task = bar.add_task("tokenising", total=len(chunks))
            corpus_tokens = []
            for c in chunks:
                corpus_tokens.append(bm25_tokens(c.text))
                bar.advance(task)
            task = bar.add_task("bm25", total=1)
            bm25 = bm25s.BM25(k1=settings.k1, b=settings.b, method=BM25_METHOD)
            bm25.index(corpus_tokens, show_progress=False)
            bar.advance(task)
        if settings.retriever != "bm25":
            assert settings.embedding_model is not None
            model = dense.load_model(settings.embedding_model)
            fingerprint = dense.model_fingerprint(model)
            task = bar.add_task("embedding", total=1)
            embeddings = dense.embed(model, [c.text for c in chunks], progress=progress)
            bar.advance(task)
    inputs = version_inputs(corpus, settings, fingerprint)
    manifest: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "index_version": sha256_json(inputs),
        "documents": len(corpus.documents),
        "chunks": len(chunks),
        "settings": settings.model_dump(mode="json"),
        "chunker": CHUNKER_VERSION,
        "tokenizer": TOKENIZER_VERSION,
        "libraries": inputs["libraries"],
        "embedding_model": settings.embedding_model,
        "model_fingerprint": fingerprint,
        "corpus": str(corpus_path),
        "skipped": [str(p) for p in corpus.skipped],
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    _write(out, manifest, chunks, bm25, embeddings)
    return load_index(out), corpus


def _check_out(out: Path) -> None:
    """Refuse to write into a folder that is neither empty nor an index (it could be the corpus)."""
    if out.exists() and not out.is_dir():
        raise InputError(Problem(str(out), "", "", "exists and is not a folder", "pick --out"))
    if out.is_dir():
        foreign = [p.name for p in out.iterdir() if not _is_ours(p.name)]
        if foreign:
            raise InputError(
                Problem(
                    str(out),
                    "",
                    "",
                    f"exists and is not an sftgate index (it holds {', '.join(sorted(foreign)[:3])})",
                    "pick an empty or new folder for --out",
                )
            )


def _is_ours(name: str) -> bool:
    return name == MANIFEST or name.startswith(("data-", f".{MANIFEST}."))


def _fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(folder))


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write(
    out: Path,
    manifest: dict[str, Any],
    chunks: Sequence[Chunk],
    bm25: Any | None,
    embeddings: np.ndarray | None,
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    data = Path(tempfile.mkdtemp(dir=out, prefix="data-"))
    data.chmod(
        0o777 & ~current_umask()
    )  # mkdtemp makes it private; an index is as readable as its parent
    try:
        with open(data / "chunks.jsonl", "w", encoding="utf-8") as f:
            for c in chunks:
                f.write(canonical_json({"source_path": c.source_path, "text": c.text}) + "\n")
        if bm25 is not None:
            bm25.save(str(data / "bm25"), show_progress=False)
        if embeddings is not None:
            np.save(data / "embeddings.npy", embeddings)
        _fsync_tree(data)
        files = {
            p.relative_to(data).as_posix(): p.stat().st_size
            for p in sorted(data.rglob("*"))
            if p.is_file()
        }
        atomic_write_json(out / MANIFEST, {**manifest, "data": data.name, "files": files})
        _fsync_dir(out)
    except BaseException:
        shutil.rmtree(data, ignore_errors=True)
        raise
    for stale in out.iterdir():  # the previous data folder, and what a crashed build left
        if stale.name.startswith("data-") and stale != data:
            shutil.rmtree(stale, ignore_errors=True)
        elif stale.name.startswith(f".{MANIFEST}."):
            stale.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- load


def _incomplete(path: Path, why: str) -> InputError:
    return InputError(
        Problem(
            str(path),
            "",
            "",
            f"not a complete sftgate index ({why})",
            "build it with `sftgate index build --corpus DIR --out INDEX`",
        )
    )


def load_index(path: str | Path) -> Index:
    """Load an index folder; refuses one without a valid manifest or with a file missing."""
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _incomplete(path, f"no {MANIFEST}") from None
    except (OSError, ValueError) as e:
        raise _incomplete(path, f"unreadable {MANIFEST}: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_VERSION:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise _incomplete(path, f"index format {found}, this sftgate reads {FORMAT_VERSION}")
    try:
        if manifest["tokenizer"] != TOKENIZER_VERSION or manifest["chunker"] != CHUNKER_VERSION:
            raise MismatchError(
                f"{path} was built with tokenizer {manifest['tokenizer']} and chunker "
                f"{manifest['chunker']}; this sftgate has {TOKENIZER_VERSION} and "
                f"{CHUNKER_VERSION}: rebuild the index (its index_version will change)"
            )
        data = path / str(manifest["data"])
        for name, size in manifest["files"].items():
            f = data / name
            if not f.is_file() or f.stat().st_size != size:
                raise _incomplete(path, f"{f} is missing or has the wrong size")
        with open(data / "chunks.jsonl", encoding="utf-8") as fh:
            chunks = [Chunk(**json.loads(line)) for line in fh]
        if len(chunks) != manifest["chunks"]:
            raise _incomplete(path, "the chunk count differs from the manifest")
        bm25 = None
        if (data / "bm25").is_dir():
            bm25s = import_bm25s()
            bm25 = bm25s.BM25.load(str(data / "bm25"), show_progress=False, verbosity=0)
        embeddings = None
        if (data / "embeddings.npy").is_file():
            embeddings = np.load(data / "embeddings.npy")
        return Index(path, manifest, chunks, bm25, embeddings)
    except (KeyError, TypeError, AttributeError, ValueError) as e:  # incl. pydantic errors
        raise _incomplete(path, f"{type(e).__name__}: {e}") from None
