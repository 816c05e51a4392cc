"""Where a round's runs execute: in the search's own process, in one child process per GPU, or as
Ray tasks on a cluster.

The search's driver hands run specs to an executor and gets outcomes back; only the driver writes
the registry. A worker reports where it runs and its stage (training, evaluating) in a small JSON
file in the run's folder, `RUN_DIR/worker-SPLIT.json`, which the driver polls: the same file works
for a child process and for a Ray task on another node, because run folders live on storage
every worker reaches. Its output goes to `RUN_DIR/worker-SPLIT.log`.

A worker that dies mid-run (killed, out of host memory, its node lost) gives a *lost* outcome:
the run is recorded as failed with what happened, the search stops after the round's other
runs, and resuming the study runs it again. A run that fails by itself (out of GPU memory, NaN
loss) is an ordinary failure, as in one process.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import Field, model_validator

from sftgate.config import StrictModel
from sftgate.errors import SftgateError
from sftgate.fsutil import atomic_write_text
from sftgate.search.runner import RunOutcome, RunSpec, execute_run, lost_outcome

# ---------------------------------------------------------------------- the config


class ExecutorConfig(StrictModel):
    """How runs execute. Results do not depend on it, so it is not pinned: a study started on one
    executor may be resumed on another."""

    kind: Literal["local", "ray"] = Field(
        "local",
        description="local: this machine's GPUs (one after another on one GPU, one run per GPU "
        "at once on several); ray: tasks on a Ray cluster, one GPU each",
    )
    parallel_runs: int | None = Field(
        None,
        ge=1,
        description="local: runs at once, each in its own process; default one per GPU of "
        "`gpus`, or 1 (in the search's own process) with one GPU or none. More than the GPUs "
        "shares them (run i of those at once gets gpus[i % len(gpus)])",
    )
    gpus: list[int] | None = Field(
        None, description="local: the visible GPU indices to use; default all of them"
    )
    address: str | None = Field(
        None,
        description="ray: the cluster to join ('auto', 'HEAD:6379', 'ray://HEAD:10001'); "
        "None starts a Ray cluster on this machine (or uses the one this process already joined)",
    )
    storage: str | None = Field(
        None,
        description="ray: a folder every node reaches at the same path (NFS, a shared disk); "
        "the study's files (question sets, contexts, adapters, predictions, report) go to "
        "STORAGE/NAME. Required with `address`",
    )
    gpus_per_run: float = Field(
        1, ge=0, description="ray: GPUs each run's task asks for; 0 runs on CPU workers"
    )
    cpus_per_run: float = Field(1, gt=0, description="ray: CPUs each run's task asks for")

    @model_validator(mode="after")
    def _fields_of_the_kind(self) -> ExecutorConfig:
        local_only, ray_only = (
            {"parallel_runs", "gpus"},
            {
                "address",
                "storage",
                "gpus_per_run",
                "cpus_per_run",
            },
        )
        wrong = (ray_only if self.kind == "local" else local_only) & self.model_fields_set
        if wrong:
            other = "ray" if self.kind == "local" else "local"
            raise ValueError(
                f"{', '.join(sorted(wrong))} belong(s) to kind: {other}, not kind: {self.kind}"
            )
        if self.kind == "ray" and self.address is not None and self.storage is None:
            raise ValueError(
                "a Ray cluster's nodes must reach the study's files: name a folder every node "
                "mounts at the same path as executor.storage"
            )
        return self


# ---------------------------------------------------------------------- the worker side


def worker_file(spec: RunSpec) -> Path:
    return Path(spec.run_dir) / f"worker-{spec.split}.json"


def read_worker(spec: RunSpec) -> dict[str, Any] | None:
    try:
        return dict(json.loads(worker_file(spec).read_text(encoding="utf-8")))
    except (FileNotFoundError, ValueError):  # not started yet, or being replaced
        return None


@contextmanager
def _output_to(path: Path) -> Iterator[None]:
    """Send this process's stdout and stderr (Python's and the C libraries') to a file, then back."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "a", encoding="utf-8") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def work(spec: RunSpec) -> RunOutcome:
    """A worker's whole job: report where it runs and each stage, run the spec, log to the run's
    folder. The same in a child process and in a Ray task."""
    Path(spec.run_dir).mkdir(parents=True, exist_ok=True)
    info = {
        "run_id": spec.run_id,
        "split": spec.split,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "started": time.time(),
    }

    state: dict[str, Any] = {"stage": "starting", "progress": None}
    last_write = 0.0

    def write() -> None:
        nonlocal last_write
        last_write = time.monotonic()
        atomic_write_text(worker_file(spec), json.dumps({**info, **state, "updated": time.time()}))

    def on_stage(stage: str) -> None:
        state.update(stage=stage, progress=None)
        write()

    def on_progress(done: int, total: int) -> None:  # at most one write a second
        state["progress"] = [done, total]
        if time.monotonic() - last_write >= 1.0 or done == total:
            write()

    write()
    with _output_to(Path(spec.run_dir) / f"worker-{spec.split}.log"):
        outcome = execute_run(spec, on_stage, on_progress)
        if outcome.status == "failed":  # the log says why, beside what the run printed
            print(f"{spec.run_id} failed: {outcome.failure}", file=sys.stderr)
    on_stage(outcome.status)
    return replace(outcome, worker=info)


def _child(spec: RunSpec, devices: str | None, threads: int | None, conn: Connection) -> None:
    """A local child process: pin its GPU before CUDA starts, run, send the outcome back."""
    if devices is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = devices
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    conn.send(work(spec))
    conn.close()


def _ray_task(spec: RunSpec) -> RunOutcome:
    return work(spec)


# ---------------------------------------------------------------------- the driver side


class Watch(Protocol):
    """What the driver hears while runs execute."""

    def stage(self, spec: RunSpec, stage: str, worker: dict[str, Any] | None) -> None: ...

    def progress(self, spec: RunSpec, done: int, total: int) -> None: ...


class Executor(Protocol):
    capacity: int  # runs it accepts at once
    nests_progress: bool  # runs show their own progress bars inside the driver's live view

    def start(self, spec: RunSpec) -> None: ...

    def wait(self, timeout_s: float, watch: Watch) -> list[RunOutcome]:
        """The outcomes of runs that finished within about timeout_s; stages and progress go to
        watch as they happen."""
        ...

    def close(self) -> None: ...

    def where(self) -> str: ...


class InProcess:
    """The search's own process, one run after another (one GPU or none)."""

    capacity = 1
    nests_progress = True

    def __init__(self) -> None:
        self.queue: list[RunSpec] = []

    def where(self) -> str:
        return "local: this process, one run at a time"

    def start(self, spec: RunSpec) -> None:
        self.queue.append(spec)

    def wait(self, timeout_s: float, watch: Watch) -> list[RunOutcome]:
        if not self.queue:
            return []
        spec = self.queue.pop(0)
        watch.stage(spec, "starting", None)
        outcome = execute_run(
            spec,
            lambda stage: watch.stage(spec, stage, None),
            lambda done, total: watch.progress(spec, done, total),
        )
        return [outcome]

    def close(self) -> None:
        self.queue.clear()


class WorkerFiles:
    """Follows the worker files of runs executing elsewhere (child processes, Ray tasks)."""

    def __init__(self) -> None:
        self.seen: dict[str, tuple[RunSpec, str | None]] = {}  # run id -> (spec, last stage)

    def add(self, spec: RunSpec) -> None:
        worker_file(spec).unlink(missing_ok=True)  # a previous attempt's
        self.seen[spec.run_id] = (spec, None)

    def drop(self, spec: RunSpec) -> None:
        self.seen.pop(spec.run_id, None)

    def poll(self, watch: Watch) -> None:
        for run_id, (spec, last) in list(self.seen.items()):
            worker = read_worker(spec)
            if not worker or worker["stage"] in ("done", "failed"):
                continue
            if worker["stage"] != last:
                self.seen[run_id] = (spec, worker["stage"])
                watch.stage(spec, worker["stage"], worker)
            if worker["progress"]:
                watch.progress(spec, *worker["progress"])


def _lost(spec: RunSpec, how: str) -> RunOutcome:
    """The outcome of a run whose worker died, from what its worker file said last."""
    worker = read_worker(spec)
    last = worker or {}
    where = f" ({last['host']} pid {last['pid']})" if last else ""
    log = Path(spec.run_dir) / f"worker-{spec.split}.log"
    see = f"; its output: {log}" if log.exists() else ""
    reason = (
        f"lost while {last.get('stage', 'starting')}: {how}{where}{see}. "
        "Resuming the study runs it again"
    )
    return lost_outcome(spec, reason, worker)


class LocalProcesses:
    """One spawned child process per run, at most one per slot; slot k uses devices[k]."""

    nests_progress = False

    def __init__(self, devices: list[str | None], threads: int | None):
        self.workers = WorkerFiles()
        self.ctx = multiprocessing.get_context("spawn")  # CUDA cannot be forked
        self.devices = devices
        self.threads = threads
        self.capacity = len(devices)
        self.free = list(range(len(devices)))
        self.running: dict[str, tuple[RunSpec, BaseProcess, Connection, int]] = {}

    def where(self) -> str:
        gpus = [d for d in self.devices if d is not None]
        on = f"GPU {', '.join(gpus)}" if gpus else "the CPU"
        return f"local: {self.capacity} runs at once in child processes on {on}"

    def start(self, spec: RunSpec) -> None:
        self.workers.add(spec)
        slot = self.free.pop(0)
        receive, send = self.ctx.Pipe(duplex=False)
        proc = self.ctx.Process(
            target=_child,
            args=(spec, self.devices[slot], self.threads, send),
            name=f"sftgate-{spec.run_id}",
        )
        proc.start()
        send.close()  # the child holds the only writer: its death reads as end of file here
        self.running[spec.run_id] = (spec, proc, receive, slot)

    def wait(self, timeout_s: float, watch: Watch) -> list[RunOutcome]:
        ready = set(wait([conn for _, _, conn, _ in self.running.values()], timeout_s))
        finished = []
        for run_id, (spec, proc, conn, slot) in list(self.running.items()):
            if conn not in ready:
                continue
            try:
                outcome: RunOutcome = conn.recv()
            except EOFError:
                proc.join()
                code = proc.exitcode
                how = (
                    f"the process was killed by {signal.Signals(-code).name}"
                    if code is not None and code < 0
                    else f"the process exited with code {code}"
                )
                outcome = _lost(spec, how)
            proc.join(timeout=60)  # the outcome is in; a child stuck while exiting is ended
            if proc.is_alive():
                proc.kill()
                proc.join()
            conn.close()
            del self.running[run_id]
            self.free.append(slot)
            self.workers.drop(spec)
            finished.append(outcome)
        self.workers.poll(watch)
        return finished

    def close(self) -> None:
        for _, proc, conn, _ in self.running.values():
            proc.terminate()
            proc.join()
            conn.close()
        self.running.clear()


class RayTasks:
    """One Ray task per run, asking for `gpus_per_run` GPUs; the cluster queues what does not fit."""

    nests_progress = False

    def __init__(self, config: ExecutorConfig):
        try:
            import ray
        except ImportError as e:
            raise SftgateError(
                "executor kind: ray needs Ray: pip install 'sftgate[ray]' (on every node)"
            ) from e
        self.ray = ray
        self.refs: dict[Any, RunSpec] = {}
        self.workers = WorkerFiles()
        self.owns = not ray.is_initialized()
        if self.owns:
            ray.init(address=config.address, include_dashboard=False, log_to_driver=False)
        resources = ray.cluster_resources()
        self.address = ray.get_runtime_context().gcs_address
        for name, wanted in (("GPU", config.gpus_per_run), ("CPU", config.cpus_per_run)):
            if wanted > resources.get(name, 0):
                self.close()
                raise SftgateError(
                    f"the Ray cluster at {self.address} has {resources.get(name, 0):g} {name}s "
                    f"and each run asks for {wanted:g} (executor.{name.lower()}s_per_run): "
                    + (
                        "add GPU nodes, or set executor.gpus_per_run: 0 to run on CPU workers"
                        if name == "GPU"
                        else "lower executor.cpus_per_run or add nodes"
                    )
                )
        self.gpus = resources.get("GPU", 0)
        self.task = ray.remote(_ray_task).options(
            num_gpus=config.gpus_per_run,
            num_cpus=config.cpus_per_run,
            max_retries=0,  # a lost run is recorded as lost; resuming the study re-runs it
            name="sftgate-run",
        )
        self.capacity = 1 << 30  # the cluster queues tasks until resources free up

    def where(self) -> str:
        return f"ray: cluster {self.address} ({self.gpus:g} GPUs)"

    def start(self, spec: RunSpec) -> None:
        self.workers.add(spec)
        self.refs[self.task.remote(spec)] = spec

    def wait(self, timeout_s: float, watch: Watch) -> list[RunOutcome]:
        ray = self.ray
        if not self.refs:
            return []
        ready, _ = ray.wait(list(self.refs), num_returns=len(self.refs), timeout=timeout_s)
        finished = []
        for ref in ready:
            spec = self.refs.pop(ref)
            self.workers.drop(spec)
            try:
                finished.append(ray.get(ref))
            except ray.exceptions.RayTaskError as e:  # the task itself raised: not a lost worker
                cause = str(e).strip().splitlines()[-1]
                finished.append(
                    RunOutcome(spec.run_id, spec.split, "failed", failure=f"Ray task: {cause}")
                )
            except ray.exceptions.RayError as e:  # worker or node died, object lost, ...
                first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                how = f"{type(e).__name__}: {first}"
                finished.append(_lost(spec, how))
        self.workers.poll(watch)
        return finished

    def close(self) -> None:
        for ref in self.refs:
            self.ray.cancel(ref, force=True)
        self.refs.clear()
        if self.owns and self.ray.is_initialized():
            self.ray.shutdown()


def visible_gpus() -> list[str]:
    """The GPUs this process sees, as values for a child's CUDA_VISIBLE_DEVICES."""
    import torch

    if not torch.cuda.is_available():
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [d.strip() for d in listed.split(",")] if listed else []
    n = torch.cuda.device_count()
    return ids[:n] if len(ids) >= n else [str(i) for i in range(n)]


def open_executor(config: ExecutorConfig) -> Executor:
    """The executor the config asks for."""
    if config.kind == "ray":
        return RayTasks(config)
    visible = visible_gpus()
    if config.gpus is not None:
        outside = [g for g in config.gpus if not 0 <= g < len(visible)]
        if outside:
            raise SftgateError(
                f"executor.gpus names {outside}, but this machine shows {len(visible)} GPU(s) "
                "(indices 0-based, counted within CUDA_VISIBLE_DEVICES)"
            )
        visible = [visible[g] for g in config.gpus]
    n = config.parallel_runs or max(1, len(visible))
    if n == 1 and config.gpus is None:
        return InProcess()
    if not visible:  # CPU: share the cores among the processes instead of oversubscribing them
        return LocalProcesses([None] * n, threads=max(1, (os.cpu_count() or 1) // n))
    return LocalProcesses([visible[k % len(visible)] for k in range(n)], threads=None)
