"""``kwstream compare``: intervals, decisions, label sets and the command on a small suite.

The end-to-end tests compare the untrained models of tests/data/compare (written by
make_models.py) on under a minute of Allison's digits, so they check the plumbing and the
decisions, not accuracy.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from kwstream.cli import main
from kwstream.compare import ALL, common_labels, label_sets
from kwstream.compare_policy import decide, parse_policy
from kwstream.compare_stats import poisson_rate_interval, wilson_interval
from kwstream.inference import KeywordModel
from kwstream.labels import Label

DATA = Path(__file__).parent / "data" / "compare"
MODEL_A = DATA / "digits-a.tflite"
MODEL_B = DATA / "digits-b.tflite"
MODEL_MIXED = DATA / "mixed-32.tflite"
SUITE = DATA / "suite-small.toml"
POLICY = DATA / "policy-small.toml"
ALLISON_DIR = Path("/usr/share/asterisk/sounds/en")

needs_allison = pytest.mark.skipif(
    not (ALLISON_DIR / "digits" / "1.g722").is_file() or shutil.which("ffmpeg") is None,
    reason="needs ffmpeg and asterisk-core-sounds-en-g722",
)


# Confidence intervals, against values computed by hand with z = 1.959964.


def test_wilson_interval_hand_values() -> None:
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.490165, abs=1e-5)
    assert high == pytest.approx(0.943318, abs=1e-5)

    low, high = wilson_interval(0, 10)
    assert low == 0.0
    assert high == pytest.approx(0.277533, abs=1e-5)

    low, high = wilson_interval(10, 10)
    assert low == pytest.approx(0.722467, abs=1e-5)
    assert high == 1.0


def test_wilson_interval_empty_is_none() -> None:
    assert wilson_interval(0, 0) is None


def test_wilson_interval_rejects_bad_counts() -> None:
    with pytest.raises(ValueError, match="successes <= trials"):
        wilson_interval(3, 2)


def test_poisson_interval_hand_values() -> None:
    low, high = poisson_rate_interval(0, 1.0)
    assert low == 0.0
    assert high == pytest.approx(3.841459, abs=1e-5)

    # 4 events in 2 hours: (4 + 1.920729 -+ 1.959964 * sqrt(4.960365)) / 2.
    low, high = poisson_rate_interval(4, 2.0)
    assert low == pytest.approx(0.777761, abs=1e-5)
    assert high == pytest.approx(5.142968, abs=1e-5)

    assert poisson_rate_interval(3, 0.0) is None


# Decisions on hand-made numbers.


def _difference(baseline: float, candidate: float, low: float, high: float) -> dict[str, Any]:
    return {"baseline": baseline, "candidate": candidate, "delta": candidate - baseline,
            "delta_ci": [low, high]}


def _results(recalls: dict[str, tuple[float, float, float, float]], accuracy: tuple[float, float],
             same_file: bool = False) -> dict[str, Any]:
    """Results with streaming recall (baseline, candidate, CI low, CI high) per keyword."""
    per_keyword = {keyword: {"recall": _difference(*values)} for keyword, values in recalls.items()}
    return {
        "models": {"baseline": {"sha256": "a" * 64, "arena_bytes": 30000},
                   "candidate": {"sha256": ("a" if same_file else "b") * 64,
                                 "arena_bytes": 31000}},
        "labels": {"common_keywords": list(recalls)},
        "streaming": {ALL: {"difference": {"per_keyword": per_keyword, "overall": {}}},
                      "scenarios": {}},
        "clips": {ALL: {"difference": {"accuracy": _difference(*accuracy, -0.05, 0.05)}}},
        "latency_ms": {"baseline": {"p95": 1.0}, "candidate": {"p95": 1.1}},
    }


DECISION_POLICY = parse_policy({"rule": [
    {"name": "target rises", "kind": "min_increase", "metric": "stream.recall",
     "keyword": "target", "limit": 0.05},
    {"name": "others hold", "kind": "no_significant_decrease", "metric": "stream.recall",
     "keyword": "others", "limit": 0.02},
    {"name": "accuracy holds", "kind": "max_decrease", "metric": "clips.accuracy", "limit": 0.02},
    {"name": "arena", "kind": "max_value", "metric": "model.arena_bytes", "limit": 49152},
]}, Path("policy.toml"))


def _verdicts(outcome: dict[str, Any]) -> dict[str, str]:
    return {rule["name"]: rule["verdict"] for rule in outcome["rules"]}


def test_decide_promotes_target_lift() -> None:
    results = _results({"seven": (0.60, 0.80, 0.05, 0.35), "one": (0.90, 0.88, -0.10, 0.06)},
                       accuracy=(0.90, 0.895))
    outcome = decide(results, DECISION_POLICY, target="seven")
    assert outcome["decision"] == "promote"
    assert set(_verdicts(outcome).values()) == {"pass"}


def test_decide_rejects_regression_beyond_interval() -> None:
    # "one" falls by 0.20 and its whole interval lies below -0.02.
    results = _results({"seven": (0.60, 0.80, 0.05, 0.35), "one": (0.90, 0.70, -0.30, -0.08)},
                       accuracy=(0.90, 0.90))
    outcome = decide(results, DECISION_POLICY, target="seven")
    assert outcome["decision"] == "reject"
    assert _verdicts(outcome)["others hold"] == "fail"
    assert _verdicts(outcome)["target rises"] == "pass"
    failed = [c for c in outcome["rules"][2]["checks"] if c["verdict"] == "fail"]
    assert [c["keyword"] for c in failed] == ["one"]


def test_decide_rejects_small_target_lift() -> None:
    results = _results({"seven": (0.60, 0.62, -0.05, 0.09), "one": (0.90, 0.90, 0.0, 0.0)},
                       accuracy=(0.90, 0.90))
    outcome = decide(results, DECISION_POLICY, target="seven")
    assert outcome["decision"] == "reject"
    assert _verdicts(outcome)["target rises"] == "fail"


def test_decide_rejects_accuracy_drop() -> None:
    results = _results({"seven": (0.60, 0.80, 0.05, 0.35), "one": (0.90, 0.90, 0.0, 0.0)},
                       accuracy=(0.90, 0.85))
    outcome = decide(results, DECISION_POLICY, target="seven")
    assert outcome["decision"] == "reject"
    assert _verdicts(outcome)["accuracy holds"] == "fail"


def test_decide_rejects_same_file() -> None:
    results = _results({"seven": (0.60, 0.80, 0.05, 0.35), "one": (0.90, 0.90, 0.0, 0.0)},
                       accuracy=(0.90, 0.90), same_file=True)
    outcome = decide(results, DECISION_POLICY, target="seven")
    assert outcome["decision"] == "reject"
    assert _verdicts(outcome)["candidate differs from baseline"] == "fail"


def test_policy_without_improvement_rule_rejected() -> None:
    with pytest.raises(Exception, match="min_increase"):
        parse_policy({"rule": [{"kind": "max_decrease", "metric": "clips.accuracy",
                                "limit": 0.01}]}, Path("p.toml"))


# Label sets.


def test_label_sets_of_different_models() -> None:
    sets = label_sets(KeywordModel(MODEL_A), KeywordModel(MODEL_MIXED))
    assert sets.common == ["_silence_", "_unknown_", "one", "two", "three"]
    assert sets.common_keywords == ["one", "two", "three"]
    assert sets.baseline_only == ["zero", "four", "five", "six", "seven", "eight", "nine"]
    assert sets.candidate_only == ["yes"]


def test_common_labels_relabel_others() -> None:
    labels = [Label("one", 0, 500), Label("seven", 1000, 1500), Label("_unknown_", 2000, 2500)]
    relabeled = common_labels(labels, ["one", "two"])
    assert [label.label for label in relabeled] == ["one", "_unknown_", "_unknown_"]
    assert relabeled[1].start_ms == 1000


# The command.


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("compare-cache")


def _compare(tmp_path: Path, cache_dir: Path, baseline: Path, candidate: Path,
             *extra: str) -> tuple[int, Path]:
    report = tmp_path / "report.json"
    argv = ["compare", "--baseline", str(baseline), "--candidate", str(candidate),
            "--report", str(report), "--cache", str(cache_dir), *extra]
    if "--suite" not in extra:
        argv += ["--suite", str(SUITE)]
    if "--policy" not in extra:
        argv += ["--policy", str(POLICY)]
    return main(argv), report


@needs_allison
def test_model_against_itself_rejected(tmp_path: Path, cache_dir: Path) -> None:
    markdown = tmp_path / "report.md"
    status, report_path = _compare(tmp_path, cache_dir, MODEL_A, MODEL_A,
                                   "--target-keyword", "seven", "--markdown", str(markdown))
    assert status == 1
    report = json.loads(report_path.read_text())
    assert report["decision"] == "reject"
    verdicts = {rule["name"]: rule["verdict"] for rule in report["rules"]}
    assert verdicts["candidate differs from baseline"] == "fail"
    assert verdicts["target recall rises"] == "fail"
    target = report["streaming"][ALL]["difference"]["per_keyword"]["seven"]["recall"]
    assert target["delta"] == 0.0
    assert report["labels"]["left_out"] == {"baseline_only": [], "candidate_only": []}
    assert "Decision: reject" in markdown.read_text()
    assert (tmp_path / "report-recall.png").stat().st_size > 0


@needs_allison
def test_report_contents(tmp_path: Path, cache_dir: Path) -> None:
    status, report_path = _compare(tmp_path, cache_dir, MODEL_A, MODEL_B)
    assert status in (0, 1)
    report = json.loads(report_path.read_text())
    assert report["decision"] in ("promote", "reject")
    assert set(report["streaming"]["scenarios"]) == {"digits-clean", "digits-10db"}
    assert set(report["clips"]["sets"]) == {"silence-padded", "context-padded"}
    seven = report["streaming"][ALL]["baseline"]["per_keyword"]["seven"]
    assert seven["tp"] + seven["fn"] > 0
    assert seven["recall_ci"][0] <= seven["recall"] <= seven["recall_ci"][1]
    assert report["latency_ms"]["candidate"]["p95"] > 0
    assert report["models"]["candidate"]["arena_bytes"] > 0
    for rule in report["rules"]:
        for check in rule["checks"]:
            assert {"verdict", "baseline", "candidate", "delta", "reason"} <= set(check)


@needs_allison
def test_different_label_sets_compared_on_common(tmp_path: Path, cache_dir: Path) -> None:
    status, report_path = _compare(tmp_path, cache_dir, MODEL_A, MODEL_MIXED)
    assert status == 1
    report = json.loads(report_path.read_text())
    labels = report["labels"]
    assert labels["common_keywords"] == ["one", "two", "three"]
    assert labels["left_out"]["baseline_only"] == ["zero", "four", "five", "six", "seven",
                                                   "eight", "nine"]
    assert labels["left_out"]["candidate_only"] == ["yes"]
    assert set(report["streaming"][ALL]["baseline"]["per_keyword"]) == {"one", "two", "three"}
    # The candidate fires "yes" all the time; those detections are not scored.
    ignored = report["streaming"]["scenarios"]["digits-clean"]["ignored_detections"]
    assert ignored["candidate"] > 0
    # Clips of "seven" are left out: only the baseline knows it.
    assert report["clips"][ALL]["left_out_clips"] > 0
    assert report["models"]["candidate"]["frontend"]["num_bands"] == 32


def test_unknown_metric_is_error(tmp_path: Path, cache_dir: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text('[[rule]]\nname = "typo"\nkind = "min_increase"\n'
                      'metric = "stream.recal"\nlimit = 0.0\n')
    status, report = _compare(tmp_path, cache_dir, MODEL_A, MODEL_B, "--policy", str(policy))
    assert status == 2
    assert "unknown metric 'stream.recal'" in capsys.readouterr().err
    assert not report.exists()


def test_unknown_rule_kind_is_error(tmp_path: Path, cache_dir: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text('[[rule]]\nkind = "at_least"\nmetric = "stream.recall"\nlimit = 0.0\n')
    status, _ = _compare(tmp_path, cache_dir, MODEL_A, MODEL_B, "--policy", str(policy))
    assert status == 2
    assert "unknown rule kind 'at_least'" in capsys.readouterr().err


def test_missing_suite_is_error(tmp_path: Path, cache_dir: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no-such-suite.toml"
    status, _ = _compare(tmp_path, cache_dir, MODEL_A, MODEL_B, "--suite", str(missing))
    assert status == 2
    assert f"suite file not found: {missing}" in capsys.readouterr().err


def test_missing_model_is_error(tmp_path: Path, cache_dir: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "candidate.tflite"
    status, _ = _compare(tmp_path, cache_dir, MODEL_A, missing)
    assert status == 2
    assert f"candidate model file not found: {missing}" in capsys.readouterr().err


def test_unknown_target_keyword_is_error(tmp_path: Path, cache_dir: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    status, _ = _compare(tmp_path, cache_dir, MODEL_A, MODEL_MIXED, "--target-keyword", "seven")
    assert status == 2
    assert "target keyword 'seven' is not a keyword of both models" in capsys.readouterr().err
