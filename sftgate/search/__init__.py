"""The search: a study's config and inputs, the planner, the executors and one run's work, the
registry that records it all, and the report.

    study.py      the study config (`kind: study`)
    inputs.py     pinned inputs, the index and the frozen contexts
    planner.py    plan_next(history, policy) -> Decision: the seed's rules, pure
    runner.py     execute_run(spec) -> RunOutcome: one run from plain data, no registry
    executors.py  where runs execute: this process, a child process per GPU, Ray tasks
    registry.py   SQLite: studies, runs (Run records), per-question scores, decisions
    live.py       the live view
    driver.py     search(): the loop plan -> execute -> record, the registry's only writer
    report.py     the study report from the registry
"""

from sftgate.search.driver import RunsLost, SearchResult, drive, history, search
from sftgate.search.study import StudyConfig, load_study_config

__all__ = [
    "RunsLost",
    "SearchResult",
    "StudyConfig",
    "drive",
    "history",
    "load_study_config",
    "search",
]
