"""Validation errors that name the object and the field path, as the API server does."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ValidationError:
    """One rejected field: `policy x/deny: spec.ingress[0].ports[0].port: ...`."""

    obj: str
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{self.obj}: {where}{self.message}"


@dataclass
class FieldErrors:
    """Collects every error of one object, so the user sees all of them in one run."""

    obj: str
    items: list[ValidationError] = field(default_factory=list)

    def add(self, path: str, message: str) -> None:
        self.items.append(ValidationError(self.obj, path, message))

    def __bool__(self) -> bool:
        return bool(self.items)
