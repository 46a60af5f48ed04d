"""Validation errors: a list of issues, each with file, document and field path.

Exception tree::

    Exception
     └── ValidationError      one or more Issue(source, doc, path, message)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NoReturn


@dataclass(frozen=True, slots=True)
class Issue:
    """One problem: where it is (file, 1-based document number, field path) and what is wrong."""

    source: str | None
    doc: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = ""
        if self.source is not None:
            where = self.source if self.doc is None else f"{self.source} doc {self.doc}"
            where += ": "
        field = f"{self.path}: " if self.path else ""
        return f"{where}{field}{self.message}"

    def located(self, source: str | None, doc: int | None) -> Issue:
        """This issue placed in a file and document (keeps a location that is already set)."""
        return dataclasses.replace(
            self,
            source=self.source if self.source is not None else source,
            doc=self.doc if self.doc is not None else doc,
        )


class ValidationError(Exception):
    """Raised when input does not follow the schema; ``str()`` gives one line per issue."""

    def __init__(self, issues: Iterable[Issue]) -> None:
        self.issues: list[Issue] = list(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))

    def __str__(self) -> str:
        return "\n".join(str(issue) for issue in self.issues)

    def located(self, source: str | None, doc: int | None) -> ValidationError:
        """The same issues placed in a file and document."""
        return ValidationError(issue.located(source, doc) for issue in self.issues)


def fail(path: str, message: str) -> NoReturn:
    """Raise a ValidationError with one issue at ``path`` (no file or document yet)."""
    raise ValidationError([Issue(None, None, path, message)])
