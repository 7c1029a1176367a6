"""The life of a run: its states and the moves between them, defined once.

    queued -> running -> finished | failed | cancelled | interrupted
    queued -> cancelled | failed          (cancelled while waiting, or could not start)
    failed | cancelled | interrupted -> queued      (resume)

`running -> running` is allowed: the worker rewrites its status as epochs complete. A run that is
finished stays finished. Any other move raises `IllegalTransition` instead of writing a status
that would lie about the run.
"""

from __future__ import annotations

from enum import StrEnum


class RunState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"


ACTIVE = frozenset({RunState.QUEUED, RunState.RUNNING})  # waiting for or holding a worker
RESUMABLE = frozenset({RunState.FAILED, RunState.CANCELLED, RunState.INTERRUPTED})
BROKEN = "broken"  # not a state: what the listing shows for a folder it cannot read

TRANSITIONS: dict[RunState, frozenset[RunState]] = {
    RunState.QUEUED: frozenset({RunState.RUNNING, RunState.CANCELLED, RunState.FAILED}),
    RunState.RUNNING: frozenset(
        {
            RunState.RUNNING,
            RunState.FINISHED,
            RunState.FAILED,
            RunState.CANCELLED,
            RunState.INTERRUPTED,
        }
    ),
    RunState.FINISHED: frozenset(),
    RunState.FAILED: frozenset({RunState.QUEUED}),
    RunState.CANCELLED: frozenset({RunState.QUEUED}),
    RunState.INTERRUPTED: frozenset({RunState.QUEUED}),
}


class IllegalTransition(RuntimeError):
    """A status write that the run's life does not allow (a bug, or two writers racing)."""


def check_transition(old: RunState | str | None, new: RunState | str) -> RunState:
    """Return `new` as a RunState if a run may move from `old` to it (None: a new run)."""
    new = RunState(new)
    if old is None:
        if new is not RunState.QUEUED:
            raise IllegalTransition(f"a new run starts queued, not {new}")
        return new
    if new not in TRANSITIONS[RunState(old)]:
        raise IllegalTransition(f"a run cannot go from {old} to {new}")
    return new
