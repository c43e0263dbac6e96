"""Validation errors that name the object and the field path, as the API server does."""

from __future__ import annotations

from dataclasses import dataclass, field

#: longest object label, field path and message an error shows (a manifest can hold megabytes)
LIMITS = {"obj": 300, "path": 300, "message": 1000}


def one_line(text: str, limit: int) -> str:
    """`text` safe to print as part of one line: control characters, line breaks, escape
    sequences and lone surrogates shown escaped (as repr shows them), at most `limit`
    characters. A name taken from a manifest must not move the cursor or fake a second error."""
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


@dataclass(frozen=True)
class ValidationError:
    """One rejected field: `policy x/deny: spec.ingress[0].ports[0].port: ...`.

    Each part is made one printable line of bounded length (`one_line`), whatever the
    manifest held: names, keys and values come from the user's text."""

    obj: str
    path: str
    message: str

    def __post_init__(self) -> None:
        for name, limit in LIMITS.items():
            value = getattr(self, name)
            shown = one_line(value, limit)
            if shown is not value:
                object.__setattr__(self, name, shown)

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
