"""A study's pins are a contract: the same config gives the same hashes in every sftgate version,
so a study recorded by an earlier version resumes. New settings enter the hash only when set."""

from __future__ import annotations

from sftgate.search.study import StudyConfig

BASE = {
    "name": "s",
    "prompt": "p.md",
    "train_questions": "t.json",
    "gate_questions": "g.json",
    "full_questions": "f.json",
}
# What sftgate 0.1.0 (commit 012fae8) recorded for these two configs.
DEFAULTS = {
    "settings.policy": "b5ec6b046f885c92f30afd2cdbe773098e52b67faa9d1c139a247c60e3986cd2",
    "settings.decode": "ee3e6a4b879e374b0fa885304943282de58568c4b87c63e7eac36aa8bef75659",
    "settings.training": "c99910b64899051e466f4eeb5ed5835e3acc701bcd580aec95a56c64d85f7237",
    "settings.retrieval": "6b21c587929cc5566f2194e7c27259844dfb2239a8e938b9102d88ce7faae3ff",
}
CHANGED = {
    "settings.policy": "b4ae9d50122ea6528c1e45b5fef492cf999acb03982ab6468f18eba15013b941",
    "settings.decode": "e483b28ff64a2cd0cbf516e379ad97babe1cb145d4738a4f9ccf6aa0ed1cca33",
    "settings.training": "c99910b64899051e466f4eeb5ed5835e3acc701bcd580aec95a56c64d85f7237",
}


def test_pins_of_earlier_studies_hold():
    defaults = StudyConfig.model_validate({**BASE, "retrieval": {"corpus": "kb"}})
    assert defaults.settings_pins() == DEFAULTS
    changed = StudyConfig.model_validate(
        {
            **BASE,
            "policy": {
                "round0": {"max_steps": 4, "lr_scheduler": "cosine"},
                "thresholds": {"gate_score": 90},
            },
            "decode": {"batch_size": 8},
        }
    )
    assert changed.settings_pins() == CHANGED


def test_decode_constrain_enters_the_decode_pin_only_when_set():
    """Every run of a study decodes with the study's settings, so a constrained study is another
    study: its decode pin differs, the default one's is the earlier one."""
    held = StudyConfig.model_validate(
        {**BASE, "retrieval": {"corpus": "kb"}, "decode": {"constrain": "json_schema"}}
    )
    plain = StudyConfig.model_validate(
        {**BASE, "retrieval": {"corpus": "kb"}, "decode": {"constrain": "none"}}
    )
    assert plain.settings_pins() == DEFAULTS
    assert held.settings_pins()["settings.decode"] != DEFAULTS["settings.decode"]
