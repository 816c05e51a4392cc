"""Corpus -> documents -> chunks. Pure functions over text; the rules are in docs/retrieval.md.

Ingest: Markdown (.md .markdown), plain text (.txt), reStructuredText (.rst) and HTML (.html .htm)
files under a folder, or a JSONL file of {source_path, text}. Text is normalised (NFC, '\\n' line
endings); HTML and reStructuredText are turned into Markdown-like text whose headings are '#' lines.

Chunk: a document is cut into sections at its headings; each section's paragraphs (or, for a
paragraph longer than the limit, its sentences) are packed into chunks of at most `chunk_chars`
characters, and a chunk starts with the last whole paragraphs/sentences of the one before, up to
`overlap_chars` characters. Every chunk's text starts with its section's heading path (the
document title and parent headings), so a passage names what it is about.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import Field, ValidationError

from sftgate.config import StrictModel, validation_problems
from sftgate.errors import InputError, Problem
from sftgate.questions import read_json_records

# Bump when a change to this module changes the chunks of some corpus: it is part of index_version.
# tests/test_index.py pins the chunks of a small corpus to catch a change made without a bump.
CHUNKER_VERSION = "sftgate-chunker-3"

FORMATS = {
    ".md": "markdown",
    ".markdown": "markdown",
    ".txt": "text",
    ".rst": "rst",
    ".html": "html",
    ".htm": "html",
}


@dataclass(frozen=True)
class Document:
    source_path: str  # relative to the corpus root, '/' separators, no '#'
    text: str  # as read, normalised: NFC, '\n' line endings (hashed into index_version)
    format: str  # a value of FORMATS


@dataclass(frozen=True)
class Chunk:
    source_path: str  # document path + '#' + section anchor where the document has sections
    text: str


@dataclass(frozen=True)
class Corpus:
    documents: list[Document]
    skipped: list[Problem] = field(default_factory=list)  # unreadable files, with --skip-bad
    ignored: list[str] = field(default_factory=list)  # files with other suffixes


def normalise(text: str) -> str:
    """The corpus text that is hashed and chunked: NFC, every line ending '\\n'."""
    return unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))


# ----------------------------------------------------------------------------- ingest


class CorpusRecord(StrictModel):
    source_path: str = Field(min_length=1)
    text: str


def _format_of(source_path: str, text: str) -> str:
    """By suffix; reStructuredText also by content: Sphinx ships its sources as `*.rst.txt`
    (`_sources/`), and a `.txt` file with reST section titles or directives is reST."""
    fmt = FORMATS.get(PurePosixPath(source_path).suffix.lower(), "markdown")
    if fmt == "text" and (source_path.lower().endswith(".rst.txt") or looks_like_rst(text)):
        return "rst"
    return fmt


def _path_problem(file: str, item: str, source_path: str) -> Problem | None:
    p = PurePosixPath(source_path)
    if "#" in source_path:
        return Problem(
            file,
            item,
            "source_path",
            f"{source_path!r} contains '#', which separates a path from its section anchor",
            "rename it without '#'",
        )
    if p.is_absolute() or ".." in p.parts or "\\" in source_path:
        return Problem(
            file,
            item,
            "source_path",
            f"{source_path!r} is not a relative '/'-separated path inside the corpus",
            "use a path like 'hr/leave.md'",
        )
    return None


def _read_jsonl(path: Path) -> tuple[list[Document], list[Problem]]:
    _, records = read_json_records(path)
    docs: list[Document] = []
    problems: list[Problem] = []
    seen: dict[str, str] = {}
    for where, raw in records:
        try:
            rec = CorpusRecord.model_validate(raw)
        except ValidationError as e:
            problems += validation_problems(e, str(path), item=where, data=raw)
            continue
        bad = _path_problem(str(path), where, rec.source_path)
        if bad is None and rec.source_path in seen:
            bad = Problem(
                str(path),
                where,
                "source_path",
                f"duplicate source_path (also at {seen[rec.source_path]})",
                "one line per document",
            )
        if bad:
            problems.append(bad)
            continue
        seen[rec.source_path] = where
        text = normalise(rec.text)
        docs.append(Document(rec.source_path, text, _format_of(rec.source_path, text)))
    return docs, problems


def _read_folder(root: Path) -> tuple[list[Document], list[Problem], list[str]]:
    docs: list[Document] = []
    problems: list[Problem] = []
    ignored: list[str] = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue  # hidden files and folders (.git, editor swap files) are not documents
        fmt = FORMATS.get(path.suffix.lower())
        if fmt is None:
            ignored.append(rel.as_posix())
            continue
        bad = _path_problem(str(path), "", rel.as_posix())
        if bad:
            problems.append(bad)
            continue
        try:
            text = path.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError as e:
            problems.append(
                Problem(
                    str(path),
                    "",
                    "",
                    f"not UTF-8 (invalid byte at offset {e.start})",
                    "convert it to UTF-8, or pass --skip-bad to leave it out",
                )
            )
            continue
        except OSError as e:
            problems.append(
                Problem(
                    str(path),
                    "",
                    "",
                    f"cannot be read ({e.strerror})",
                    "fix its permissions, or pass --skip-bad to leave it out",
                )
            )
            continue
        text = normalise(text)
        docs.append(Document(rel.as_posix(), text, _format_of(rel.as_posix(), text)))
    return docs, problems, ignored


def read_corpus(corpus: str | Path, *, skip_bad: bool = False) -> Corpus:
    """The documents of a folder (by suffix; hidden files skipped) or of a JSONL file.

    Unreadable or non-UTF-8 files raise one InputError naming each of them, unless skip_bad, in
    which case they are left out and listed in `Corpus.skipped`.
    """
    corpus = Path(corpus)
    ignored: list[str] = []
    if corpus.is_dir():
        docs, problems, ignored = _read_folder(corpus)
    elif corpus.is_file() and corpus.suffix == ".jsonl":
        docs, problems = _read_jsonl(corpus)
    else:
        what = "does not exist" if not corpus.exists() else "is neither a folder nor a .jsonl file"
        raise InputError(
            Problem(
                str(corpus),
                "",
                "",
                f"the corpus {what}",
                "pass a folder of .md/.txt/.rst/.html files or a JSONL of {source_path, text}",
            )
        )
    if problems and not skip_bad:
        raise InputError(problems)
    if not docs:
        raise InputError(
            Problem(
                str(corpus),
                "",
                "",
                "no documents found (.md .markdown .txt .rst .html .htm, or JSONL lines)",
                "check the path",
            )
        )
    return Corpus(docs, problems, ignored)


# ----------------------------------------------------------------------------- formats -> Markdown-like


class _HTMLText(HTMLParser):
    """HTML -> text: h1-h6 become '#' lines, block elements paragraphs, <br>/<li>/<tr> lines."""

    PARAGRAPH = {"p", "div", "section", "article", "main", "table", "ul", "ol", "pre", "blockquote"}
    LINE = {"br", "tr", "dt", "dd"}
    SKIP = {"script", "style", "head", "template", "noscript"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip_depth = 0

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in self.SKIP:
            self.skip_depth += 1
        elif re.fullmatch(r"h[1-6]", tag):
            self.parts.append("\n\n" + "#" * int(tag[1]) + " ")
        elif tag == "li":
            self.parts.append("\n- ")
        elif tag in ("td", "th"):
            self.parts.append(" | ")
        elif tag in self.PARAGRAPH:
            self.parts.append("\n\n")
        elif tag in self.LINE:
            self.parts.append("\n")

    def handle_startendtag(self, tag: str, attrs: Any) -> None:
        if tag in self.LINE:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self.skip_depth = max(0, self.skip_depth - 1)
        elif re.fullmatch(r"h[1-6]", tag) or tag in self.PARAGRAPH:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if not self.skip_depth:
            self.parts.append(re.sub(r"[ \t\n]+", " ", data))


def html_to_text(html: str) -> str:
    parser = _HTMLText()
    parser.feed(html)
    parser.close()
    lines = [line.strip() for line in "".join(parser.parts).split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"


_RST_ADORNMENT = re.compile(r"([=\-~^\"'`#*+:.])\1{2,}")
# Explicit markup that only steers Sphinx's output: the line goes, an indented body stays text.
_RST_STRUCTURAL = {
    "only", "contents", "index", "toctree", "highlight", "code-block", "sourcecode", "code",
    "literalinclude", "tabularcolumns", "sectionauthor", "moduleauthor", "currentmodule",
    "testsetup", "testcleanup", "testcode", "testoutput", "doctest", "include", "raw", "meta",
    "image", "figure", "rubric", "centered", "versionadded", "versionchanged", "deprecated",
}  # fmt: skip
_RST_DIRECTIVE = re.compile(r"^\s*\.\.\s+([\w:-]+)::(.*)$")
_RST_EXPLICIT = re.compile(r"^\s*\.\.(\s|$)")  # comments, targets, substitution definitions
_RST_ROLE = re.compile(r":[\w:+-]+:`([^`]+)`")
_RST_LINK = re.compile(r"`([^`<]+?)\s*<[^`>]+>`__?|`([^`]+)`__?")
_RST_LITERAL = re.compile(r"``([^`]+)``")
_RST_OPTION = re.compile(r"^\s+:[\w-]+:(\s.*)?$")
_RST_FIELD_META = re.compile(r"^:(tocdepth|orphan|nosearch|nocomments):.*$")


def _is_title(line: str, underline: str) -> bool:
    """A section title: an unindented text line over an adornment line at least as long."""
    return (
        bool(line.strip())
        and not line[0].isspace()
        and not _RST_ADORNMENT.fullmatch(line.strip())
        and _RST_ADORNMENT.fullmatch(underline) is not None
        and len(underline) >= len(line.strip())
    )


def looks_like_rst(text: str) -> bool:
    """reST by content: an underlined section title or a directive (`.. name::`)."""
    lines = text.split("\n")
    return any(_is_title(a, b) for a, b in zip(lines, lines[1:])) or any(
        _RST_DIRECTIVE.match(line) for line in lines
    )


def rst_inline(text: str) -> str:
    """reST inline markup as the rendered text reads: roles keep their text (`:func:`len`` ->
    len, `:mod:`the docs <pdb>`` -> the docs, `~a.b` -> b), links their text, ``x`` -> `x`."""

    def role(m: re.Match[str]) -> str:
        body = m.group(1).strip()
        title = re.fullmatch(r"(.+?)\s*<[^<>]+>", body, re.S)
        if title:
            return title.group(1)
        body = body.lstrip("!")
        return body.rsplit(".", 1)[-1] if body.startswith("~") else body

    text = _RST_ROLE.sub(role, text)
    text = _RST_LINK.sub(lambda m: m.group(1) or m.group(2), text)
    text = _RST_LITERAL.sub(lambda m: f"`{m.group(1)}`", text)
    return text


def _rst_line(line: str) -> str | None:
    """One body line: explicit markup dropped or reduced to its argument."""
    directive = _RST_DIRECTIVE.match(line)
    if directive:
        name, argument = directive.group(1).lower(), directive.group(2).strip()
        if name in _RST_STRUCTURAL or not argument:
            return None
        return argument  # `.. function:: len(s)` -> len(s); `.. note:: x` -> x
    if _RST_EXPLICIT.match(line) or _RST_FIELD_META.match(line) or line.strip() == "::":
        return None
    return line[:-1] if line.endswith("::") else line  # "Example::" introduces a literal block


def rst_to_markdown(text: str) -> str:
    """Section titles (underlined, or over- and underlined, with = - ~ ^ and the like) become '#'
    headings; levels follow the order in which adornment styles first appear, as in docutils.
    Sphinx's explicit markup and inline roles become the text a reader sees (`_rst_line`)."""
    lines = text.split("\n")
    out: list[str] = []
    styles: list[tuple[str, bool]] = []
    i = 0
    while i < len(lines):
        line, nxt = lines[i], (lines[i + 1] if i + 1 < len(lines) else "")
        after = lines[i + 2] if i + 2 < len(lines) else ""
        title, style, used = None, None, 0
        if _RST_ADORNMENT.fullmatch(line.strip()) and nxt.strip() and after.strip() == line.strip():
            title, style, used = nxt.strip(), (line.strip()[0], True), 3
        elif _is_title(line, nxt.strip()):
            title, style, used = line.strip(), (nxt.strip()[0], False), 2
        if title is not None and style is not None:
            if style not in styles:
                styles.append(style)
            out.append("#" * min(6, styles.index(style) + 1) + " " + title)
            i += used
            continue
        kept = _rst_line(line)
        if kept is not None:
            out.append(kept)
        i += 1
        if _RST_DIRECTIVE.match(line):  # its options (`   :maxdepth: 2`) go with it
            while i < len(lines) and _RST_OPTION.match(lines[i]):
                i += 1
    return rst_inline("\n".join(out))  # roles and links may span lines of a paragraph


def to_markdown(doc: Document) -> str:
    if doc.format == "html":
        return html_to_text(doc.text)
    if doc.format == "rst":
        return rst_to_markdown(doc.text)
    return doc.text


# ----------------------------------------------------------------------------- sections


def anchor(heading: str) -> str:
    """A section anchor from a heading's text, close to GitHub's: inline Markdown markup dropped
    (links keep their text), NFKC, lowercased, punctuation other than '-' and '_' removed,
    whitespace runs -> '-'. CJK text stays as it is: '## 申請方式' -> '申請方式'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = unicodedata.normalize("NFKC", text).lower()
    text = re.sub(r"[^\w\s-]", "", text)
    return re.sub(r"\s+", "-", text.strip()) or "section"


_ATX = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")


@dataclass(frozen=True)
class Section:
    anchor: str | None  # None: text before the first heading, or a document without headings
    heading_path: tuple[str, ...]  # heading lines of the ancestors and the section itself
    paragraphs: tuple[str, ...]


def sections(doc: Document) -> list[Section]:
    """A document's sections, split at its '#' headings (none in plain text). Paragraphs are
    split at blank lines, except inside ``` / ~~~ fences, whose lines are never headings.
    Anchors repeated within a document get '-1', '-2', ... in order, as on GitHub."""
    text = to_markdown(doc)
    out: list[Section] = []
    stack: list[tuple[int, str]] = []  # (level, heading line) of the open headings
    current_anchor: str | None = None
    paragraphs: list[str] = []
    para: list[str] = []
    fence: str | None = None
    counts: dict[str, int] = {}

    def end_paragraph() -> None:
        if any(line.strip() for line in para):
            paragraphs.append("\n".join(para).strip("\n"))
        para.clear()

    def end_section() -> None:
        end_paragraph()
        if paragraphs or current_anchor is not None:
            out.append(Section(current_anchor, tuple(line for _, line in stack), tuple(paragraphs)))
        paragraphs.clear()

    for line in text.split("\n"):
        if fence is not None:
            para.append(line)
            if line.strip().startswith(fence):
                fence = None
            continue
        m_fence = _FENCE.match(line)
        if m_fence:
            fence = m_fence.group(1)[0] * 3
            para.append(line)
            continue
        m = _ATX.match(line) if doc.format != "text" else None
        if m:
            end_section()
            level = len(m.group(1))
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, f"{m.group(1)} {m.group(2).strip()}"))
            base = anchor(m.group(2))
            n = counts.get(base, 0)
            counts[base] = n + 1
            current_anchor = base if n == 0 else f"{base}-{n}"
        elif line.strip():
            para.append(line.rstrip())
        else:
            end_paragraph()
    end_section()
    return [s for s in out if s.paragraphs]


# ----------------------------------------------------------------------------- chunks

# A sentence ends after 。！？!? (with any closing quote/bracket), after '.' followed by
# whitespace, or at a line end; the whitespace after it stays with it, so pieces re-join verbatim.
_SENTENCE = re.compile(r".+?(?:[。！？!?][」』）)\"']*|\.(?=\s)|(?=\n)|$)\s*", re.S)


@dataclass(frozen=True)
class _Piece:
    text: str
    starts_paragraph: bool


def _pieces(paragraphs: tuple[str, ...], budget: int) -> Iterator[_Piece]:
    """Paragraphs as packing units; a paragraph over the budget becomes its sentences, and a
    sentence still over it is cut every `budget` characters."""
    for para in paragraphs:
        if len(para) <= budget:
            yield _Piece(para, True)
            continue
        first = True
        for m in _SENTENCE.finditer(para):
            sentence = m.group(0)
            while sentence:
                yield _Piece(sentence[:budget], first)
                sentence, first = sentence[budget:], False


def _join(pieces: list[_Piece]) -> str:
    text = ""
    for p in pieces:
        text += ("\n\n" if p.starts_paragraph and text else "") + p.text
    return text.strip()


def chunk_document(doc: Document, chunk_chars: int, overlap_chars: int) -> list[Chunk]:
    """Chunks of at most `chunk_chars` characters (heading lines included; when those alone take
    more than half, the body still gets half). Each chunk after the first of a section starts
    with the previous chunk's trailing pieces, whole, totalling at most `overlap_chars`."""
    chunks = []
    for sec in sections(doc):
        path = doc.source_path + (f"#{sec.anchor}" if sec.anchor else "")
        head = "\n".join(sec.heading_path)
        budget = max(chunk_chars - (len(head) + 2 if head else 0), chunk_chars // 2)
        current: list[_Piece] = []
        for piece in _pieces(sec.paragraphs, budget):
            if current and len(_join([*current, piece])) > budget:
                chunks.append(Chunk(path, (head + "\n\n" if head else "") + _join(current)))
                carried: list[_Piece] = []
                for prev in reversed(current):
                    if len(_join([prev, *carried, piece])) > budget:
                        break
                    if sum(len(p.text) for p in [prev, *carried]) > overlap_chars:
                        break
                    carried.insert(0, prev)
                current = carried
            current.append(piece)
        if current:
            chunks.append(Chunk(path, (head + "\n\n" if head else "") + _join(current)))
    return chunks
