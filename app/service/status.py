"""A run's service status as a typed value: a kind and, for some kinds, a reason.

On the wire and in storage a status stays the text it always was (the API is unchanged):

    ready, running, paused, parked, finished, stopped, interrupted
    "diverged at step N (...)"          kind DIVERGED, reason "at step N (...)"
    "failed: <reason>"                  kind FAILED
    "failed: <reason> (resumable)"      kind FAILED, resumable: its worker kept dying;
                                        ``resume`` continues from the last checkpoint
    "unreadable: <reason>"              its record cannot be read (listed, not runnable)

``Status.parse(text)`` reads one, ``str(status)`` writes it back (``parse(str(s)) == s``).
The service asks the value (``is_active``, ``can_resume`` ...) instead of matching prefixes;
the dashboard can use :func:`is_active` / :func:`is_terminal` on the wire text.

    ready        created with start=False, at step 0, worker up (parked like a paused run)
    running      stepping (also while a killed worker is being restarted, a few seconds)
    paused       worker up, not stepping
    parked       checkpointed and without a worker: it was paused (or ready) for
                 ``idle_release`` seconds, or running with nobody polling it that long. Holds
                 no run slot; ``resume`` (or any action that needs the worker) restarts it
    finished, stopped, diverged   ended for good (branch still works)
    interrupted  the server stopped while it ran: ``resume`` continues from its checkpoint
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Kind(StrEnum):
    READY = "ready"
    RUNNING = "running"
    PAUSED = "paused"
    PARKED = "parked"
    FINISHED = "finished"
    STOPPED = "stopped"
    INTERRUPTED = "interrupted"
    DIVERGED = "diverged"
    FAILED = "failed"
    UNREADABLE = "unreadable"


#: kinds of a run whose worker is alive (counted against the concurrent-run limit)
ACTIVE_KINDS = frozenset({Kind.READY, Kind.RUNNING, Kind.PAUSED})
#: kinds of a run that ended for good (only branch applies)
ENDED_KINDS = frozenset({Kind.FINISHED, Kind.STOPPED, Kind.DIVERGED})
_WITH_REASON = {Kind.DIVERGED: "diverged ", Kind.FAILED: "failed: ",
                Kind.UNREADABLE: "unreadable: "}
RESUMABLE = " (resumable)"


@dataclass(frozen=True)
class Status:
    """A status: ``kind``, the ``reason`` of a diverged / failed / unreadable run, and
    whether a failed one can be resumed."""

    kind: Kind
    reason: str = ""
    resumable: bool = False

    @classmethod
    def parse(cls, text: object) -> Status:
        """The status a wire / storage text says; ValueError for any other text."""
        if isinstance(text, Status):
            return text
        if not isinstance(text, str):
            raise ValueError(f"status: got {type(text).__name__}; allowed: a status text")
        for kind, prefix in _WITH_REASON.items():
            if text.startswith(prefix):
                reason = text[len(prefix):]
                resumable = kind is Kind.FAILED and reason.endswith(RESUMABLE)
                return cls(kind, reason[: -len(RESUMABLE)] if resumable else reason, resumable)
        try:
            return cls(Kind(text))
        except ValueError:
            raise ValueError(f"status: got {text[:100]!r}; allowed: "
                             f"{', '.join(Kind)} (with a reason where it has one)") from None

    @classmethod
    def failed(cls, reason: str, *, resumable: bool = False) -> Status:
        return cls(Kind.FAILED, reason, resumable)

    def __str__(self) -> str:
        prefix = _WITH_REASON.get(self.kind)
        if prefix is None:
            return self.kind.value
        return f"{prefix}{self.reason}{RESUMABLE if self.resumable else ''}"

    @property
    def is_active(self) -> bool:
        """Its worker is alive (ready, running, paused)."""
        return self.kind in ACTIVE_KINDS

    @property
    def is_ended(self) -> bool:
        """Finished, stopped or diverged: no action but branch applies."""
        return self.kind in ENDED_KINDS

    @property
    def is_terminal(self) -> bool:
        """Without a worker and sending nothing more unless a user acts: ended, failed,
        unreadable or interrupted (the last two kinds may still be resumed by hand; a parked
        run is not terminal: a poll wakes one parked while running)."""
        return self.kind in ENDED_KINDS or self.kind in (Kind.FAILED, Kind.UNREADABLE,
                                                          Kind.INTERRUPTED)

    @property
    def can_resume(self) -> bool:
        """``resume`` brings it back without a worker: interrupted, parked, resumable failed."""
        return self.kind in (Kind.INTERRUPTED, Kind.PARKED) or (
            self.kind is Kind.FAILED and self.resumable)


def is_active(text: object) -> bool:
    """Whether a wire status text is ready, running or paused (False for unknown text)."""
    try:
        return Status.parse(text).is_active
    except ValueError:
        return False


#: kinds of a run that can still move on (a parked run resumes on ▶ or any action)
MOVING_KINDS = ACTIVE_KINDS | {Kind.PARKED}


def is_moving(text: object) -> bool:
    """Whether a wire status text is ready, running, paused or parked: the run can still
    produce frames (False for unknown text)."""
    try:
        return Status.parse(text).kind in MOVING_KINDS
    except ValueError:
        return False


def is_terminal(text: object) -> bool:
    """Whether a wire status text is finished, stopped, diverged, failed, unreadable or
    interrupted (False for unknown text)."""
    try:
        return Status.parse(text).is_terminal
    except ValueError:
        return False


__all__ = ["ACTIVE_KINDS", "ENDED_KINDS", "RESUMABLE", "Kind", "Status", "is_active",
           "is_terminal"]
