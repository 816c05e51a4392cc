"""BM25 tokens for Traditional Chinese and English alike, without a word segmenter.

The base tokens are sftgate's scoring tokens (`sftgate.textnorm.tokens`: NFKC, lowercase; one
token per CJK character; one per run of other letters/digits). BM25 adds a bigram for each
pair of adjacent CJK characters in the same run, which carries most of the word information in
Chinese (申請 / 核准 / 帳號). benchmarks/bench_index.py measures the variants on the sample
project: unigrams + bigrams retrieve best there (numbers in docs/retrieval.md).
"""

from __future__ import annotations

import re

from sftgate.textnorm import nfkc_lower

# Bump when bm25_tokens changes for some text: it is part of index_version.
TOKENIZER_VERSION = "cjk-uni+bi+latin-v1"

_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af"
_RUN = re.compile(rf"([{_CJK}]+)|[^\W_{_CJK}]+")


def bm25_tokens(text: str) -> list[str]:
    """CJK characters, then Latin/digit words, in order of appearance per run; the bigrams of
    each CJK run follow its characters. '申請 VPN 帳號' -> 申 請 申請 vpn 帳 號 帳號."""
    out: list[str] = []
    for m in _RUN.finditer(nfkc_lower(text)):
        run = m.group(1)
        if run is None:
            out.append(m.group(0))
        else:
            out.extend(run)
            out.extend(run[i : i + 2] for i in range(len(run) - 1))
    return out
