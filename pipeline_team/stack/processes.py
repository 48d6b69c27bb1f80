"""The stack's processes, found and stopped by psutil: each server leads a session of its own, and
every process in that session (its workers too, even once the leader is gone) belongs to the stack.

A record is the leader's pid and creation time. Linux does not hand out a pid again while a session
still uses it as its id, so the processes of a recorded session are ours for as long as any remain;
once the leader is gone and a new, unrelated session leader took its pid, its creation time differs.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import psutil

from pipeline.core.errors import PipelineError

STOP_SECONDS = 20.0


@dataclass(frozen=True)
class Record:
    """A started server: its pid, the kernel's creation time of it, and whether it leads a session
    of its own (then the session is what belongs to the stack; otherwise the process and its
    descendants)."""

    pid: int
    created: float
    session: bool

    @classmethod
    def of(cls, pid: int) -> Record:
        """The record of a process that runs now."""
        try:
            return cls(pid, psutil.Process(pid).create_time(), os.getsid(pid) == pid)
        except (psutil.NoSuchProcess, ProcessLookupError):
            raise PipelineError(f"process {pid} exited right after starting") from None

    def leader_alive(self) -> bool:
        """Whether the recorded process itself still runs (not a zombie, not a reused pid)."""
        try:
            process = psutil.Process(self.pid)
            return (
                process.create_time() == self.created and process.status() != psutil.STATUS_ZOMBIE
            )
        except psutil.NoSuchProcess:
            return False

    def members(self) -> list[psutil.Process]:
        """Every live process of the recorded session: the leader and whatever it started (a worker
        left behind by a leader killed with SIGKILL too)."""
        try:
            leader = psutil.Process(self.pid)
            if leader.create_time() != self.created:
                return []  # the pid now belongs to another process: ours is gone
            if not self.session:
                return [leader, *leader.children(recursive=True)]
        except psutil.NoSuchProcess:
            if not self.session:
                return []
        out = []
        for process in psutil.process_iter():
            try:
                if os.getsid(process.pid) == self.pid and process.status() != psutil.STATUS_ZOMBIE:
                    out.append(process)
            except (OSError, psutil.Error):
                continue
        return out

    def rss_mib(self) -> float:
        """Resident memory of the session's processes, in MiB (shared pages counted in each)."""
        total = 0
        for process in self.members():
            try:
                total += process.memory_info().rss
            except psutil.Error:
                continue
        return total / 2**20

    def stop(self) -> None:
        """SIGTERM to every process of the session, SIGKILL to those still there after
        STOP_SECONDS."""
        members = self.members()
        for process in members:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.terminate()
        _, alive = psutil.wait_procs(members, timeout=STOP_SECONDS)
        for process in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        psutil.wait_procs(alive, timeout=5)


def listener(port: int) -> psutil.Process | None:
    """The process listening on 127.0.0.1:`port`, if this user may see it."""
    try:
        connections = psutil.net_connections(kind="tcp")
    except psutil.Error:
        return None
    for conn in connections:
        if (
            conn.status == psutil.CONN_LISTEN
            and conn.laddr
            and conn.laddr.port == port
            and conn.pid
        ):
            try:
                return psutil.Process(conn.pid)
            except psutil.NoSuchProcess:
                return None
    return None
