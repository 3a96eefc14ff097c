"""Keyword events: the JSON objects written to stdout, event files and MQTT, one a line."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kwstream.errors import EventFileError

REQUIRED_FIELDS = ("keyword", "score", "time_ms", "model", "shadow")
OPTIONAL_FIELDS = ("wall_time", "device")


@dataclass(frozen=True)
class Event:
    """One detection: a keyword whose smoothed score passed its threshold."""

    keyword: str
    score: float
    """Smoothed score that crossed the threshold, in [0, 1]."""
    time_ms: float
    """Stream time of the end of the window whose smoothed score crossed the threshold."""
    model: str
    """Id of the model that produced the event."""
    shadow: bool = False
    """True for an event of a shadow model, which is scored but never acted on."""
    wall_time: str | None = None
    """ISO 8601 UTC time when the daemon emitted the event; absent in file replay."""
    device: str | None = None
    """Configured device id of the daemon (default the host name)."""

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "keyword": self.keyword,
            "score": self.score,
            "time_ms": self.time_ms,
            "model": self.model,
            "shadow": self.shadow,
        }
        if self.wall_time is not None:
            data["wall_time"] = self.wall_time
        if self.device is not None:
            data["device"] = self.device
        return data

    def to_json(self) -> str:
        """Return the event as one line of compact JSON, without a line break."""
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Any) -> Event:
        """Build an event from a decoded JSON object; raise ValueError naming the bad field."""
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        missing = [name for name in REQUIRED_FIELDS if name not in data]
        if missing:
            raise ValueError(f"missing field(s) {', '.join(missing)}")
        unknown = sorted(set(data) - set(REQUIRED_FIELDS) - set(OPTIONAL_FIELDS))
        if unknown:
            raise ValueError(f"unknown field(s) {', '.join(unknown)}")

        for name in ("keyword", "model"):
            if not isinstance(data[name], str) or not data[name]:
                raise ValueError(f"{name} must be a non-empty string, got {data[name]!r}")
        for name in ("score", "time_ms"):
            value = data[name]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value!r}")
        if data["time_ms"] < 0:
            raise ValueError(f"time_ms must be >= 0, got {data['time_ms']!r}")
        if not isinstance(data["shadow"], bool):
            raise ValueError(f"shadow must be true or false, got {data['shadow']!r}")
        for name in OPTIONAL_FIELDS:
            if name in data and not isinstance(data[name], str):
                raise ValueError(f"{name} must be a string, got {data[name]!r}")
        return cls(**data)


def read_events(path: Path | str) -> list[Event]:
    """Read a JSON-lines event file in file order; blank lines are skipped.

    Raises EventFileError naming the file, the line number and the value of an invalid line.
    """
    path = Path(path)
    events = []
    try:
        with path.open(encoding="utf-8") as file:
            for number, line in enumerate(file, start=1):
                if not line.strip():
                    continue
                try:
                    events.append(Event.from_dict(json.loads(line)))
                except json.JSONDecodeError as error:
                    raise EventFileError(
                        f"{path}:{number}: invalid JSON ({error.msg}): {_excerpt(line)}"
                    ) from None
                except ValueError as error:
                    raise EventFileError(f"{path}:{number}: {error}: {_excerpt(line)}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise EventFileError(f"{path}: cannot read event file: {error}") from error
    return events


def write_events(path: Path | str, events: list[Event]) -> None:
    """Write events as JSON lines, in the order given."""
    with Path(path).open("w", encoding="utf-8") as file:
        for event in events:
            file.write(event.to_json() + "\n")


def _excerpt(line: str, max_chars: int = 120) -> str:
    line = line.strip()
    return line if len(line) <= max_chars else line[:max_chars] + "..."
