from __future__ import annotations

import json
from pathlib import Path

import pytest

from sftgate.cli import main
from sftgate.contexts import load_contexts, resolve_passages
from sftgate.errors import InputError
from sftgate.index import (
    Document,
    IndexSettings,
    bm25_tokens,
    build_index,
    chunk_document,
    compute_index_version,
    evaluate_retrieval,
    load_index,
    read_corpus,
)
from sftgate.questions import load_questions
from tests.conftest import make_question, write_json

DOCS = {
    "it/vpn.md": "# VPN 服務\n\n簡介段落。\n\n## 申請方式\n\n員工須填寫 IT-07 遠端存取申請表。\n\n經直屬主管核准後開通。\n\n## 聯絡窗口\n\n分機 2101。\n",
    "hr/leave.txt": "特別休假規定\n\n到職滿六個月給予特別休假三日。\n",
    "en/travel.rst": "Travel Policy\n=============\n\nPer diem\n--------\n\nThe daily allowance abroad is USD 80.\n",
    "fac/parking.html": "<html><head><style>p{}</style></head><body><h1>停車場</h1><h2>機車</h2><p>機車停車位免費。</p><script>x()</script></body></html>",
}


def make_corpus(root: Path) -> Path:
    for rel, text in DOCS.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    return root


def test_chunking_each_format(tmp_path):
    docs, _ = read_corpus(make_corpus(tmp_path / "kb"))
    chunks = {c.source_path: c.text for d in docs for c in chunk_document(d, IndexSettings())}
    assert (
        chunks["it/vpn.md#申請方式"]
        == "## 申請方式\n\n員工須填寫 IT-07 遠端存取申請表。\n\n經直屬主管核准後開通。"
    )
    assert "it/vpn.md#vpn-服務" in chunks
    assert chunks["hr/leave.txt"].endswith(
        "到職滿六個月給予特別休假三日。"
    )  # no sections in plain text
    assert chunks["en/travel.rst#per-diem"].endswith("The daily allowance abroad is USD 80.")
    assert chunks["fac/parking.html#機車"].endswith("機車停車位免費。")
    assert not any("x()" in t or "p{}" in t for t in chunks.values())


def test_long_sections_split_with_overlap():
    paras = [f"第{i}段。" + "字" * 60 for i in range(10)]
    doc = Document("a.md", "## 節\n\n" + "\n\n".join(paras), "markdown")
    chunks = chunk_document(doc, IndexSettings(chunk_chars=200, overlap_chars=100))
    assert len(chunks) > 3 and all(len(c.text) <= 200 for c in chunks)
    assert all(c.source_path == "a.md#節" for c in chunks)
    assert (
        chunks[1].text.split("\n\n")[1] == chunks[0].text.split("\n\n")[-1]
    )  # last paragraph carried over
    assert all(any(p in c.text for c in chunks) for p in paras)


def test_tokens_cjk_bigrams_and_english():
    assert bm25_tokens("申請 VPN 帳號") == ["申", "請", "vpn", "帳", "號", "申請", "帳號"]
    assert bm25_tokens("Daily allowance, USD 80") == ["daily", "allowance", "usd", "80"]


def test_index_version_stable_and_changing(tmp_path):
    kb = make_corpus(tmp_path / "kb")
    docs, _ = read_corpus(kb)
    v = compute_index_version(docs, IndexSettings())
    (kb / "it/vpn.md").write_bytes((kb / "it/vpn.md").read_bytes().replace(b"\n", b"\r\n"))
    assert (
        compute_index_version(read_corpus(kb)[0], IndexSettings()) == v
    )  # line endings normalised
    assert compute_index_version(docs, IndexSettings(chunk_chars=500)) != v
    assert compute_index_version(docs, IndexSettings(k1=1.2)) != v
    (kb / "hr/leave.txt").write_text("到職滿六個月給予特別休假四日。", encoding="utf-8")
    assert compute_index_version(read_corpus(kb)[0], IndexSettings()) != v


def test_build_load_query_and_crash_safety(tmp_path, monkeypatch):
    kb = make_corpus(tmp_path / "kb")
    out = tmp_path / "idx"
    index, _ = build_index(kb, out, IndexSettings())
    loaded = load_index(out)
    assert loaded.version == index.version
    assert loaded.search(["VPN 申請表"], 2)[0][0].source_path == "it/vpn.md#申請方式"
    assert (
        loaded.search(["daily allowance abroad"], 1)[0][0].source_path == "en/travel.rst#per-diem"
    )

    # A crash while writing a new version leaves the old index in place and loadable.
    import sftgate.index as mod

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(mod, "atomic_write_json", boom)
    (kb / "hr/leave.txt").write_text("改過的內容。", encoding="utf-8")
    with pytest.raises(RuntimeError):
        build_index(kb, out, IndexSettings())
    assert load_index(out).version == index.version
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".idx")] == []
    # A folder without a manifest never loads.
    half = tmp_path / "half"
    half.mkdir()
    (half / "chunks.jsonl").write_text("", encoding="utf-8")
    with pytest.raises(InputError, match="not a complete sftgate index"):
        load_index(half)


def test_non_utf8_named_and_skippable(tmp_path):
    kb = make_corpus(tmp_path / "kb")
    (kb / "bad.md").write_bytes("特休".encode("big5"))
    with pytest.raises(InputError, match="bad.md: not UTF-8"):
        read_corpus(kb)
    docs, skipped = read_corpus(kb, skip_bad=True)
    assert len(docs) == 4 and "bad.md" in skipped[0].file


def test_jsonl_corpus(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(
        json.dumps({"source_path": "x/a.md", "text": "# A\n\n內容一。"}, ensure_ascii=False) + "\n",
        encoding="utf-8",
    )
    docs, _ = read_corpus(path)
    assert chunk_document(docs[0], IndexSettings())[0].source_path == "x/a.md#a"


def test_recall_mrr_hand_checked(tmp_path):
    kb = make_corpus(tmp_path / "kb")
    index, _ = build_index(kb, tmp_path / "idx", IndexSettings())
    q = [
        make_question(
            "a",
            question="IT-07 遠端存取申請表",
            reference={
                "answer": "x",
                "detailed_description": "x",
                "original_evidence": ["員工須填寫 IT-07 遠端存取申請表。"],
                "source_paths": ["it/vpn.md"],
            },
        ),
        make_question(
            "b",
            question="USD 80 daily allowance",
            reference={
                "answer": "x",
                "detailed_description": "x",
                "original_evidence": ["USD 80"],
                "source_paths": ["en/travel.rst", "hr/leave.txt"],
            },
        ),
        make_question(
            "c",
            question="食堂菜單",
            reference={
                "answer": "x",
                "detailed_description": "x",
                "original_evidence": [],
                "source_paths": [],
            },
        ),
    ]
    qs = load_questions(write_json(tmp_path / "q.json", q))
    r = evaluate_retrieval(index, qs, [1, 10])
    # a: rank 1. b: travel at rank 1, leave.txt never (shares no term) -> recall 0.5 for b.
    assert r["n"] == 2 and r["unanswerable_excluded"] == 1
    assert r["recall"]["1"] == pytest.approx((1 + 0.5) / 2)
    assert r["mrr"] == pytest.approx(1.0)
    assert r["evidence_in_top_k"]["1"] == pytest.approx(1.0)


def test_cli_build_retrieve_eval(tmp_path, capsys):
    kb = make_corpus(tmp_path / "kb")
    idx, ctx = tmp_path / "idx", tmp_path / "ctx.jsonl"
    assert main(["index", "build", "--corpus", str(kb), "--out", str(idx)]) == 0
    assert "4 documents" in capsys.readouterr().out
    qpath = write_json(
        tmp_path / "q.json",
        [make_question("a", question="VPN 申請表"), make_question("b", question="機車停車")],
    )
    assert (
        main(
            [
                "index",
                "retrieve",
                "--index",
                str(idx),
                "--questions",
                str(qpath),
                "--top-k",
                "2",
                "--out",
                str(ctx),
            ]
        )
        == 0
    )
    contexts = load_contexts(ctx)
    qs = load_questions(qpath)
    assert contexts.meta.top_k == 2 and contexts.meta.eval_set_version == qs.version
    passages, version = resolve_passages(qs, contexts)
    assert (
        version == load_index(idx).version
        and passages["b"][0].source_path == "fac/parking.html#機車"
    )
    assert main(["index", "query", str(idx), "VPN", "--json"]) == 0
    capsys.readouterr()
    assert (
        main(
            ["index", "eval", "--index", str(idx), "--questions", str(qpath), "-k", "1,3", "--json"]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["n"] == 2
    assert main(["index", "query", str(tmp_path), "x"]) == 2
