from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from kwstream.cli import main
from kwstream.errors import EventFileError
from kwstream.events import Event, read_events, write_events
from kwstream.labels import Label, write_labels
from kwstream.scoring import StreamingScorer, score_events

KEYWORDS = ["yes", "no"]


def event(keyword: str, time_ms: float) -> Event:
    return Event(keyword=keyword, score=0.9, time_ms=time_ms, model="test")


def score(events: list[Event], labels: list[Label], **options):  # type: ignore[no-untyped-def]
    return score_events(events, labels, KEYWORDS, **options)


YES = Label("yes", 1000, 1400)


def test_detection_at_tolerance_edge_matches() -> None:
    report = score([event("yes", 2400)], [YES])

    assert (report.tp, report.fp, report.fn) == (1, 0, 0)
    assert report.latencies_ms == [1000]


def test_detection_after_tolerance_edge_is_false_positive() -> None:
    report = score([event("yes", 2401)], [YES])

    assert (report.tp, report.fp, report.fn) == (0, 1, 1)
    assert report.confusions == {}


def test_detection_at_word_start_matches() -> None:
    assert score([event("yes", 1000)], [YES]).tp == 1


def test_detection_before_word_start_is_false() -> None:
    assert score([event("yes", 999)], [YES]).fp == 1


def test_second_detection_of_one_word_is_false_positive() -> None:
    report = score([event("yes", 1200), event("yes", 1500)], [YES])

    assert (report.tp, report.fp, report.fn) == (1, 1, 0)
    assert report.per_keyword["yes"].precision == 0.5
    assert report.confusions == {}


def test_adjacent_keywords_both_match() -> None:
    labels = [YES, Label("no", 1450, 1800)]
    # "yes" fires inside the span of "no" but within its own tolerance: a true positive.
    report = score([event("yes", 1600), event("no", 1900)], labels)

    assert (report.tp, report.fp, report.fn) == (2, 0, 0)
    assert report.confusions == {}


def test_earliest_unmatched_reference_is_matched() -> None:
    labels = [YES, Label("yes", 2000, 2300)]
    scorer = StreamingScorer(labels, KEYWORDS)

    first = scorer.on_detection("yes", 2100)
    second = scorer.on_detection("yes", 2200)

    assert first.reference == labels[0]
    assert second.reference == labels[1]
    assert second.true_positive
    assert second.latency_ms == -100


def test_header_only_labels_make_every_detection_false() -> None:
    report = score([event("yes", 500)], [], duration_s=3600)

    assert (report.tp, report.fp, report.fn) == (0, 1, 0)
    assert report.precision == 0.0
    assert report.recall is None
    assert report.miss_rate is None
    assert report.false_accepts_per_hour == 1.0


def test_no_detections_give_null_precision() -> None:
    report = score([], [YES, Label("no", 3000, 3300)])

    assert report.precision is None
    assert report.recall == 0.0
    assert report.miss_rate == 1.0
    assert report.f1 == 0.0
    assert report.fn == 2


def test_nothing_at_all_gives_nulls() -> None:
    data = score([], []).to_dict()

    for name in ("precision", "recall", "f1", "miss_rate", "false_accepts_per_hour"):
        assert data[name] is None, name
    assert data["per_keyword"]["yes"] == {
        "tp": 0, "fp": 0, "fn": 0, "precision": None, "recall": None, "f1": None,
        "miss_rate": None,
    }


def test_wrong_keyword_at_right_time_is_confusion() -> None:
    report = score([event("no", 1200)], [YES])

    assert (report.tp, report.fp, report.fn) == (0, 1, 1)
    assert report.confusions == {"yes": {"no": 1}}
    assert report.per_keyword["no"].fp == 1
    assert report.per_keyword["yes"].fn == 1


def test_wrong_keyword_after_span_is_no_confusion() -> None:
    report = score([event("no", 1401)], [YES])

    assert report.fp == 1
    assert report.confusions == {}


def test_detection_on_unknown_is_false_positive() -> None:
    report = score([event("yes", 3300)], [Label("_unknown_", 3000, 3600)])

    assert (report.tp, report.fp, report.fn) == (0, 1, 0)
    assert report.references == 0
    assert report.unknown_references == 1
    assert report.false_positives_on_unknown == 1
    assert report.confusions == {}
    assert "_unknown_" not in report.per_keyword


def test_false_accepts_per_hour_needs_duration() -> None:
    events = [event("yes", 100), event("no", 200)]

    assert score(events, [], duration_s=1800).false_accepts_per_hour == 4.0
    assert score(events, [], duration_s=0).false_accepts_per_hour is None
    assert score(events, []).false_accepts_per_hour is None


def test_latency_median_and_p90() -> None:
    labels = [Label("yes", start, start + 400) for start in (1000, 5000, 9000, 13000)]
    latencies = [-100, 200, 500, 1000]
    events = [
        event("yes", label.end_ms + latency)
        for label, latency in zip(labels, latencies, strict=True)
    ]

    summary = score(events, labels).latency_summary()

    assert summary["count"] == 4
    assert summary["median"] == 350.0
    # Linear interpolation: position 0.9 * 3 = 2.7 between 500 and 1000.
    assert summary["p90"] == pytest.approx(850.0)


def test_advance_reports_misses_after_tolerance() -> None:
    scorer = StreamingScorer([YES, Label("no", 1500, 1700)], KEYWORDS, 1000)

    assert scorer.advance(2400) == []
    assert scorer.advance(2401) == [YES]
    assert scorer.recall() == 0.0
    assert scorer.precision() is None
    report = scorer.finish(10.0)

    assert report.fn == 2
    assert report.per_keyword["no"].fn == 1


def test_detections_out_of_order_raise() -> None:
    scorer = StreamingScorer([YES], KEYWORDS)
    scorer.on_detection("yes", 1500)

    with pytest.raises(ValueError, match="1400 ms is earlier than the previous detection at 1500"):
        scorer.on_detection("yes", 1400)


def test_detection_before_advanced_time_raises() -> None:
    scorer = StreamingScorer([YES], KEYWORDS)
    scorer.advance(2000)

    with pytest.raises(ValueError, match="1900 ms is earlier than the stream time 2000"):
        scorer.on_detection("yes", 1900)


def test_live_scoring_equals_offline() -> None:
    generator = random.Random(7)
    labels = []
    for start in range(0, 600_000, 2500):
        name = generator.choice(["yes", "no", "_unknown_"])
        labels.append(Label(name, start + generator.randint(0, 800), start + 1300))
    events = sorted(
        (event(generator.choice(KEYWORDS), generator.uniform(0, 602_000)) for _ in range(300)),
        key=lambda item: item.time_ms,
    )

    scorer = StreamingScorer(labels, KEYWORDS, 1000, tf_compat=True)
    missed = []
    pending = list(events)
    for block_end_ms in range(100, 603_000, 100):
        while pending and pending[0].time_ms <= block_end_ms:
            detection = pending.pop(0)
            scorer.on_detection(detection.keyword, detection.time_ms)
        missed += scorer.advance(block_end_ms)
    live = scorer.finish(603.0)
    offline = score_events(events, labels, KEYWORDS, 1000, 603.0, tf_compat=True)

    assert live.to_dict() == offline.to_dict()
    assert len(missed) <= live.fn


def test_report_json_names_and_nulls() -> None:
    data = json.loads(json.dumps(score([], [YES]).to_dict()))

    for name in ("precision", "recall", "f1", "false_accepts_per_hour", "miss_rate",
                 "confusions", "per_keyword", "latency_ms"):
        assert name in data, name
    assert data["precision"] is None
    assert set(data["per_keyword"]["yes"]) >= {"tp", "fp", "fn", "precision", "recall"}
    assert "tf_compat" not in data


# TensorFlow compatibility. The ground truth is the label start; a detection's time is the
# start of its 1-second window (event time_ms - 1000), matched within +-750 ms.

TF_LABELS = [Label("yes", 1000, 1400), Label("no", 3000, 3500), Label("_unknown_", 6000, 6700)]


def test_tf_compat_counts() -> None:
    events = [
        event("yes", 2200),  # window start 1200, nearest row yes@1000: correct
        event("yes", 2300),  # yes@1000 already taken: wrong
        event("yes", 4100),  # window start 3100, row no@3000: wrong
        event("yes", 7000),  # window start 6000, row _unknown_@6000: wrong
        event("no", 9000),  # window start 8000, no row within 750 ms: false positive
    ]

    tf = score(events, TF_LABELS, tf_compat=True).to_dict()["tf_compat"]

    assert (tf["ground_truths"], tf["correct"], tf["wrong"], tf["false_positives"]) == (3, 1, 3, 1)
    assert tf["matched_pct"] == pytest.approx(400 / 3)
    assert tf["correct_pct"] == pytest.approx(100 / 3)
    assert tf["wrong_pct"] == pytest.approx(100.0)
    assert tf["false_positive_pct"] == pytest.approx(100 / 3)


def test_tf_compat_tolerance_edges() -> None:
    labels = [Label("no", 3000, 3500)]

    # Window starts 3750 and 2250 are exactly 750 ms from the row at 3000.
    at_lower_edge = score([event("no", 4750)], labels, tf_compat=True).tf_compat
    past_lower_edge = score([event("no", 4751)], labels, tf_compat=True).tf_compat
    at_upper_edge = score([event("no", 3250)], labels, tf_compat=True).tf_compat
    before_upper_edge = score([event("no", 3249)], labels, tf_compat=True).tf_compat

    assert at_lower_edge is not None and at_lower_edge.correct == 1
    assert past_lower_edge is not None and past_lower_edge.false_positives == 1
    assert at_upper_edge is not None and at_upper_edge.correct == 1
    assert before_upper_edge is not None and before_upper_edge.false_positives == 1


def test_tf_compat_takes_earliest_row_in_tolerance() -> None:
    labels = [Label("yes", 1000, 1300), Label("no", 1500, 1800)]

    tf = score([event("no", 2200)], labels, tf_compat=True).tf_compat

    # Window start 1200: yes@1000 comes first, so "no" is wrong although no@1500 is in range.
    assert tf is not None
    assert (tf.correct, tf.wrong, tf.false_positives) == (0, 1, 0)


def test_tf_compat_rounds_label_times() -> None:
    # round(1000.5) == 1000 and round(1001.5) == 1002, as in Python's round().
    low = score([event("yes", 2750)], [Label("yes", 1000.5, 1400)], tf_compat=True).tf_compat
    high = score([event("yes", 2751)], [Label("yes", 1001.5, 1400)], tf_compat=True).tf_compat

    assert low is not None and low.correct == 1
    assert high is not None and high.correct == 1


def test_tf_compat_without_ground_truth_is_null() -> None:
    tf = score([event("yes", 2000)], [], tf_compat=True).to_dict()["tf_compat"]

    assert tf["false_positives"] == 1
    assert tf["false_positive_pct"] is None
    assert tf["matched_pct"] is None


# The command line.


def test_score_command_writes_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    labels_path = tmp_path / "labels.csv"
    events_path = tmp_path / "events.jsonl"
    report_path = tmp_path / "report.json"
    write_labels(labels_path, [YES, Label("no", 3000, 3400)])
    write_events(events_path, [
        event("yes", 1500),
        Event("no", 0.8, 3500, "candidate", shadow=True),
        event("no", 9000),
    ])

    status = main(["score", "--events", str(events_path), "--labels", str(labels_path),
                   "--duration-s", "3600", "--report", str(report_path), "--tf-compat",
                   "--keywords", "yes,no"])

    captured = capsys.readouterr()
    assert status == 0
    assert captured.out == ""
    assert "tp 1, fp 1, fn 1" in captured.err
    data = json.loads(report_path.read_text())
    assert (data["tp"], data["fp"], data["fn"]) == (1, 1, 1)
    assert data["false_accepts_per_hour"] == 1.0
    assert "tf_compat" in data


def test_score_command_bad_event_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    labels_path = tmp_path / "labels.csv"
    events_path = tmp_path / "events.jsonl"
    write_labels(labels_path, [YES])
    events_path.write_text(event("yes", 1500).to_json() + "\n" + '{"keyword": "yes"}\n')

    status = main(["score", "--events", str(events_path), "--labels", str(labels_path)])

    error = capsys.readouterr().err
    assert status == 2
    assert f"{events_path}:2: missing field(s) score, time_ms, model, shadow" in error
    assert len(error.strip().splitlines()) == 1


def test_score_command_bad_label(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    labels_path = tmp_path / "labels.csv"
    events_path = tmp_path / "events.jsonl"
    labels_path.write_text("label,start_ms,end_ms\nyes,0,100\nmaybe,200,300\n")
    write_events(events_path, [])

    status = main(["score", "--events", str(events_path), "--labels", str(labels_path),
                   "--keywords", "yes,no"])

    assert status == 2
    assert f"{labels_path}:3: label 'maybe'" in capsys.readouterr().err


def test_score_command_needs_model_choice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    labels_path = tmp_path / "labels.csv"
    events_path = tmp_path / "events.jsonl"
    write_labels(labels_path, [YES])
    write_events(events_path, [event("yes", 1500), Event("yes", 0.9, 1600, "other")])

    status = main(["score", "--events", str(events_path), "--labels", str(labels_path)])

    assert status == 2
    assert "choose one with --model" in capsys.readouterr().err
    assert main(["score", "--events", str(events_path), "--labels", str(labels_path),
                 "--model", "other"]) == 0


# Event files.


def test_event_json_round_trip(tmp_path: Path) -> None:
    events = [Event("yes", 0.91, 1500, "kws20", False, "2026-01-01T00:00:00Z", "pi"),
              Event("no", 0.8, 2500.5, "candidate", shadow=True)]
    path = tmp_path / "events.jsonl"

    write_events(path, events)

    assert read_events(path) == events
    assert events[1].to_json() == (
        '{"keyword":"no","score":0.8,"time_ms":2500.5,"model":"candidate","shadow":true}'
    )


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"keyword": "yes", "score": 0.9, "time_ms": 10, "model": "m"', "invalid JSON"),
        ('{"keyword": "yes", "score": "high", "time_ms": 10, "model": "m", "shadow": false}',
         "score must be a number, got 'high'"),
        ('{"keyword": "yes", "score": 0.9, "time_ms": -1, "model": "m", "shadow": false}',
         "time_ms must be >= 0"),
        ('{"keyword": "yes", "score": 0.9, "time_ms": 1, "model": "m", "shadow": 0}',
         "shadow must be true or false"),
        ('{"keyword": "yes", "score": 0.9, "time_ms": 1, "model": "m", "shadow": false, '
         '"extra": 1}', "unknown field(s) extra"),
        ("[1, 2]", "expected a JSON object, got list"),
    ],
)
def test_invalid_event_line(tmp_path: Path, line: str, expected: str) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text("\n" + line + "\n")

    with pytest.raises(EventFileError) as raised:
        read_events(path)

    assert f"{path}:2: " in str(raised.value)
    assert expected in str(raised.value)
