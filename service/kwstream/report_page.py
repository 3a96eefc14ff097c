"""Markdown page of a replay report: summary, per-keyword counts, confusions, DET plot.

The input is the JSON-ready dict that ``kwstream replay`` writes with ``--report``. Fields
that a replay without labels lacks (precision, per-keyword counts, confusions) are left out
of the page, and a null metric (zero denominator) is written as "n/a", never as 0.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kwstream.sweep import OVERALL

MISSING = "n/a"


def write_markdown_report(report: Mapping[str, Any], path: Path, det_png: Path | None) -> None:
    """Write the page for ``report`` to ``path``, linking ``det_png`` if given.

    Without ``det_png``, the plot that the report's ``sweep`` names (if any) is linked. The
    link is relative to the page's folder when both lie on the same drive.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_markdown_report(report, path.parent, det_png), encoding="utf-8")


def render_markdown_report(report: Mapping[str, Any], page_dir: Path,
                           det_png: Path | None) -> str:
    """Return the page as text. Image links are relative to ``page_dir``."""
    models = [("primary", report)]
    if isinstance(report.get("shadow"), Mapping):
        models.append(("shadow", report["shadow"]))
    scored = "precision" in report

    sections = [f"# Replay report: {report.get('model', 'unknown model')}", ""]
    if report.get("error"):
        sections += [f"**The replay stopped early:** {report['error']}", ""]
    sections += _summary(report, models, scored)
    if scored:
        for role, model_report in models:
            heading = "" if len(models) == 1 else f" ({role}: {model_report.get('model')})"
            sections += _per_keyword(model_report, heading)
            sections += _confusions(model_report, heading)

    plot = det_png
    sweep = report.get("sweep")
    if plot is None and isinstance(sweep, Mapping) and sweep.get("png"):
        plot = Path(sweep["png"])
    if isinstance(sweep, Mapping) or plot is not None:
        sections += _sweep(sweep if isinstance(sweep, Mapping) else {}, plot, page_dir)
    return "\n".join(sections).rstrip("\n") + "\n"


def _summary(report: Mapping[str, Any], models: list[tuple[str, Mapping[str, Any]]],
             scored: bool) -> list[str]:
    """Return the summary table, with one value column per model (primary, shadow)."""
    rows: list[tuple[str, list[str]]] = [
        ("model sha256", [_short_sha(m.get("model_sha256")) for _, m in models]),
        ("audio seconds", [_number(report.get("audio_seconds"), 1)] * len(models)),
        ("wall seconds", [_number(report.get("wall_seconds"), 2)] * len(models)),
        ("CPU seconds", [_number(report.get("cpu_seconds"), 2)] * len(models)),
        ("realtime factor", [_number(report.get("realtime_factor"), 1)] * len(models)),
        ("inferences", [_number(m.get("inferences"), 0) for _, m in models]),
    ]
    for percentile in ("p50", "p95", "p99"):
        rows.append((f"inference {percentile} (ms)",
                     [_number(_get(m, "inference_ms", percentile), 4) for _, m in models]))
    if scored:
        rows += [
            ("precision", [_number(m.get("precision"), 3) for _, m in models]),
            ("recall", [_number(m.get("recall"), 3) for _, m in models]),
            ("F1", [_number(m.get("f1"), 3) for _, m in models]),
            ("false accepts per hour", [_number(m.get("false_accepts_per_hour"), 1)
                                        for _, m in models]),
            ("miss rate", [_number(m.get("miss_rate"), 3) for _, m in models]),
            ("true / false positives, misses",
             [f"{m.get('tp', MISSING)} / {m.get('fp', MISSING)} / {m.get('fn', MISSING)}"
              for _, m in models]),
        ]

    header = ["metric", *(_cell(str(m.get("model", role))) for role, m in models)]
    lines = ["## Summary", "", _row(header), _row(["---"] * len(header))]
    lines += [_row([name, *values]) for name, values in rows]
    return [*lines, ""]


def _per_keyword(report: Mapping[str, Any], heading: str) -> list[str]:
    per_keyword = report.get("per_keyword") or {}
    lines = [f"## Per keyword{heading}", ""]
    if not per_keyword:
        return [*lines, "No keyword was referenced or detected.", ""]
    lines += [_row(["keyword", "tp", "fp", "fn", "precision", "recall", "F1"]),
              _row(["---"] * 7)]
    for keyword, counts in sorted(per_keyword.items()):
        lines.append(_row([
            _cell(keyword), str(counts.get("tp", MISSING)), str(counts.get("fp", MISSING)),
            str(counts.get("fn", MISSING)), _number(counts.get("precision"), 3),
            _number(counts.get("recall"), 3), _number(counts.get("f1"), 3),
        ]))
    return [*lines, ""]


def _confusions(report: Mapping[str, Any], heading: str) -> list[str]:
    """Return the confusion table: false positives inside another keyword's spoken span."""
    confusions = report.get("confusions") or {}
    lines = [f"## Confusions{heading}", ""]
    pairs = [(reference, detected, count)
             for reference, by_detected in sorted(confusions.items())
             for detected, count in sorted(by_detected.items())]
    if not pairs:
        return [*lines, "No detection fell inside the span of another keyword.", ""]
    lines += ["False positives inside the span of a reference of another keyword.", "",
              _row(["spoken", "detected", "count"]), _row(["---"] * 3)]
    lines += [_row([_cell(reference), _cell(detected), str(count)])
              for reference, detected, count in pairs]
    return [*lines, ""]


def _sweep(sweep: Mapping[str, Any], plot: Path | None, page_dir: Path) -> list[str]:
    lines = ["## Threshold sweep", ""]
    if plot is not None:
        lines += [f"![DET curve: miss rate against false accepts per hour]"
                  f"({_link(plot, page_dir)})", ""]
    if sweep.get("csv"):
        lines += [f"Points of the curve: `{sweep['csv']}`.", ""]
    lowest = sweep.get("lowest_thresholds") or {}
    if lowest:
        target = sweep.get("target_false_accepts_per_hour")
        lines += [f"Lowest threshold from which a keyword stays at or below "
                  f"{_number(target, 1)} false accepts per hour:", "",
                  _row(["keyword", "threshold"]), _row(["---"] * 2)]
        for keyword, threshold in sorted(lowest.items()):
            name = "all keywords" if keyword == OVERALL else _cell(keyword)
            lines.append(_row([name, _number(threshold, 2)]))
        lines.append("")
    return lines


def _link(target: Path, page_dir: Path) -> str:
    try:
        relative = os.path.relpath(target, page_dir)
    except ValueError:
        # On Windows, paths on two drives have no relative form.
        relative = str(target)
    return Path(relative).as_posix().replace(" ", "%20")


def _get(mapping: Mapping[str, Any], *keys: str) -> Any:
    value: Any = mapping
    for key in keys:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _number(value: Any, decimals: int) -> str:
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return MISSING
    return f"{value:.{decimals}f}"


def _short_sha(value: Any) -> str:
    return f"`{value[:12]}`" if isinstance(value, str) and value else MISSING


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"
