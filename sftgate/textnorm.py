"""Text normalisation and tokenisation shared by the scorer, the leakage check and retrieval.

Documented in docs/scoring/eval_json_v2.md ("Tokens"): NFKC, lowercase, punctuation dropped;
each CJK character is one token; each run of other letters/digits is one token.
"""

from __future__ import annotations

import re
import unicodedata

# CJK ideographs (incl. extension A and compatibility), kana and Hangul syllables: one token each.
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af"
_TOKEN = re.compile(rf"[{_CJK}]|[^\W_{_CJK}]+")
_WS = re.compile(r"\s+")
_ANY_CJK = re.compile(rf"[{_CJK}]")


def nfkc_lower(text: str) -> str:
    return unicodedata.normalize("NFKC", text).lower()


def tokens(text: str) -> list[str]:
    """CJK characters and Latin/digit runs, after NFKC + lowercase; punctuation and spaces dropped."""
    return _TOKEN.findall(nfkc_lower(text))


def has_cjk(text: str) -> bool:
    """Whether the text holds a CJK character (how question sets are split into zh and en)."""
    return _ANY_CJK.search(text) is not None


def squash_ws(text: str) -> str:
    """Whitespace normalisation for verbatim checks: NFKC, every whitespace run -> one space, stripped.

    Case and punctuation are kept: a quote must still be the passage's own words.
    """
    return _WS.sub(" ", unicodedata.normalize("NFKC", text)).strip()


def compact(text: str) -> str:
    """Tokens joined without separators: the key for exact-duplicate detection."""
    return "".join(tokens(text))
