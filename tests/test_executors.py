"""Executors: the study's runs in resident child processes and in Ray actors on a local Ray
cluster with CPU workers, with tiny-qwen3 for real (training, evaluation, registry). A worker
killed mid-run, or a Ray node taken away mid-run, leaves its runs recorded as lost; the resumed
study runs them again without redoing anything finished."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from sftgate.resident import ResidentBase
from sftgate.search import RunsLost, StudyConfig, search
from sftgate.search.executors import ExecutorConfig, InProcess, open_executor
from sftgate.search.registry import Registry
from tests.test_search import make_project, runs_by_round

ROUND1 = dict(
    round1=[{"max_steps": 20}, {"max_steps": 40, "lr": 1e-3}, {"max_length": 64}],
    round1_reasons=["base", "long: killed mid-run", "too short: fails"],
)
VICTIM_STEPS = '"max_steps": 40'


def with_executor(config: Path, executor: dict[str, Any]) -> Path:
    data = yaml.safe_load(config.read_text(encoding="utf-8"))
    data["executor"] = executor
    if "storage" in executor:
        del data["workdir"]
    config.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return config


def worker_records(work: Path, round_: int) -> dict[str, dict]:
    return {
        p.parent.name: json.loads(p.read_text(encoding="utf-8"))
        for p in (work / "runs").glob(f"r{round_}-*/worker-gate.json")
    }


class Killer(threading.Thread):
    """Kills the worker process of the run with VICTIM_STEPS while it is training and another run
    of its round is training or evaluating at the same moment: the kill happens only if the
    round's runs are in progress in parallel."""

    def __init__(self, root: Path, work: Path, kill: Any = None):
        super().__init__(daemon=True)
        self.root, self.work = root, work
        self.kill = kill or (lambda pid: os.kill(pid, signal.SIGKILL))
        self.killed: tuple[str, int] | None = None
        self.alongside: str | None = None  # a run of the round in progress at the kill
        self.stop = threading.Event()

    def victim(self) -> str | None:
        db = self.root / "registry.sqlite"
        if not db.exists():
            return None
        try:
            con = sqlite3.connect(db, timeout=1)
            row = con.execute(
                "SELECT id FROM runs WHERE params_json LIKE ?", (f"%{VICTIM_STEPS}%",)
            ).fetchone()
            con.close()
        except sqlite3.OperationalError:
            return None
        return row[0] if row else None

    def run(self) -> None:
        while not self.stop.is_set() and self.killed is None:
            time.sleep(0.02)
            run_id = self.victim()
            if run_id is None:
                continue
            try:
                workers = worker_records(self.work, 1)
            except (FileNotFoundError, ValueError):  # a file being replaced
                continue
            busy = [
                k
                for k, w in workers.items()
                if k != run_id and w["stage"] in ("training", "evaluating")
            ]
            if run_id in workers and workers[run_id]["stage"] == "training" and busy:
                self.kill(workers[run_id]["pid"])
                self.killed, self.alongside = (run_id, workers[run_id]["pid"]), busy[0]


def kill_resume(config: Path, work: Path, kill: Any = None) -> tuple[tuple[str, int], dict, Any]:
    """Search with a worker killed mid-run (the search stops with RunsLost), then resume."""
    killer = Killer(config.parent, work, kill)
    killer.start()
    try:
        with pytest.raises(RunsLost, match="lost while training") as lost:
            search(config, progress=False)
    finally:
        killer.stop.set()
        killer.join()
    assert killer.killed is not None, "the round's runs were never in progress at once"
    assert killer.alongside is not None
    assert killer.killed[0] in str(lost.value) and "again" in str(lost.value)
    at_kill = {
        r["id"]: r for rs in runs_by_round(config.parent / "registry.sqlite").values() for r in rs
    }
    return killer.killed, at_kill, search(config, progress=False)


def check_killed_run_reran(killed: tuple[str, int], at_kill: dict, config: Path) -> None:
    run_id, pid = killed
    victim = at_kill[run_id]
    assert victim["status"] == "failed" and victim["lost"] == 1
    assert "lost while training" in victim["failure"]
    finished = {k: v for k, v in at_kill.items() if v["status"] == "done"}
    assert len(finished) >= 2  # round 0 and round 1's other runs went on
    failed = [r for r in at_kill.values() if r["status"] == "failed" and not r["lost"]]
    assert len(failed) == 1 and "max_length=64" in failed[0]["failure"]  # an ordinary failure
    after = {
        r["id"]: r for rs in runs_by_round(config.parent / "registry.sqlite").values() for r in rs
    }
    for k, r in finished.items():  # nothing finished is redone
        assert (after[k]["adapter_id"], after[k]["updated_at"]) == (
            r["adapter_id"],
            r["updated_at"],
        )
    # the workers are resident: the one that ran round 0 ran a run of round 1 on the same base
    by_pid: dict[int, list[dict]] = {}
    for r in at_kill.values():
        if r["worker"] and r["status"] == "done":
            by_pid.setdefault(r["worker"]["pid"], []).append(r["worker"])
    assert any(len(ws) >= 2 and all(w["model_loads"] == 1 for w in ws) for ws in by_pid.values())
    rerun = after[run_id]
    assert rerun["status"] == "done" and rerun["lost"] == 0 and rerun["failure"] is None
    assert rerun["worker"]["pid"] != pid and rerun["eval_score_avg"] is not None
    assert all(r["status"] in ("done", "failed") for r in after.values())


# ---------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("executor", "error"),
    [
        ({"kind": "local", "address": "auto"}, "address belong"),
        ({"kind": "local", "gpus_per_run": 0}, "gpus_per_run belong"),
        ({"kind": "ray", "parallel_runs": 2}, "parallel_runs belong"),
        ({"kind": "ray", "address": "auto"}, "executor.storage"),
        ({"kind": "ray", "gpus_per_run": -1}, "greater than or equal"),
        ({"kind": "dask"}, "'local' or 'ray'"),
    ],
)
def test_executor_config_rejects_fields_of_the_other_kind(executor, error):
    with pytest.raises(ValidationError, match=error):
        ExecutorConfig.model_validate(executor)


def test_study_executor_shorthand_and_storage(tmp_path):
    base = {
        "name": "s",
        "prompt": "p.md",
        "train_questions": "t.json",
        "gate_questions": "g.json",
        "full_questions": "f.json",
    }
    assert StudyConfig.model_validate({**base, "executor": "ray"}).executor.kind == "ray"
    assert StudyConfig.model_validate(base).executor.kind == "local"
    on_nfs = StudyConfig.model_validate(
        {**base, "executor": {"kind": "ray", "address": "auto", "storage": "/mnt/shared"}}
    )
    assert on_nfs.work == Path("/mnt/shared/s")
    with pytest.raises(ValidationError, match="either workdir or executor.storage"):
        StudyConfig.model_validate(
            {**base, "workdir": "w", "executor": {"kind": "ray", "storage": "/mnt/shared"}}
        )


def test_local_executor_on_a_cpu():
    assert isinstance(open_executor(ExecutorConfig()), InProcess)  # no GPU: the search's process
    two = open_executor(ExecutorConfig(parallel_runs=2))
    assert two.capacity == 2 and "on the CPU" in two.where()
    two.close()
    with pytest.raises(Exception, match="shows 0 GPU"):
        open_executor(ExecutorConfig(gpus=[0]))


# ---------------------------------------------------------------------- local child processes


@pytest.mark.slow
def test_local_processes_run_a_round_in_parallel_and_rerun_a_killed_worker(tmp_path):
    config = with_executor(make_project(tmp_path, **ROUND1), {"parallel_runs": 3})
    killed, at_kill, result = kill_resume(config, tmp_path / "work")
    check_killed_run_reran(killed, at_kill, config)
    assert "killed by SIGKILL" in at_kill[killed[0]]["failure"]
    assert result.study.status == "finished" and result.decision.action == "stop"
    records = worker_records(tmp_path / "work", 1)
    assert len(records) == 3 and {r["pid"] for r in records.values()}.isdisjoint({os.getpid()})
    # the workers' output (here the failing run's failure) went to the runs' folders
    logs = "".join(p.read_text(encoding="utf-8") for p in (tmp_path / "work").glob("runs/*/*.log"))
    assert "failed: InputError" in logs and "no example fits in max_length=64" in logs


# ---------------------------------------------------------------------- Ray


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray cluster of CPU workers: a head node that runs no tasks and two worker nodes
    (1 and 2 CPUs), so that a node can be taken away mid-run."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False}
    )
    cluster.add_node(num_cpus=1)
    cluster.add_node(num_cpus=2)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def ray_config(root: Path, cluster: Any) -> tuple[Path, Path]:
    storage = root / "shared"
    config = with_executor(
        make_project(root, **ROUND1),
        {"kind": "ray", "address": cluster.address, "storage": str(storage), "gpus_per_run": 0},
    )
    return config, storage / "tiny-study"


@pytest.mark.slow
def test_ray_runs_a_round_in_parallel_and_reruns_a_killed_worker(tmp_path, ray_cluster):
    config, work = ray_config(tmp_path, ray_cluster)
    killed, at_kill, result = kill_resume(config, work)
    check_killed_run_reran(killed, at_kill, config)
    failure = at_kill[killed[0]]["failure"]
    assert "ActorDiedError" in failure and "its worker process has died" in failure
    assert result.study.status == "finished" and result.decision.action == "stop"
    assert len(worker_records(work, 1)) == 3
    # Workers read the pinned inputs from storage, byte for byte the originals.
    for key, name in (("prompt", "prompt.md"), ("gate_questions", "gate.json")):
        assert (work / "inputs" / key / name).read_bytes() == (tmp_path / name).read_bytes()
    assert (work / "report.md").exists()
    reg = Registry(tmp_path / "registry.sqlite")
    try:
        rows = reg.runs(result.study.id)
        assert all(r.gate_dir.startswith(str(work)) for r in rows if r.state.value == "done")  # type: ignore[union-attr]
    finally:
        reg.close()


def test_ray_refuses_a_cluster_without_the_gpus_a_run_asks_for(tmp_path, ray_cluster):
    from sftgate.errors import SftgateError

    with pytest.raises(SftgateError, match="gpus_per_run: 0"):
        open_executor(
            ExecutorConfig(kind="ray", address=ray_cluster.address, storage=str(tmp_path))
        )


@pytest.mark.slow
def test_ray_runs_go_to_the_actors_that_start(tmp_path, ray_cluster):
    """More actors allowed than the cluster can place (as right after a node is lost, before
    Ray counts it gone): every run is still done, by the actors that did start, one after
    another on the same actor."""
    from sftgate.search.executors import RayActors

    executor = RayActors(
        ExecutorConfig(
            kind="ray", address=ray_cluster.address, storage=str(tmp_path), gpus_per_run=0
        )
    )
    executor.capacity = 6  # the cluster has 3 CPUs: 3 actors at most are placed
    specs = [failing_spec(tmp_path, n) for n in range(5)]
    for spec in specs:
        executor.start(spec)
    outcomes = collect(executor, 5)
    executor.close()
    assert sorted(o.run_id for o in outcomes) == [s.run_id for s in specs]
    assert all(o.status == "failed" and not o.lost for o in outcomes)
    assert len({o.worker["pid"] for o in outcomes}) <= 3  # type: ignore[index]


def failing_spec(tmp_path: Path, n: int, devices: str | None = None):
    """A full-set evaluation without an adapter: it fails at once, in its worker."""
    from sftgate.evaluate import DecodeSettings
    from sftgate.params import TrainParams
    from sftgate.search.runner import RunSpec

    return RunSpec(
        run_id=f"r-{n}", split="full", params=TrainParams(), model="tiny-qwen3",
        quantization="auto", gradient_checkpointing=None, prompt="p.md",
        train_questions="t.json", train_contexts=None, eval_questions="f.json",
        eval_contexts=None, run_dir=str(tmp_path / f"r-{n}"), decode=DecodeSettings(),
        progress=False,
    )  # fmt: skip


class Stages:  # what the driver hears
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def stage(self, spec: Any, stage: str, worker: dict | None) -> None:
        self.seen.append((spec.run_id, stage))

    def progress(self, spec: Any, done: int, total: int) -> None: ...


def collect(executor: Any, n: int, timeout_s: float = 180) -> list:
    outcomes: list = []
    deadline = time.monotonic() + timeout_s
    while len(outcomes) < n and time.monotonic() < deadline:
        outcomes += executor.wait(1, Stages())
    return outcomes


def test_local_executor_spreads_runs_over_the_visible_gpus(monkeypatch):
    """The slot-to-GPU mapping, with the GPU count faked (no GPU here); the next test checks
    that a child really runs with its slot's CUDA_VISIBLE_DEVICES."""
    import sftgate.search.executors as ex

    monkeypatch.setattr(ex, "visible_gpus", lambda: ["2", "5"])  # CUDA_VISIBLE_DEVICES=2,5
    cases = [
        (ExecutorConfig(), ["2", "5"]),  # one run per GPU
        (ExecutorConfig(gpus=[1]), ["5"]),  # one chosen GPU: a child process pinned to it
        (ExecutorConfig(parallel_runs=3), ["2", "5", "2"]),  # more runs than GPUs share them
        (ExecutorConfig(gpus=[0], parallel_runs=2), ["2", "2"]),
    ]
    for config, devices in cases:
        executor = open_executor(config)
        assert isinstance(executor, ex.LocalProcesses) and executor.devices == devices
    assert isinstance(open_executor(ExecutorConfig(parallel_runs=1)), InProcess)  # one at a time
    with pytest.raises(Exception, match="names \\[2\\]"):
        open_executor(ExecutorConfig(gpus=[2]))


def test_each_child_process_runs_with_its_slots_devices_and_stays_for_the_next_run(tmp_path):
    from sftgate.search.executors import LocalProcesses, read_worker

    executor = LocalProcesses(["3", "7"], threads=1)
    for n in range(2):
        executor.start(failing_spec(tmp_path, n))
    outcomes = sorted(collect(executor, 2, 120), key=lambda o: o.run_id)
    for n in range(2, 4):  # the slots' next runs go to the same (resident) processes
        executor.start(failing_spec(tmp_path, n))
    later = sorted(collect(executor, 2, 120), key=lambda o: o.worker["devices"])  # type: ignore[index]
    executor.close()
    assert [o.run_id for o in outcomes] == ["r-0", "r-1"]
    assert all(o.status == "failed" and not o.lost for o in outcomes + later)
    assert all("no finished adapter" in (o.failure or "") for o in outcomes)
    assert [read_worker(failing_spec(tmp_path, n))["devices"] for n in range(2)] == ["3", "7"]  # type: ignore[index]
    assert [o.worker["devices"] for o in outcomes] == ["3", "7"]  # type: ignore[index]
    assert [o.worker["pid"] for o in later] == [o.worker["pid"] for o in outcomes]  # type: ignore[index]
    assert not any(slot.proc for slot in executor.slots)  # closed: the idle children exited


def test_a_worker_reports_its_stages_and_progress(tmp_path, monkeypatch):
    """`work` (the body of every worker) on a real tiny run: the worker file goes through each
    stage with steps and questions done, which the driver shows per run."""
    import sftgate.search.executors as ex
    from sftgate.search.driver import Specs
    from sftgate.search.inputs import pin_inputs, prepare_contexts
    from sftgate.search.live import LiveView
    from sftgate.search.study import load_study_config

    config = load_study_config(make_project(tmp_path))
    inputs = pin_inputs(config)
    prepare_contexts(config, inputs)
    params = config.policy.round0.model_copy(update={"max_steps": 3})
    spec = Specs(config, inputs, progress=False).spec("r0-0-w", params, "gate")
    written: list[dict] = []
    real = ex.atomic_write_text

    def spy(path, text):  # the real write, remembered
        written.append(json.loads(text))
        real(path, text)

    monkeypatch.setattr(ex, "atomic_write_text", spy)
    outcome = ex.work(spec, ResidentBase())
    assert outcome.status == "done" and outcome.worker["pid"] == os.getpid()  # type: ignore[index]
    # where its time went: each part recorded, the rest as other, summing to the whole
    t = outcome.timings
    assert t["train_steps_s"] > 0 and t["decode_s"] > 0 and t["model_load_s"] > 0
    assert sum(v for k, v in t.items() if k != "total_s") == pytest.approx(t["total_s"], abs=0.01)
    assert t["total_s"] == pytest.approx(outcome.train_s + outcome.eval_s, abs=0.01)  # type: ignore[operator]
    from sftgate.search.live import time_split

    assert time_split(t).startswith(" · ") and "train steps" in time_split(t)
    stages = [w["stage"] for w in written]
    assert stages[0] == "starting" and stages[-1] == "done"
    assert stages.index("training") < stages.index("evaluating")
    progress = {(w["stage"], tuple(w["progress"])) for w in written if w["progress"]}
    assert ("training", (3, 3)) in progress and ("evaluating", (3, 3)) in progress
    assert "r0-0-w" in (tmp_path / "work" / "runs" / "r0-0-w" / "worker-gate.json").read_text()

    view = LiveView("s", [10.0], enabled=False, slots=3)
    view.set_round(1, 3)
    view.set_stage("r1-0", "training", "node-2 pid 7 GPU 1")
    view.set_progress("r1-0", 12, 40)
    from rich.console import Console

    console = Console(width=120, record=True)
    console.print(view.render())
    text = console.export_text()
    assert "r1-0: training 12/40 steps" in text and "node-2 pid 7 GPU 1" in text
    assert "2 run(s)" in text  # queued


@pytest.mark.slow
def test_ray_node_lost_mid_run_is_recorded_and_rerun(tmp_path, ray_cluster):
    """The node running a run goes away (its raylet and workers are killed); runs last in this
    module, since the cluster has one node less afterwards."""
    import psutil
    from ray._private import ray_constants

    def remove_node_of(pid: int) -> None:
        parents = {p.pid for p in psutil.Process(pid).parents()}
        for node in ray_cluster.worker_nodes:
            raylet = node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
            if raylet in parents:
                ray_cluster.remove_node(node, allow_graceful=False)
                return
        raise AssertionError(f"no worker node runs pid {pid}")

    config, work = ray_config(tmp_path, ray_cluster)
    (victim, _), at_kill, result = kill_resume(config, work, remove_node_of)
    lost = {k for k, r in at_kill.items() if r["lost"]}  # every run that was on that node
    assert victim in lost
    # Ray reports the actor unreachable, or dead with its node, depending on which it learns first
    assert any(
        name in at_kill[victim]["failure"] for name in ("ActorUnavailableError", "ActorDiedError")
    )
    assert all(at_kill[k]["status"] == "failed" for k in lost)
    after = {r["id"]: r for rs in runs_by_round(tmp_path / "registry.sqlite").values() for r in rs}
    for k, r in at_kill.items():
        if r["status"] == "done":  # nothing finished is redone
            assert after[k]["updated_at"] == r["updated_at"]
    assert after[victim]["status"] == "done" and not any(r["lost"] for r in after.values())
    ordinary = [r for r in after.values() if r["status"] == "failed"]
    assert len(ordinary) == 1 and "max_length=64" in ordinary[0]["failure"]
    assert len(ray_cluster.worker_nodes) == 1  # the resumed study ran on the node left
    assert result.study.status == "finished" and result.decision.action == "stop"
