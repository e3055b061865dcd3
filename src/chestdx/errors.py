"""Typed errors that name the bad value and say how to fix it.

Every error a user can trigger with bad input derives from :class:`ChestdxError`; the CLI prints
its message (no stack trace) and exits with status 2.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


class ChestdxError(Exception):
    """Base class of all user-facing chestdx errors."""


class ConfigError(ChestdxError, ValueError):
    """A recipe or an override is invalid (unknown key, wrong type, bad value)."""


class DataError(ChestdxError, ValueError):
    """One input file is unreadable, empty, of the wrong shape or holds NaN.

    Args:
        path: the offending file (or folder).
        problem: what is wrong with it, in words.
    """

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class DatasetError(ChestdxError, ValueError):
    """A data set as a whole is unusable: empty folder, bad files, unknown labels.

    Holds every :class:`DataError` found, so that all bad files are reported at once.
    """

    def __init__(self, message: str, problems: Sequence[DataError] = ()):
        self.problems = list(problems)
        lines = [message]
        shown = self.problems[:50]
        lines += [f"  - {p}" for p in shown]
        if len(self.problems) > len(shown):
            lines.append(f"  ... and {len(self.problems) - len(shown)} more")
        super().__init__("\n".join(lines))


class WeightsNotFoundError(ChestdxError, FileNotFoundError):
    """Pretrained weights were asked for but no local file holds them.

    chestdx never downloads at run time; the message says which file to put where.
    """


class RunError(ChestdxError, FileNotFoundError):
    """A run folder is missing, incomplete, or from an incompatible version."""


class PatientLeakError(DatasetError):
    """A patient's images lie in more than one split, or a run tests on patients its encoder was
    trained on: the test figures would be optimistic. Names the patients."""
