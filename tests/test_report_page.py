from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from kwstream.report_page import render_markdown_report, write_markdown_report


def scored_report() -> dict[str, Any]:
    """A replay report of 2 minutes with labels, as ``kwstream replay --report`` writes it."""
    return {
        "audio_seconds": 120.0,
        "wall_seconds": 0.4,
        "cpu_seconds": 0.38,
        "realtime_factor": 300.0,
        "events": 5,
        "vad": {"enabled": True, "mode": 1, "hangover_ms": 1000},
        "model": "kws20",
        "model_sha256": "8a797360cd1e40b731d0ca3661d6a2bd018e6f9ed0a3f0707e0d70078a336117",
        "inference_stride": 2,
        "inferences": 2400,
        "windows_per_invoke": 20.0,
        "inference_ms": {"p50": 0.0616, "p95": 0.0693, "p99": 0.2218},
        "precision": 0.6,
        "recall": 0.75,
        "f1": 2 / 3,
        "false_accepts_per_hour": 60.0,
        "miss_rate": 0.25,
        "tp": 3,
        "fp": 2,
        "fn": 1,
        "references": 4,
        "unknown_references": 1,
        "detections": 5,
        "false_positives_on_unknown": 1,
        "confusions": {"seven": {"one": 1}},
        "per_keyword": {
            "seven": {"tp": 2, "fp": 0, "fn": 0, "precision": 1.0, "recall": 1.0, "f1": 1.0,
                      "miss_rate": 0.0},
            "one": {"tp": 1, "fp": 2, "fn": 1, "precision": 1 / 3, "recall": 0.5, "f1": 0.4,
                    "miss_rate": 0.5},
            "up": {"tp": 0, "fp": 0, "fn": 0, "precision": None, "recall": None, "f1": None,
                   "miss_rate": None},
        },
        "latency_ms": {"count": 3, "median": 90.0, "p90": 300.0},
        "tolerance_ms": 1000.0,
    }


def table_row(page: str, first_cell: str) -> list[str]:
    """Return the cells of the first table row whose first cell is ``first_cell``."""
    for line in page.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no table row starts with {first_cell!r} in:\n{page}")


def test_summary_lists_speed_and_scores(tmp_path: Path) -> None:
    page = render_markdown_report(scored_report(), tmp_path, None)

    assert table_row(page, "audio seconds") == ["audio seconds", "120.0"]
    assert table_row(page, "realtime factor") == ["realtime factor", "300.0"]
    assert table_row(page, "inference p50 (ms)")[1] == "0.0616"
    assert table_row(page, "inference p95 (ms)")[1] == "0.0693"
    assert table_row(page, "inference p99 (ms)")[1] == "0.2218"
    assert table_row(page, "precision")[1] == "0.600"
    assert table_row(page, "recall")[1] == "0.750"
    assert table_row(page, "F1")[1] == "0.667"
    assert table_row(page, "false accepts per hour")[1] == "60.0"
    assert table_row(page, "miss rate")[1] == "0.250"
    assert table_row(page, "model sha256")[1] == "`8a797360cd1e`"


def test_per_keyword_rows_sorted_with_nulls(tmp_path: Path) -> None:
    page = render_markdown_report(scored_report(), tmp_path, None)

    assert table_row(page, "one") == ["one", "1", "2", "1", "0.333", "0.500", "0.400"]
    assert table_row(page, "seven") == ["seven", "2", "0", "0", "1.000", "1.000", "1.000"]
    assert table_row(page, "up") == ["up", "0", "0", "0", "n/a", "n/a", "n/a"]
    assert page.index("| one |") < page.index("| seven |") < page.index("| up |")


def test_confusions_table(tmp_path: Path) -> None:
    page = render_markdown_report(scored_report(), tmp_path, None)

    assert "## Confusions" in page
    assert "| spoken | detected | count |" in page
    assert "| seven | one | 1 |" in page


def test_no_confusions_says_so(tmp_path: Path) -> None:
    report = scored_report()
    report["confusions"] = {}

    page = render_markdown_report(report, tmp_path, None)

    assert "No detection fell inside the span of another keyword." in page


def test_null_metric_is_not_zero(tmp_path: Path) -> None:
    report = scored_report()
    report["precision"] = None
    report["false_accepts_per_hour"] = None

    page = render_markdown_report(report, tmp_path, None)

    assert table_row(page, "precision")[1] == "n/a"
    assert table_row(page, "false accepts per hour")[1] == "n/a"


def test_det_plot_link_is_relative(tmp_path: Path) -> None:
    page_path = tmp_path / "reports" / "replay.md"
    plot_path = tmp_path / "sweep" / "det.png"

    write_markdown_report(scored_report(), page_path, plot_path)

    page = page_path.read_text(encoding="utf-8")
    assert "## Threshold sweep" in page
    assert "](../sweep/det.png)" in page


def test_sweep_in_report_gives_link_and_thresholds(tmp_path: Path) -> None:
    report = scored_report()
    report["sweep"] = {
        "csv": str(tmp_path / "sweep" / "det.csv"),
        "png": str(tmp_path / "sweep" / "det.png"),
        "thresholds": [0.5, 0.9],
        "target_false_accepts_per_hour": 1.0,
        "lowest_thresholds": {"_overall_": 0.9, "one": None, "seven": 0.5},
    }

    page = render_markdown_report(report, tmp_path, None)

    assert "](sweep/det.png)" in page
    assert table_row(page, "all keywords") == ["all keywords", "0.90"]
    assert table_row(page, "seven")[:2] == ["seven", "2"]
    assert "| seven | 0.50 |" in page
    assert "| one | n/a |" in page


def test_no_sweep_no_plot_section(tmp_path: Path) -> None:
    page = render_markdown_report(scored_report(), tmp_path, None)

    assert "## Threshold sweep" not in page
    assert "![" not in page


def test_unscored_report_has_speed_only(tmp_path: Path) -> None:
    report = scored_report()
    for name in ("precision", "recall", "f1", "false_accepts_per_hour", "miss_rate", "tp",
                 "fp", "fn", "confusions", "per_keyword"):
        del report[name]

    page = render_markdown_report(report, tmp_path, None)

    assert table_row(page, "realtime factor")[1] == "300.0"
    assert "| precision |" not in page
    assert "## Per keyword" not in page
    assert "## Confusions" not in page


def test_shadow_model_gets_a_column(tmp_path: Path) -> None:
    report = scored_report()
    shadow = copy.deepcopy(scored_report())
    shadow["model"] = "candidate"
    shadow["recall"] = 0.5
    report["shadow"] = shadow

    page = render_markdown_report(report, tmp_path, None)

    assert table_row(page, "metric") == ["metric", "kws20", "candidate"]
    assert table_row(page, "recall") == ["recall", "0.750", "0.500"]
    assert "## Per keyword (shadow: candidate)" in page


def test_replay_error_is_shown(tmp_path: Path) -> None:
    report = scored_report()
    report["error"] = "speech.flac: decoding failed at 61.2 s"

    page = render_markdown_report(report, tmp_path, None)

    assert "**The replay stopped early:** speech.flac: decoding failed at 61.2 s" in page
