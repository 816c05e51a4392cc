"""The knowledge-base index: corpus -> chunks (each with a source_path) -> BM25, content-addressed.

- Ingest: Markdown, text, reStructuredText and HTML files under a folder, or a JSONL of
  {source_path, text}.
- Chunk: by headings, then paragraphs packed up to `chunk_chars` characters; a chunk's
  source_path is the document path relative to the corpus root plus `#` and the section anchor.
- Retrieve: BM25 from the `bm25s` library over tokens that suit Traditional Chinese and English
  alike: CJK characters and CJK character bigrams, plus lowercased Latin words and numbers.
- index_version: SHA-256 of everything that changes results (normalised corpus, chunking and
  retriever settings, tokenizer version, bm25s version).
- Persist: written to a temporary folder and renamed into place; the manifest is written last, and
  loading refuses a folder without a valid one.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import Field

from sftgate.config import StrictModel
from sftgate.contexts import ContextsLine, ContextsMeta, write_contexts
from sftgate.errors import InputError, Problem
from sftgate.fsutil import atomic_write_json
from sftgate.hashing import canonical_json, sha256_json, sha256_text
from sftgate.questions import QuestionSet, read_json_records
from sftgate.textnorm import squash_ws, tokens

TOKENIZER_VERSION = "cjk-uni-bigram+latin-v1"
SUFFIXES = {
    ".md": "markdown",
    ".markdown": "markdown",
    ".txt": "text",
    ".rst": "rst",
    ".html": "html",
    ".htm": "html",
}
MANIFEST = "manifest.json"
FORMAT_VERSION = 1


class IndexSettings(StrictModel):
    chunk_chars: int = Field(
        800,
        ge=100,
        description="largest chunk, in characters; larger chunks carry more context per passage",
    )
    overlap_chars: int = Field(
        200,
        ge=0,
        description="a chunk's last paragraph is repeated at the start of the next when it is at most this long",
    )
    k1: float = Field(1.5, gt=0, description="BM25 term-frequency saturation")
    b: float = Field(0.75, ge=0, le=1, description="BM25 length normalisation")


@dataclass(frozen=True)
class Document:
    source_path: str  # relative to the corpus root, '/' separators
    text: str  # normalised: NFC, '\n' line endings
    format: str


@dataclass(frozen=True)
class Chunk:
    source_path: str  # document path + '#anchor' where the document has sections
    text: str


# ----------------------------------------------------------------------------- ingest


class _HTMLText(HTMLParser):
    """HTML -> Markdown-like text: headings become '#' lines, block elements become paragraphs."""

    BLOCKS = {
        "p",
        "div",
        "li",
        "tr",
        "br",
        "section",
        "article",
        "table",
        "ul",
        "ol",
        "pre",
        "blockquote",
    }

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self.skip = 0

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in ("script", "style"):
            self.skip += 1
        elif re.fullmatch(r"h[1-6]", tag):
            self.parts.append("\n\n" + "#" * int(tag[1]) + " ")
        elif tag in self.BLOCKS:
            self.parts.append("\n\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self.skip -= 1
        elif re.fullmatch(r"h[1-6]", tag) or tag in self.BLOCKS:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.parts.append(re.sub(r"[ \t\r\n]+", " ", data))


def html_to_text(html: str) -> str:
    parser = _HTMLText()
    parser.feed(html)
    text = "".join(parser.parts)
    return "\n\n".join(p.strip() for p in re.split(r"\n\s*\n", text) if p.strip())


def rst_to_markdown(text: str) -> str:
    """Section titles (a line underlined with = - ~ ^ and the like) become Markdown headings."""
    lines = text.split("\n")
    out: list[str] = []
    levels: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if (
            line.strip()
            and re.fullmatch(r"([=\-~^\"'`#*+])\1{2,}", nxt.strip())
            and len(nxt.strip()) >= len(line.strip())
        ):
            char = nxt.strip()[0]
            if char not in levels:
                levels.append(char)
            out.append("#" * min(6, levels.index(char) + 1) + " " + line.strip())
            i += 2
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


def normalise(text: str) -> str:
    return unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))


def read_corpus(
    corpus: str | Path, *, skip_bad: bool = False
) -> tuple[list[Document], list[Problem]]:
    """Documents from a folder (by suffix) or a JSONL file of {source_path, text}.

    Unreadable or non-UTF-8 files raise InputError naming each, unless skip_bad (then reported).
    """
    corpus = Path(corpus)
    problems: list[Problem] = []
    docs: list[Document] = []
    if corpus.is_file() and corpus.suffix == ".jsonl":
        _, records = read_json_records(corpus)
        for where, raw in records:
            if not (
                isinstance(raw, dict)
                and isinstance(raw.get("source_path"), str)
                and isinstance(raw.get("text"), str)
                and raw["source_path"]
            ):
                problems.append(
                    Problem(
                        str(corpus),
                        where,
                        "source_path/text",
                        "each line needs string fields source_path and text",
                        "",
                    )
                )
                continue
            docs.append(Document(raw["source_path"], normalise(raw["text"]), "markdown"))
    elif corpus.is_dir():
        for path in sorted(
            p for p in corpus.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES
        ):
            rel = path.relative_to(corpus).as_posix()
            try:
                raw_text = path.read_bytes().decode("utf-8-sig")
            except UnicodeDecodeError as e:
                problems.append(
                    Problem(
                        str(path),
                        "",
                        "",
                        f"not UTF-8 (invalid byte at offset {e.start})",
                        "convert it to UTF-8 or pass --skip-bad",
                    )
                )
                continue
            except OSError as e:
                problems.append(
                    Problem(
                        str(path),
                        "",
                        "",
                        f"cannot be read: {e.strerror}",
                        "fix its permissions or pass --skip-bad",
                    )
                )
                continue
            fmt = SUFFIXES[path.suffix.lower()]
            text = normalise(raw_text)
            if fmt == "html":
                text = html_to_text(text)
            elif fmt == "rst":
                text = rst_to_markdown(text)
            docs.append(Document(rel, text, fmt))
    else:
        raise InputError(
            Problem(str(corpus), "", "", "not a folder or a .jsonl file", "pass the corpus folder")
        )
    if problems and not skip_bad:
        raise InputError(problems)
    if not docs:
        raise InputError(
            Problem(
                str(corpus),
                "",
                "",
                "no documents found (.md .txt .rst .html or a .jsonl)",
                "check the path",
            )
        )
    return docs, problems


# ----------------------------------------------------------------------------- chunk

_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")


def anchor(heading: str) -> str:
    """A section anchor: the heading text, lowercased, markup dropped, spaces as '-'."""
    text = re.sub(r"[`*_\[\]()]", "", heading).strip().lower()
    return re.sub(r"\s+", "-", text)


def sections(doc: Document) -> list[tuple[str | None, str, list[str]]]:
    """(anchor, heading line, paragraphs) per section; anchor None for text before any heading
    or for documents without headings. Paragraphs are split at blank lines."""
    out: list[tuple[str | None, str, list[str]]] = []
    current: tuple[str | None, str, list[str]] = (None, "", [])
    para: list[str] = []

    def flush_para() -> None:
        if para:
            current[2].append("\n".join(para).strip())
            para.clear()

    for line in doc.text.split("\n"):
        m = _HEADING.match(line) if doc.format in ("markdown", "html", "rst") else None
        if m:
            flush_para()
            if current[2] or current[0] is not None:
                out.append(current)
            current = (anchor(m.group(2)), line.strip(), [])
        elif line.strip():
            para.append(line)
        else:
            flush_para()
    flush_para()
    if current[2]:
        out.append(current)
    return out


def _split_long(paragraph: str, limit: int) -> list[str]:
    """A paragraph longer than the limit, cut after sentence ends (。！？.!?) or, failing that, hard."""
    pieces = re.split(r"(?<=[。！？!?])|(?<=\.)\s+|\n", paragraph)
    out, cur = [], ""
    for piece in pieces:
        if not piece:
            continue
        if cur and len(cur) + len(piece) > limit:
            out.append(cur)
            cur = ""
        while len(piece) > limit:
            out.append(piece[:limit])
            piece = piece[limit:]
        cur += piece
    if cur:
        out.append(cur)
    return [p.strip() for p in out if p.strip()]


def chunk_document(doc: Document, settings: IndexSettings) -> list[Chunk]:
    chunks = []
    for sec_anchor, heading, paragraphs in sections(doc):
        path = doc.source_path + (f"#{sec_anchor}" if sec_anchor else "")
        head = heading + "\n\n" if heading else ""
        budget = max(settings.chunk_chars - len(head), 50)
        paras = [
            p
            for para in paragraphs
            for p in (_split_long(para, budget) if len(para) > budget else [para])
        ]
        current: list[str] = []
        for p in paras:
            if current and len("\n\n".join([*current, p])) > budget:
                chunks.append(Chunk(path, head + "\n\n".join(current)))
                carry = current[-1] if len(current[-1]) <= settings.overlap_chars else None
                current = [carry] if carry and len(carry) + len(p) + 2 <= budget else []
            current.append(p)
        if current:
            chunks.append(Chunk(path, head + "\n\n".join(current)))
    return chunks


# ----------------------------------------------------------------------------- tokenise and BM25

_CJK_CHAR = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af]")


def bm25_tokens(text: str) -> list[str]:
    """Tokens for BM25: sftgate's scoring tokens (CJK characters, Latin words, numbers) plus a
    bigram for each pair of adjacent CJK characters, which carries most of the word information
    in Chinese without a segmenter."""
    toks = tokens(text)
    bigrams = [
        a + b for a, b in zip(toks, toks[1:]) if _CJK_CHAR.fullmatch(a) and _CJK_CHAR.fullmatch(b)
    ]
    return toks + bigrams


def _bm25s_version() -> str:
    return metadata.version("bm25s")


def compute_index_version(docs: Sequence[Document], settings: IndexSettings) -> str:
    return sha256_json(
        {
            "format": FORMAT_VERSION,
            "documents": sorted((d.source_path, d.format, sha256_text(d.text)) for d in docs),
            "settings": settings.model_dump(mode="json"),
            "retriever": "bm25s",
            "tokenizer": TOKENIZER_VERSION,
            "bm25s": _bm25s_version(),
        }
    )


@dataclass(frozen=True)
class Hit:
    source_path: str
    text: str
    score: float


class Index:
    """A loaded index: chunks and their BM25 model."""

    def __init__(self, path: Path, manifest: dict[str, Any], chunks: list[Chunk], bm25: Any):
        self.path = path
        self.manifest = manifest
        self.chunks = chunks
        self.bm25 = bm25

    @property
    def version(self) -> str:
        return str(self.manifest["index_version"])

    def search(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        import numpy as np

        k = min(k, len(self.chunks))
        qtoks = [bm25_tokens(q) for q in queries]
        vocab = self.bm25.vocab_dict
        ids_list = [[vocab[t] for t in q if t in vocab] for q in qtoks]
        results: list[list[Hit]] = []
        for ids in ids_list:
            if not ids:
                results.append([])
                continue
            scores = self.bm25.get_scores_from_ids(ids)
            top = np.argsort(-scores, kind="stable")[:k]
            results.append(
                [
                    Hit(self.chunks[i].source_path, self.chunks[i].text, float(scores[i]))
                    for i in top
                    if scores[i] > 0
                ]
            )
        return results


def build_index(
    corpus: str | Path,
    out: str | Path,
    settings: IndexSettings,
    *,
    skip_bad: bool = False,
    progress: bool = False,
) -> tuple[Index, list[Problem]]:
    import bm25s
    from rich.progress import track

    docs, skipped = read_corpus(corpus, skip_bad=skip_bad)
    chunks: list[Chunk] = []
    for doc in track(docs, description="chunking", disable=not progress):
        chunks.extend(chunk_document(doc, settings))
    version = compute_index_version(docs, settings)
    corpus_tokens = [bm25_tokens(c.text) for c in chunks]
    vocab: dict[str, int] = {}
    for toks in corpus_tokens:
        for t in toks:
            vocab.setdefault(t, len(vocab))
    ids = [[vocab[t] for t in toks] for toks in corpus_tokens]
    bm25 = bm25s.BM25(k1=settings.k1, b=settings.b)
    bm25.index(bm25s.tokenization.Tokenized(ids=ids, vocab=vocab), show_progress=False)
    manifest = {
        "format": FORMAT_VERSION,
        "index_version": version,
        "documents": len(docs),
        "chunks": len(chunks),
        "settings": settings.model_dump(mode="json"),
        "tokenizer": TOKENIZER_VERSION,
        "bm25s": _bm25s_version(),
        "corpus": str(corpus),
        "skipped": [str(p) for p in skipped],
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        (tmp / "chunks.jsonl").write_text(
            "".join(
                canonical_json({"source_path": c.source_path, "text": c.text}) + "\n"
                for c in chunks
            ),
            encoding="utf-8",
        )
        bm25.save(str(tmp / "bm25"))
        (tmp / "vocab.json").write_text(canonical_json(vocab), encoding="utf-8")
        atomic_write_json(tmp / MANIFEST, manifest)  # last: its presence marks a complete index
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    bm25.vocab_dict = vocab
    return Index(out, manifest, chunks, bm25), skipped


def load_index(path: str | Path) -> Index:
    import bm25s

    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        if manifest.get("format") != FORMAT_VERSION:
            raise ValueError(f"format {manifest.get('format')}")
        with open(path / "chunks.jsonl", encoding="utf-8") as f:
            chunks = [Chunk(**json.loads(line)) for line in f]
        bm25 = bm25s.BM25.load(str(path / "bm25"))
        bm25.vocab_dict = json.loads((path / "vocab.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(
            Problem(
                str(path),
                "",
                "",
                f"not a complete sftgate index ({e})",
                "build it with `sftgate index build`",
            )
        ) from None
    if len(chunks) != manifest["chunks"]:
        raise InputError(
            Problem(
                str(path),
                "",
                "chunks.jsonl",
                "chunk count differs from the manifest",
                "rebuild the index",
            )
        )
    return Index(path, manifest, chunks, bm25)


# ----------------------------------------------------------------------------- retrieve and evaluate


def retrieve_contexts(index: Index, questions: QuestionSet, top_k: int, out: str | Path) -> None:
    """Write a contexts file: the top_k passages for every question, with the header later stages check."""
    hits = index.search([q.question for q in questions], top_k)
    rows = [
        ContextsLine(
            id=q.id,
            passages=[
                {"source_path": h.source_path, "text": h.text, "score": round(h.score, 6)}
                for h in hs
            ],
        )
        for q, hs in zip(questions, hits)
    ]
    meta = ContextsMeta(
        index_version=index.version,
        top_k=top_k,
        eval_set_version=questions.version,
        questions_file=questions.path,
        retriever={"name": "bm25s", **index.manifest["settings"]},
    )
    write_contexts(out, meta, rows)


def path_matches(chunk_path: str, reference_path: str) -> bool:
    return chunk_path == reference_path or chunk_path.startswith(reference_path + "#")


def evaluate_retrieval(index: Index, questions: QuestionSet, ks: Iterable[int]) -> dict[str, Any]:
    """recall@k and MRR of the reference source_paths; share of questions whose evidence is in the top k."""
    ks = sorted(set(ks))
    answerable = [q for q in questions if q.reference.source_paths]
    hits = index.search([q.question for q in answerable], max(ks)) if answerable else []
    recall = {k: 0.0 for k in ks}
    evidence = {k: 0.0 for k in ks}
    rr = 0.0
    for q, hs in zip(answerable, hits):
        refs = q.reference.source_paths
        first = next(
            (i for i, h in enumerate(hs) if any(path_matches(h.source_path, r) for r in refs)), None
        )
        rr += 1 / (first + 1) if first is not None else 0.0
        for k in ks:
            top = hs[:k]
            found = sum(any(path_matches(h.source_path, r) for h in top) for r in refs)
            recall[k] += found / len(refs)
            texts = [squash_ws(h.text) for h in top]
            evidence[k] += all(
                any(squash_ws(e) in t for t in texts) for e in q.reference.original_evidence
            )
    n = len(answerable) or 1
    return {
        "index_version": index.version,
        "eval_set_version": questions.version,
        "n": len(answerable),
        "unanswerable_excluded": len(questions) - len(answerable),
        "recall": {str(k): recall[k] / n for k in ks},
        "evidence_in_top_k": {str(k): evidence[k] / n for k in ks},
        "mrr": rr / n,
    }
