"""Label files: which word is spoken when in a reference stream.

Two forms are read:

- the kwstream form, a CSV file with the header ``label,start_ms,end_ms`` and one spoken word
  a row. A header with no rows is valid and describes a stream with no keywords.
- the headerless two-column form that TensorFlow's ``generate_streaming_test_wav.py`` writes
  (``label, start_ms``). That script mixes each word in as a 1-second clip starting at
  ``start_ms``, so the word ends somewhere inside that clip. The reader sets ``end_ms`` to
  ``start_ms + 1000``, or to the start of the next row when that comes earlier, so that
  consecutive spans never overlap.

Times are stream milliseconds, integers or decimals. Rows are sorted by start time (then end
time), keeping file order among equal times. Every invalid row raises :class:`LabelFileError`
naming the file, the line number and the value.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from kwstream.errors import LabelFileError
from kwstream.modelcard import UNKNOWN_LABEL

HEADER = ("label", "start_ms", "end_ms")
TF_CLIP_DURATION_MS = 1000
"""Clip length that TensorFlow's stream generator mixes in; the end of a two-column row."""


@dataclass(frozen=True)
class Label:
    """One spoken word of a reference stream."""

    label: str
    """A keyword, or ``_unknown_`` for speech that is not a keyword."""
    start_ms: float
    """Stream time where the word starts, in milliseconds."""
    end_ms: float
    """Stream time where the word ends, in milliseconds (``>= start_ms``)."""

    @property
    def is_keyword(self) -> bool:
        return self.label != UNKNOWN_LABEL

    @property
    def duration_ms(self) -> float:
        return self.end_ms - self.start_ms


def read_labels(path: Path | str, keywords: Iterable[str] | None = None) -> list[Label]:
    """Read a label file in either form and return its rows sorted by time.

    ``keywords`` lists the labels allowed besides ``_unknown_``; ``None`` accepts any
    non-empty label. Raises LabelFileError naming the file, line and value of an invalid row,
    or the file when it cannot be read.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise LabelFileError(f"{path}: cannot read label file: {error}") from error
    return parse_labels(text.splitlines(), source=str(path), keywords=keywords)


def parse_labels(
    lines: Sequence[str], source: str = "labels", keywords: Iterable[str] | None = None
) -> list[Label]:
    """Parse the lines of a label file; ``source`` names the file in error messages."""
    allowed = None if keywords is None else {*keywords, UNKNOWN_LABEL}
    rows = [
        (number, [field.strip() for field in fields])
        for number, fields in enumerate(csv.reader(lines), start=1)
        if any(field.strip() for field in fields)
    ]
    if not rows:
        raise LabelFileError(
            f"{source}: empty label file; write the header {','.join(HEADER)} for a stream "
            "without words"
        )

    first_number, first_fields = rows[0]
    if tuple(first_fields) == HEADER:
        labels = [_parse_row(source, number, fields, allowed) for number, fields in rows[1:]]
    elif len(first_fields) == 2:
        labels = _parse_two_column_rows(source, rows, allowed)
    else:
        raise LabelFileError(
            f"{source}:{first_number}: expected the header {','.join(HEADER)} or a two-column "
            f"row 'label, start_ms', got {','.join(first_fields)!r}"
        )
    return sorted(labels, key=lambda label: (label.start_ms, label.end_ms))


def write_labels(path: Path | str, labels: Iterable[Label]) -> None:
    """Write labels in the kwstream CSV form, in the order given."""
    with Path(path).open("w", encoding="utf-8", newline="") as file:
        writer = csv.writer(file, lineterminator="\n")
        writer.writerow(HEADER)
        for label in labels:
            writer.writerow([label.label, format_ms(label.start_ms), format_ms(label.end_ms)])


def format_ms(value: float) -> str:
    """Format a time in milliseconds: an integer without a decimal point, else 3 decimals."""
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.3f}".rstrip("0")


def _parse_row(
    source: str, number: int, fields: list[str], allowed: set[str] | None
) -> Label:
    if len(fields) < len(HEADER):
        missing = ", ".join(HEADER[len(fields):])
        raise LabelFileError(
            f"{source}:{number}: missing column(s) {missing} in row {','.join(fields)!r}"
        )
    if len(fields) > len(HEADER):
        raise LabelFileError(
            f"{source}:{number}: expected 3 columns {','.join(HEADER)}, got {len(fields)} in "
            f"row {','.join(fields)!r}"
        )
    label = _parse_label(source, number, fields[0], allowed)
    start_ms = _parse_time(source, number, "start_ms", fields[1])
    end_ms = _parse_time(source, number, "end_ms", fields[2])
    if end_ms < start_ms:
        raise LabelFileError(
            f"{source}:{number}: end_ms {fields[2]} is before start_ms {fields[1]}"
        )
    return Label(label, start_ms, end_ms)


def _parse_two_column_rows(
    source: str, rows: list[tuple[int, list[str]]], allowed: set[str] | None
) -> list[Label]:
    starts: list[tuple[str, float]] = []
    for number, fields in rows:
        if len(fields) != 2:
            raise LabelFileError(
                f"{source}:{number}: the file is in the two-column form 'label, start_ms' "
                f"(line 1 has 2 columns), but this row has {len(fields)}: {','.join(fields)!r}"
            )
        label = _parse_label(source, number, fields[0], allowed)
        starts.append((label, _parse_time(source, number, "start_ms", fields[1])))

    ordered = sorted(starts, key=lambda item: item[1])
    labels = []
    for index, (label, start_ms) in enumerate(ordered):
        end_ms = start_ms + TF_CLIP_DURATION_MS
        if index + 1 < len(ordered):
            end_ms = min(end_ms, ordered[index + 1][1])
        labels.append(Label(label, start_ms, end_ms))
    return labels


def _parse_label(source: str, number: int, value: str, allowed: set[str] | None) -> str:
    if not value:
        raise LabelFileError(f"{source}:{number}: empty label")
    if allowed is not None and value not in allowed:
        raise LabelFileError(
            f"{source}:{number}: label {value!r} is neither a keyword nor {UNKNOWN_LABEL} "
            f"(keywords: {', '.join(sorted(allowed - {UNKNOWN_LABEL}))})"
        )
    return value


def _parse_time(source: str, number: int, column: str, value: str) -> float:
    try:
        time_ms = float(value)
    except ValueError:
        raise LabelFileError(
            f"{source}:{number}: {column} {value!r} is not a number of milliseconds"
        ) from None
    if not math.isfinite(time_ms):
        raise LabelFileError(f"{source}:{number}: {column} {value!r} is not a finite number")
    if time_ms < 0:
        raise LabelFileError(f"{source}:{number}: {column} {value} is negative")
    return int(time_ms) if time_ms.is_integer() else time_ms
