"""Markdown report of ``kwstream compare``, with a per-keyword recall chart beside it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kwstream.compare import ALL, ROLES


def write_markdown(report: dict[str, Any], path: Path) -> Path:
    """Write the Markdown report and its chart ``<stem>-recall.png``; return the chart path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    chart = path.with_name(f"{path.stem}-recall.png")
    write_recall_chart(report, chart)
    path.write_text(render_markdown(report, chart.name))
    return chart


def render_markdown(report: dict[str, Any], chart_name: str) -> str:
    models = report["models"]
    labels = report["labels"]
    lines = [
        f"# Model comparison: {models['candidate']['id']} against {models['baseline']['id']}",
        "",
        f"**Decision: {report['decision']}**"
        + (f" (target keyword: {report['target_keyword']})" if report["target_keyword"] else ""),
        "",
        "| | baseline | candidate |",
        "|---|---|---|",
    ]
    for key in ("path", "id", "version", "size_bytes", "arena_bytes"):
        lines.append(f"| {key} | {models['baseline'][key]} | {models['candidate'][key]} |")
    lines.append(f"| sha256 | {models['baseline']['sha256'][:16]}... | "
                 f"{models['candidate']['sha256'][:16]}... |")
    latency = report["latency_ms"]
    for key in ("p50", "p95"):
        lines.append(f"| inference {key} (ms) | {latency['baseline'][key]} | "
                     f"{latency['candidate'][key]} |")
    lines += ["", f"Compared on the common keywords: {', '.join(labels['common_keywords'])}."]
    left_out = labels["left_out"]
    if left_out["baseline_only"] or left_out["candidate_only"]:
        lines.append(f"Left out: baseline only {left_out['baseline_only'] or 'none'}, "
                     f"candidate only {left_out['candidate_only'] or 'none'}.")
    confidence = int(round(report["confidence"] * 100))
    lines += ["", "## Rules", "", "| rule | metric | keyword | scenario | limit | verdict | "
              "measured |", "|---|---|---|---|---|---|---|"]
    for rule in report["rules"]:
        for check in rule["checks"]:
            lines.append(
                f"| {rule['name']} | {rule['metric']} | {check['keyword'] or '(all)'} | "
                f"{rule['scenario'] or ''} | {_fmt(rule['limit'])} | {check['verdict']} | "
                f"{check['reason']} |")

    lines += ["", "## Streaming recall per keyword, all streams", "",
              f"![recall per keyword]({chart_name})", "",
              f"Recall with its {confidence} % Wilson interval; the change with its {confidence} "
              "% paired bootstrap interval over stretches of the streams.", ""]
    lines += _keyword_table(report["streaming"][ALL], "recall", with_fa=True)
    for name, scenario in report["streaming"]["scenarios"].items():
        lines += ["", f"### Stream {name} ({scenario['kind']}, {scenario['audio_seconds']:.0f} s, "
                  f"{scenario['references']} keywords)", ""]
        overall = scenario["difference"]["overall"]
        lines.append(
            "Over all keywords: recall " + _change(overall["recall"])
            + ", precision " + _change(overall["precision"])
            + ", false accepts per hour " + _change(overall["false_accepts_per_hour"]) + ".")
        lines.append("")
        lines += _keyword_table(scenario, "recall", with_fa=True)

    clips = report["clips"]
    if ALL in clips:
        lines += ["", "## Clips", ""]
        for name, numbers in [(ALL, clips[ALL]), *clips["sets"].items()]:
            if "difference" not in numbers:
                continue
            difference = numbers["difference"]
            lines.append(f"- {name}: {numbers['clips']} clips, accuracy "
                         + _change(difference["accuracy"]) + ", macro F1 "
                         + _change(difference["macro_f1"]))
        lines += ["", "Clip recall per keyword, all clip sets:", ""]
        lines += _keyword_table(clips[ALL], "recall", with_fa=False)
    lines.append("")
    return "\n".join(lines)


def _keyword_table(numbers: dict[str, Any], metric: str, with_fa: bool) -> list[str]:
    header = f"| keyword | baseline {metric} | candidate {metric} | change |"
    rule = "|---|---|---|---|"
    if with_fa:
        header += " FA/h baseline | FA/h candidate |"
        rule += "---|---|"
    lines = [header, rule]
    for keyword, difference in numbers["difference"]["per_keyword"].items():
        cells = []
        for role in ROLES:
            entry = numbers[role]["per_keyword"][keyword]
            interval = entry.get(f"{metric}_ci")
            cells.append(f"{_fmt(entry[metric])} {_bounds(interval)} "
                         f"({entry['tp']}/{entry['tp'] + entry['fn']})")
        row = f"| {keyword} | {cells[0]} | {cells[1]} | {_change(difference[metric])} |"
        if with_fa:
            rates = [_fmt(numbers[role]["per_keyword"][keyword]["false_accepts_per_hour"])
                     for role in ROLES]
            row += f" {rates[0]} | {rates[1]} |"
        lines.append(row)
    return lines


def _change(entry: dict[str, Any]) -> str:
    if entry["delta"] is None:
        return "n/a"
    return f"{entry['delta']:+.3f} {_bounds(entry['delta_ci'], signed=True)}"


def _bounds(interval: list[float] | None, signed: bool = False) -> str:
    if interval is None:
        return ""
    form = "{:+.3f}" if signed else "{:.3f}"
    return "[" + form.format(interval[0]) + ", " + form.format(interval[1]) + "]"


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) >= 1000 else f"{value:.3f}".rstrip("0").rstrip(".")
    return str(value)


def write_recall_chart(report: dict[str, Any], path: Path) -> None:
    """Draw baseline and candidate streaming recall per keyword with Wilson error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    numbers = report["streaming"][ALL]
    keywords = list(numbers["difference"]["per_keyword"])
    positions = np.arange(len(keywords))
    width = 0.38
    figure, axes = plt.subplots(figsize=(max(6.0, 0.55 * len(keywords) + 2.0), 4.0))
    for offset, role, color in ((-width / 2, "baseline", "#7f7f7f"),
                                (width / 2, "candidate", "#1f77b4")):
        values, lower, upper = [], [], []
        for keyword in keywords:
            entry = numbers[role]["per_keyword"][keyword]
            value = entry["recall"]
            interval = entry["recall_ci"]
            values.append(np.nan if value is None else value)
            lower.append(0.0 if value is None or interval is None else value - interval[0])
            upper.append(0.0 if value is None or interval is None else interval[1] - value)
        model = report["models"][role]["id"]
        axes.bar(positions + offset, values, width, yerr=[lower, upper], capsize=2,
                 color=color, label=f"{role} ({model})")
    axes.set_xticks(positions)
    axes.set_xticklabels(keywords, rotation=45, ha="right")
    axes.set_ylim(0.0, 1.05)
    axes.set_ylabel("streaming recall")
    confidence = int(round(report["confidence"] * 100))
    axes.set_title(f"Recall per keyword over all streams ({confidence} % Wilson intervals)")
    axes.legend(loc="upper right")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
