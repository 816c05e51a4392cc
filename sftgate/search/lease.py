"""One writer per study: a search holds the study's lease in the registry while it runs.

The lease names its holder (host, pid, start) and carries a heartbeat that a thread renews every
HEARTBEAT_S seconds. A second search of the same study finds a live holder and refuses at once
(StudyBusy, exit code 2, the holder named). A lease is stale, and the next search takes it over
(the takeover is logged in the registry's study events), when its holder is a process of this
host that no longer runs (a killed search: at once), or when its heartbeat is older than
GRACE_S (a search on another host that died with its machine). The lease is released when the
search ends, however it ends.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from datetime import datetime, timezone
from pathlib import Path

from sftgate.errors import SftgateError
from sftgate.search.registry import Lease, Registry, now

HEARTBEAT_S = 5.0
GRACE_S = 60.0  # > HEARTBEAT_S with room for a slow disk; a killed search's lease is older


class StudyBusy(SftgateError):
    """Another search holds the study's lease."""

    exit_code = 2


class LeaseLost(SftgateError):
    """This search's lease was taken over (its heartbeat stopped for longer than the grace)."""


def age_s(stamp: str) -> float:
    return (datetime.now(timezone.utc) - datetime.fromisoformat(stamp)).total_seconds()


def running_here(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def stale(lease: Lease, grace_s: float = GRACE_S) -> bool:
    if lease.host == socket.gethostname() and not running_here(lease.pid):
        return True
    return age_s(lease.heartbeat_at) > grace_s


class HeldLease:
    """This search's lease on a study, renewed by a thread with its own registry connection."""

    def __init__(self, reg: Registry, study_name: str, grace_s: float = GRACE_S):
        self.reg, self.study_name = reg, study_name
        stamp = now()
        self.me = Lease(uuid.uuid4().hex, socket.gethostname(), os.getpid(), stamp, stamp)
        holder = reg.take_lease(study_name, self.me, lambda lease: stale(lease, grace_s))
        if holder is not None:
            raise StudyBusy(
                f"study '{study_name}' is being searched by {holder.host} pid {holder.pid} "
                f"(since {holder.started_at}, last heartbeat {age_s(holder.heartbeat_at):.0f} s "
                f"ago; registry {reg.path}): one search writes a study at a time. Wait for it to "
                f"finish or stop it; a killed search's lease is taken over at once on its host, "
                f"elsewhere after {grace_s:.0f} s without a heartbeat"
            )
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(reg.path,), daemon=True)
        self._thread.start()

    def _beat(self, path: Path) -> None:
        beat = Registry(path)  # a connection of this thread's own
        try:
            while not self._stop.wait(HEARTBEAT_S):
                if not beat.heartbeat(self.study_name, self.me.token):
                    self.lost.set()
                    return
        finally:
            beat.close()

    def check(self) -> None:
        """Refuse to go on writing a study whose lease another search took over."""
        if self.lost.is_set():
            raise LeaseLost(
                f"the lease on study '{self.study_name}' was taken over by another search; "
                "this one stops without writing more"
            )

    def release(self) -> None:
        self._stop.set()
        self._thread.join()
        if not self.lost.is_set():
            self.reg.release_lease(self.study_name, self.me.token)
