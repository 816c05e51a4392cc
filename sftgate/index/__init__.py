"""The knowledge-base index: corpus -> chunks (each with a source_path) -> retriever, content-addressed.

- `corpus`: ingest (.md .txt .rst .html files, or a JSONL of {source_path, text}) and chunking.
- `tokens`: BM25 tokens for Traditional Chinese and English (CJK unigrams + bigrams, Latin words).
- `store`: IndexSettings, index_version, build, atomic persistence, load, search (bm25s; dense and
  hybrid through sentence-transformers in `dense`).
- `evaluate`: contexts files for a question set, recall@k / MRR / evidence against its references.

The rules (chunk sizes, anchors, what index_version covers) are documented in docs/retrieval.md.
"""

from sftgate.index.corpus import (
    CHUNKER_VERSION,
    Chunk,
    Corpus,
    Document,
    anchor,
    chunk_document,
    read_corpus,
    sections,
)
from sftgate.index.evaluate import evaluate_retrieval, path_matches, retrieve_contexts
from sftgate.index.store import (
    Hit,
    Index,
    IndexSettings,
    build_index,
    compute_index_version,
    load_index,
)
from sftgate.index.tokens import TOKENIZER_VERSION, bm25_tokens

__all__ = [
    "CHUNKER_VERSION",
    "TOKENIZER_VERSION",
    "Chunk",
    "Corpus",
    "Document",
    "Hit",
    "Index",
    "IndexSettings",
    "anchor",
    "bm25_tokens",
    "build_index",
    "chunk_document",
    "compute_index_version",
    "evaluate_retrieval",
    "load_index",
    "path_matches",
    "read_corpus",
    "retrieve_contexts",
    "sections",
]
