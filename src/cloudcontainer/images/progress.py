"""How a build reports progress, without knowing who watches.

The builder opens one `Task` per step (several may run at once: downloads overlap debootstrap) and
moves it along; the CLI draws them with rich, tests and library callers pass `SilentProgress`.
"""

from __future__ import annotations

from typing import Literal, Protocol

__all__ = ["Progress", "SilentProgress", "Task", "Unit"]

Unit = Literal["bytes", "items", "none"]


class Task(Protocol):
    """One step of the build."""

    def advance(self, amount: float) -> None:
        """Add `amount` (bytes or items, as the task was opened with) to what is done."""

    def set_total(self, total: float) -> None:
        """The size became known (e.g. a response's Content-Length)."""

    def detail(self, text: str) -> None:
        """What the step is doing right now (e.g. the package debootstrap is unpacking)."""

    def done(self, summary: str = "") -> None:
        """The step finished; `summary` says what it produced."""


class Progress(Protocol):
    def task(self, description: str, *, total: float | None = None, unit: Unit = "none") -> Task:
        """Start a step."""

    def note(self, message: str) -> None:
        """Something the operator should read, outside any step."""


class _SilentTask:
    def advance(self, amount: float) -> None:
        pass

    def set_total(self, total: float) -> None:
        pass

    def detail(self, text: str) -> None:
        pass

    def done(self, summary: str = "") -> None:
        pass


class SilentProgress:
    """Reports nothing."""

    def task(self, description: str, *, total: float | None = None, unit: Unit = "none") -> Task:
        return _SilentTask()

    def note(self, message: str) -> None:
        pass
