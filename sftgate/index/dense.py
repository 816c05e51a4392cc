"""The optional dense retriever (sentence-transformers, the `dense` extra) and rank fusion.

sentence-transformers is imported only when an index uses it. The model is pinned by a hash of
its weights (`model_fingerprint`), which goes into index_version and is checked again whenever
the index embeds queries, so a different model under the same name is refused.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from importlib import metadata
from typing import Any

import numpy as np

from sftgate.errors import MismatchError, SftgateError


def _sentence_transformers() -> Any:
    try:
        import sentence_transformers
    except ImportError:
        raise SftgateError(
            "the dense and hybrid retrievers need sentence-transformers, which is not installed: "
            "run `pip install sentence-transformers` (sftgate's dense extra), or build the index with --retriever bm25"
        ) from None
    return sentence_transformers


def sentence_transformers_version() -> str:
    _sentence_transformers()
    return metadata.version("sentence-transformers")


def load_model(name: str) -> Any:
    """A SentenceTransformer from a local folder or a Hugging Face id (cached, or downloaded)."""
    st = _sentence_transformers()
    try:
        return st.SentenceTransformer(name)
    except (OSError, ValueError) as e:
        raise SftgateError(
            f"cannot load the embedding model {name!r} ({e}); pass a local sentence-transformers "
            "folder or a model id that is in the Hugging Face cache"
        ) from None


def model_fingerprint(model: Any) -> str:
    """SHA-256 over the model's parameters and buffers (names, dtypes, shapes, bytes)."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def embed(model: Any, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
    """Unit-length float32 embeddings, one row per text."""
    vectors = model.encode(
        list(texts),
        batch_size=64,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=progress,
    )
    return np.asarray(vectors, dtype=np.float32)


def check_fingerprint(model: Any, name: str, expected: str) -> None:
    found = model_fingerprint(model)
    if found != expected:
        raise MismatchError(
            f"the embedding model {name!r} has weights {found[:12]}, but the index was built with "
            f"{expected[:12]}; use the model the index was built with, or rebuild the index"
        )


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[int]], rrf_k: int
) -> list[tuple[int, float]]:
    """Items ordered by the sum over rankings of 1 / (rrf_k + rank), ranks counted from 1;
    equal sums are ordered by item id, so the order is deterministic."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, 1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (rrf_k + rank)
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
