from __future__ import annotations

from pathlib import Path

import pytest

from kwstream.errors import LabelFileError
from kwstream.labels import Label, read_labels, write_labels

KEYWORDS = ["yes", "no", "zero"]


def write(tmp_path: Path, text: str, name: str = "labels.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_csv_form_reads_integers_and_decimals(tmp_path: Path) -> None:
    path = write(tmp_path, "label,start_ms,end_ms\nyes,100,450\nno,1200.5,1600.25\n")

    labels = read_labels(path, KEYWORDS)

    assert labels == [Label("yes", 100, 450), Label("no", 1200.5, 1600.25)]


def test_header_only_is_empty_stream(tmp_path: Path) -> None:
    path = write(tmp_path, "label,start_ms,end_ms\n")

    assert read_labels(path, KEYWORDS) == []


def test_unsorted_rows_are_sorted(tmp_path: Path) -> None:
    text = "label,start_ms,end_ms\nno,5000,5400\nyes,100,400\n_unknown_,2000,2600\n"
    path = write(tmp_path, text)

    labels = read_labels(path, KEYWORDS)

    assert [label.start_ms for label in labels] == [100, 2000, 5000]
    assert [label.label for label in labels] == ["yes", "_unknown_", "no"]


def test_any_label_accepted_without_keywords(tmp_path: Path) -> None:
    path = write(tmp_path, "label,start_ms,end_ms\nmarvin,0,500\n")

    assert read_labels(path) == [Label("marvin", 0, 500)]


def test_two_column_tensorflow_form(tmp_path: Path) -> None:
    # As written by generate_streaming_test_wav.py: "%s, %f" with start times in ms.
    path = write(tmp_path, "no, 2500.000000\nyes, 312.562500\n_unknown_, 3100.000000\n")

    labels = read_labels(path, KEYWORDS)

    assert labels[0] == Label("yes", 312.5625, 1312.5625)
    # The end is start + 1000 unless the next row starts earlier.
    assert labels[1] == Label("no", 2500, 3100)
    assert labels[2] == Label("_unknown_", 3100, 4100)


def test_writer_round_trip(tmp_path: Path) -> None:
    labels = [Label("yes", 100, 450), Label("_unknown_", 1000.5, 1700.125)]
    path = tmp_path / "out.csv"

    write_labels(path, labels)

    assert path.read_text() == "label,start_ms,end_ms\nyes,100,450\n_unknown_,1000.5,1700.125\n"
    assert read_labels(path, KEYWORDS) == labels


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("label,start_ms,end_ms\nyes,0,100\nmaybe,200,300\n", ":3: label 'maybe'"),
        ("label,start_ms,end_ms\nyes,1o0,200\n", ":2: start_ms '1o0' is not a number"),
        ("label,start_ms,end_ms\nyes,100\n", ":2: missing column(s) end_ms"),
        ("label,start_ms,end_ms\nyes,500,400\n", ":2: end_ms 400 is before start_ms 500"),
        ("label,start_ms,end_ms\nyes,-5,400\n", ":2: start_ms -5 is negative"),
        ("label,start_ms,end_ms\nyes,0,nan\n", ":2: end_ms 'nan' is not a finite number"),
        ("label,start_ms,end_ms\nyes,0,1,2\n", ":2: expected 3 columns"),
        ("label,start_ms,end_ms\n,0,100\n", ":2: empty label"),
        ("label,start,end\nyes,0,100\n", ":1: expected the header label,start_ms,end_ms"),
        ("yes, 100\nno, 200, 300\n", ":2: the file is in the two-column form"),
        ("yes, 100\nno, abc\n", ":2: start_ms 'abc' is not a number"),
        ("", "empty label file"),
    ],
)
def test_invalid_label_file(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)

    with pytest.raises(LabelFileError) as raised:
        read_labels(path, KEYWORDS)

    assert str(path) in str(raised.value)
    assert expected in str(raised.value)


def test_missing_label_file(tmp_path: Path) -> None:
    with pytest.raises(LabelFileError, match="cannot read label file"):
        read_labels(tmp_path / "absent.csv")
