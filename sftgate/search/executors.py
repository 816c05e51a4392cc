"""Where a round's runs execute: in the search's own process, in resident child processes (one
per GPU), or in Ray actors on a cluster.

The search's driver hands run specs to an executor and gets outcomes back; only the driver writes
the registry. Every worker is resident: it keeps its base model loaded from one run to the next
(`sftgate.resident.ResidentBase`: one model load per worker per search instead of two per run),
each run borrowing the base and leaving it as it found it, so a run gives the same adapter and
predictions in any worker as in a fresh process. A worker reports where it runs and its stage
(training, evaluating) in a small JSON file in the run's folder, `RUN_DIR/worker-SPLIT.json`,
which the driver polls: the same file works for a child process and for a Ray actor on another
node, because run folders live on storage every worker reaches. Its output goes to
`RUN_DIR/worker-SPLIT.log`.

A worker that dies mid-run (killed, out of host memory, its node lost) gives a *lost* outcome:
the run is recorded as failed with what happened, the search stops after the round's other
runs, and resuming the study runs it again; the worker's next run starts a new worker. A run
that fails by itself (out of GPU memory, NaN loss) is an ordinary failure, as in one process
(and its worker loads the base afresh for its next run).
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
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import Field, model_validator

from sftgate.config import StrictModel
from sftgate.errors import SftgateError
from sftgate.fsutil import atomic_write_text
from sftgate.resident import ResidentBase
from sftgate.search.runner import RunOutcome, RunSpec, execute_run, lost_outcome

# ---------------------------------------------------------------------- the config


class ExecutorConfig(StrictModel):
    """How runs execute. Results do not depend on it, so it is not pinned: a study started on one
    executor may be resumed on another."""

    kind: Literal["local", "ray"] = Field(
        "local",
        description="local: this machine's GPUs (one after another on one GPU, one run per GPU "
        "at once on several); ray: workers (Ray actors) on a Ray cluster, one GPU each",
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
        1, ge=0, description="ray: GPUs each run's worker asks for; 0 runs on CPU workers"
    )
    cpus_per_run: float = Field(1, gt=0, description="ray: CPUs each run's worker asks for")

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


def work(spec: RunSpec, base: ResidentBase) -> RunOutcome:
    """A worker's whole job for one run: report where it runs and each stage, run the spec on the
    worker's resident `base`, log to the run's folder. The same in every executor."""
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
        outcome = execute_run(spec, on_stage, on_progress, base)
        if outcome.status == "failed":  # the log says why, beside what the run printed
            print(f"{spec.run_id} failed: {outcome.failure}", file=sys.stderr)
    on_stage(outcome.status)
    # how many times this worker has loaded its base so far: 1 while every run reused it
    return replace(outcome, worker={**info, "model_loads": base.loads})


def _child(
    tasks: Connection, results: Connection, devices: str | None, threads: int | None
) -> None:
    """A resident local worker process: pin its GPU before CUDA starts, then run the specs it is
    sent one after another on one base model kept loaded, sending each outcome back; None (or
    the search gone) ends it."""
    if devices is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = devices
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    base = ResidentBase()
    while True:
        try:
            spec = tasks.recv()
        except EOFError:  # the search's end of the pipe is closed
            break
        if spec is None:
            break
        results.send(work(spec, base))
    base.drop()


class RayWorker:
    """A Ray actor's state: the base model its runs share, loaded at its first run."""

    def __init__(self) -> None:
        self.base = ResidentBase()

    def ready(self) -> bool:
        """Answers once the actor is placed and up."""
        return True

    def run(self, spec: RunSpec) -> RunOutcome:
        return work(spec, self.base)


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
    """The search's own process, one run after another (one GPU or none), on one resident base."""

    capacity = 1
    nests_progress = True

    def __init__(self) -> None:
        self.queue: list[RunSpec] = []
        self.base = ResidentBase()

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
            self.base,
        )
        return [outcome]

    def close(self) -> None:
        self.queue.clear()
        self.base.drop()


class WorkerFiles:
    """Follows the worker files of runs executing elsewhere (child processes, Ray actors)."""

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


@dataclass
class _Slot:
    """One local worker: its devices, its process and the parent's ends of its two pipes (specs
    to it, outcomes from it), and the run it executes now."""

    devices: str | None
    proc: BaseProcess | None = None
    tasks: Connection | None = None
    results: Connection | None = None
    spec: RunSpec | None = None

    def retire(self) -> None:
        """Close the pipes and end the process (it is gone, or the search is done with it)."""
        for conn in (self.tasks, self.results):
            if conn is not None:
                conn.close()
        if self.proc is not None:
            self.proc.join(timeout=30)  # an idle worker told to stop exits by itself
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join()
        self.proc = self.tasks = self.results = None


class LocalProcesses:
    """One resident child process per slot (slot k uses devices[k]), started with the slot's first
    run and kept for its next ones, its base model loaded all along; a child that dies loses the
    run it had, and the slot's next run starts a new one."""

    nests_progress = False

    def __init__(self, devices: list[str | None], threads: int | None):
        self.workers = WorkerFiles()
        self.ctx = multiprocessing.get_context("spawn")  # CUDA cannot be forked
        self.devices = devices
        self.threads = threads
        self.capacity = len(devices)
        self.slots = [_Slot(d) for d in devices]

    def where(self) -> str:
        gpus = [d for d in self.devices if d is not None]
        on = f"GPU {', '.join(gpus)}" if gpus else "the CPU"
        return f"local: {self.capacity} runs at once in resident child processes on {on}"

    def start(self, spec: RunSpec) -> None:
        self.workers.add(spec)
        slot = next(s for s in self.slots if s.spec is None)
        if slot.proc is None or not slot.proc.is_alive():
            self.spawn(slot)
        assert slot.tasks is not None
        slot.tasks.send(spec)
        slot.spec = spec

    def spawn(self, slot: _Slot) -> None:
        slot.retire()
        tasks_out, tasks_in = self.ctx.Pipe(duplex=False)
        results_out, results_in = self.ctx.Pipe(duplex=False)
        proc = self.ctx.Process(
            target=_child,
            args=(tasks_out, results_in, slot.devices, self.threads),
            name=f"sftgate-worker-{self.slots.index(slot)}",
        )
        proc.start()
        # the child holds the only writer of its results: its death reads as end of file here
        tasks_out.close()
        results_in.close()
        slot.proc, slot.tasks, slot.results = proc, tasks_in, results_out

    def wait(self, timeout_s: float, watch: Watch) -> list[RunOutcome]:
        busy = [s for s in self.slots if s.spec is not None]
        ready = set(wait([s.results for s in busy if s.results is not None], timeout_s))
        finished = []
        for slot in busy:
            if slot.results not in ready:
                continue
            spec, slot.spec = slot.spec, None
            assert spec is not None and slot.proc is not None and slot.results is not None
            try:
                outcome: RunOutcome = slot.results.recv()
            except EOFError:
                slot.proc.join()
                code = slot.proc.exitcode
                how = (
                    f"the process was killed by {signal.Signals(-code).name}"
                    if code is not None and code < 0
                    else f"the process exited with code {code}"
                )
                outcome = _lost(spec, how)
                slot.retire()
            self.workers.drop(spec)
            finished.append(outcome)
        self.workers.poll(watch)
        return finished

    def close(self) -> None:
        for slot in self.slots:
            if slot.proc is None:
                continue
            if slot.spec is None:  # idle: told to stop, it frees its GPU memory and exits
                assert slot.tasks is not None
                with suppress(OSError):  # it is gone already
                    slot.tasks.send(None)
            else:  # mid-run: a resume restarts the run
                slot.proc.terminate()
            slot.spec = None
            slot.retire()


START_ATTEMPTS = 3  # actors that fail to start, in a row, before a waiting run is lost


class RayActors:
    """Runs on a Ray cluster, in resident actors: up to as many as the cluster's resources hold
    (GPUs / `gpus_per_run`, CPUs / `cpus_per_run`, counted when the search starts), each asking
    for those resources, created when a run waits and kept, its base model loaded, for the next
    runs. A run goes to whichever actor is ready and idle (an actor the cluster cannot place, on a
    node just lost, never takes one); an actor that dies (its process killed, its node lost) loses
    the run it had, and a new actor is made for the runs still waiting."""

    nests_progress = False

    def __init__(self, config: ExecutorConfig):
        try:
            import ray
        except ImportError as e:
            raise SftgateError(
                "executor kind: ray needs Ray: pip install 'sftgate[ray]' (on every node)"
            ) from e
        self.ray = ray
        self.waiting: list[RunSpec] = []  # started runs no actor has taken yet
        self.placing: dict[Any, Any] = {}  # an actor's `ready` call -> the actor
        self.idle: list[Any] = []  # placed actors with no run
        self.refs: dict[Any, tuple[RunSpec, Any]] = {}  # a run's call -> (its spec, its actor)
        self.failed_starts = 0  # actors in a row that could not start
        self.workers = WorkerFiles()
        self.owns = not ray.is_initialized()
        if self.owns:
            ray.init(address=config.address, include_dashboard=False, log_to_driver=False)
        resources = ray.cluster_resources()
        self.address = ray.get_runtime_context().gcs_address
        fits = []
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
            if wanted > 0:
                fits.append(int(resources.get(name, 0) / wanted + 1e-9))
        self.gpus = resources.get("GPU", 0)
        self.worker = ray.remote(RayWorker).options(
            num_gpus=config.gpus_per_run,
            num_cpus=config.cpus_per_run,
            max_restarts=0,  # a lost run is recorded as lost; resuming the study re-runs it
            max_task_retries=0,
        )
        self.capacity = max(1, min(fits))

    def where(self) -> str:
        return f"ray: cluster {self.address} ({self.gpus:g} GPUs, up to {self.capacity} workers)"

    def actors(self) -> list[Any]:
        return [*self.placing.values(), *self.idle, *(a for _, a in self.refs.values())]

    def start(self, spec: RunSpec) -> None:
        self.workers.add(spec)
        self.waiting.append(spec)
        self.dispatch()

    def dispatch(self) -> None:
        """Waiting runs to idle actors; a new actor for each run still waiting, within capacity."""
        while self.waiting and self.idle:
            actor, spec = self.idle.pop(0), self.waiting.pop(0)
            self.refs[actor.run.remote(spec)] = (spec, actor)
        while len(self.waiting) > len(self.placing) and len(self.actors()) < self.capacity:
            new: Any = self.worker.remote()
            self.placing[new.ready.remote()] = new

    def wait(self, timeout_s: float, watch: Watch) -> list[RunOutcome]:
        ray = self.ray
        calls = [*self.refs, *self.placing]
        if not calls:
            return []
        ready, _ = ray.wait(calls, num_returns=len(calls), timeout=timeout_s)
        finished = []
        for ref in ready:
            if ref in self.placing:
                finished += self.placed(ref)
                continue
            spec, actor = self.refs.pop(ref)
            self.workers.drop(spec)
            try:
                finished.append(ray.get(ref))
                self.idle.append(actor)
            except ray.exceptions.RayTaskError as e:  # the call itself raised: not a lost worker
                cause = str(e).strip().splitlines()[-1]
                finished.append(
                    RunOutcome(spec.run_id, spec.split, "failed", failure=f"Ray task: {cause}")
                )
                self.idle.append(actor)
            except ray.exceptions.RayError as e:  # the actor or its node died, an object lost
                finished.append(_lost(spec, ray_loss(e)))
                ray.kill(actor, no_restart=True)
        self.dispatch()
        self.workers.poll(watch)
        return finished

    def placed(self, ref: Any) -> list[RunOutcome]:
        """An actor is up and idle. One that could not start is replaced (Ray may still place
        actors on a node it just lost); after START_ATTEMPTS failures in a row the oldest waiting
        run is lost with the reason, so that a worker that never starts does not wait forever."""
        actor = self.placing.pop(ref)
        try:
            self.ray.get(ref)
            self.failed_starts = 0
        except self.ray.exceptions.RayError as e:
            self.ray.kill(actor, no_restart=True)
            self.failed_starts += 1
            if not self.waiting or self.failed_starts < START_ATTEMPTS:
                return []  # dispatch() makes a new actor for the runs still waiting
            self.failed_starts = 0
            spec = self.waiting.pop(0)
            self.workers.drop(spec)
            return [_lost(spec, f"its Ray worker did not start: {ray_loss(e)}")]
        self.idle.append(actor)
        return []

    def close(self) -> None:
        for actor in self.actors():
            self.ray.kill(actor, no_restart=True)
        self.refs.clear()
        self.placing.clear()
        self.idle.clear()
        self.waiting.clear()
        if self.owns and self.ray.is_initialized():
            self.ray.shutdown()


def ray_loss(e: Exception) -> str:
    """What a Ray error says happened, in a sentence or two: its first sentence and, for an actor
    that died, Ray's sentence on why (its process died, its node died)."""
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    first = lines[0].split(". ")[0].rstrip(".") if lines else ""
    why = next((line for line in lines[1:] if "dead because" in line), "")
    why = why.split(". ")[0].rstrip(".")
    return f"{type(e).__name__}: " + ". ".join(part for part in (first, why) if part)


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
        return RayActors(config)
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
