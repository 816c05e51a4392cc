from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROMPT_PATH = REPO / "docs" / "prompts" / "eval_json_v2.md"


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Every test gets its own SFTGATE_HOME, so nothing touches a user's data."""
    monkeypatch.setenv("SFTGATE_HOME", str(tmp_path_factory.mktemp("sftgate_home")))


def make_question(qid: str = "q1", **overrides) -> dict:
    q = {
        "id": qid,
        "question": "VPN 帳號要怎麼申請？",
        "reference": {
            "answer": "填寫 IT-07 表單並經主管核准。",
            "detailed_description": "員工須填寫 IT-07 遠端存取申請表，經直屬主管核准後由資訊部開通。",
            "original_evidence": ["填寫 IT-07 遠端存取申請表"],
            "source_paths": ["it/vpn.md"],
        },
    }
    q.update(overrides)
    return q


def write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=2), encoding="utf-8")
    return path
