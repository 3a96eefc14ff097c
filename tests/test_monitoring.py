"""The monitoring stack: promtool checks of the shipped Prometheus files, the Grafana
dashboard's structure, and a real Prometheus scraping a real-time replay, queried with every
panel of the dashboard."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile

from kwstream.metrics import Metrics
from kwstream.modelcard import default_model_path, load_card
from tests.prometheus_fixture import PrometheusServer, free_port, prometheus_server  # noqa: F401
from tests.support import DIGIT_WORDS, decode_allison, silence, write_wav

REPO = Path(__file__).resolve().parents[1]
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULES_FILE = PROMETHEUS_DIR / "rules" / "kwstream.rules.yml"
RULE_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
DASHBOARD_FILE = REPO / "deploy" / "grafana" / "dashboards" / "kwstream.json"
BUNDLED_STREAM = REPO / "bench" / "streams" / "allison-3min"

PROMTOOL_TIMEOUT_S = 60
# Audio replayed in real time for the live test: long enough for several scored keywords.
LIVE_AUDIO_MS = 25000
METRICS_READY_TIMEOUT_S = 30.0
REPLAY_STOP_TIMEOUT_S = 10.0
# Queries that count traffic: after a replay with speech, each has a series above zero.
TRAFFIC_METRICS = ("kws_audio_seconds_total", "kws_inferences_total", "kws_detections")


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus; "
                    "scripts/bootstrap.sh installs it)")
    return subprocess.run([promtool, *args], capture_output=True, text=True,
                          timeout=PROMTOOL_TIMEOUT_S, cwd=REPO, check=False)


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD_FILE.read_text(encoding="utf-8"))


def dashboard_panels() -> list[dict[str, Any]]:
    """Every panel with queries, including those inside collapsed rows."""
    panels = []
    for panel in load_dashboard()["panels"]:
        panels.extend(panel.get("panels", []))
        if panel["type"] != "row":
            panels.append(panel)
    return panels


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(panel title, refId, expression) of every panel query."""
    return [(panel["title"], target["refId"], target["expr"])
            for panel in dashboard_panels() for target in panel["targets"]]


def substitute_variables(expr: str, values: dict[str, str]) -> str:
    """Replace Grafana variables as Grafana does for a Prometheus query."""
    for name, value in values.items():
        expr = expr.replace(f"${{{name}}}", value).replace(f"${name}", value)
    return expr


def load_yaml(path: Path) -> Any:
    yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read the rule files")
    return yaml.safe_load(path.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------
# promtool


def test_promtool_check_config() -> None:
    result = run_promtool("check", "config", str(PROMETHEUS_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_rules() -> None:
    result = run_promtool("check", "rules", str(RULES_FILE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rule_unit_tests() -> None:
    assert RULE_TESTS, f"no rule tests in {PROMETHEUS_DIR / 'tests'}"
    result = run_promtool("test", "rules", *map(str, RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_tests_cover_every_alert() -> None:
    rules = load_yaml(RULES_FILE)
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"]
              if "alert" in rule}
    firing: set[str] = set()
    silent: set[str] = set()
    for path in RULE_TESTS:
        for case in load_yaml(path)["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else silent).add(check["alertname"])

    assert alerts, f"no alerts in {RULES_FILE}"
    assert alerts - firing == set(), "alerts never tested firing"
    assert alerts - silent == set(), "alerts never tested silent"


# ---------------------------------------------------------------------------------------
# Grafana dashboard


def test_dashboard_panels_well_formed() -> None:
    dashboard = load_dashboard()
    panels = dashboard_panels()
    ids = [panel["id"] for panel in dashboard["panels"]] + [
        panel["id"] for row in dashboard["panels"] for panel in row.get("panels", [])]

    assert dashboard["uid"] == "kwstream"
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    assert panels, "no panels"
    for panel in panels:
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}, panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), f"empty query in {panel['title']!r}"


def test_dashboard_has_model_variable() -> None:
    variables = {variable["name"]: variable
                 for variable in load_dashboard()["templating"]["list"]}
    model_filtered = [title for title, _, expr in dashboard_queries() if "$model" in expr]

    assert "model" in variables
    assert "label_values(" in variables["model"]["query"]["query"]
    assert variables["model"]["multi"] is True
    assert variables["model"]["allValue"] == ".*"
    assert "Inference latency" in model_filtered
    assert "Streaming precision and recall" in model_filtered
    assert "False accepts per hour" in model_filtered


def test_dashboard_queries_parse(tmp_path: Path) -> None:
    """Every panel query is valid PromQL, checked by promtool as recording rules."""
    values = {"instance": "127.0.0.1:9108", "model": "kws20", "__rate_interval": "20s",
              "__range": "1h"}
    queries = dashboard_queries()
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard_query_{index}", "expr": substitute_variables(expr, values)}
        for index, (_, _, expr) in enumerate(queries)]}]}
    # JSON is valid YAML, so promtool reads this file as a rule file.
    rule_file = tmp_path / "dashboard.rules.json"
    rule_file.write_text(json.dumps(rules), encoding="utf-8")

    result = run_promtool("check", "rules", str(rule_file))

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(queries)} rules found" in result.stdout
    assert all("$" not in rule["expr"] for rule in rules["groups"][0]["rules"])


def test_dashboard_shows_every_metric() -> None:
    """Each metric the daemon exports is in a panel, directly or through a recording rule."""
    rules = load_yaml(RULES_FILE)
    recorded: dict[str, str] = {}
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "record" in rule:
                recorded[rule["record"]] = recorded.get(rule["record"], "") + rule["expr"]
    text = " ".join(expr for _, _, expr in dashboard_queries())
    # Expand recording rules, twice because some are built from others.
    for _ in range(2):
        text += " ".join(expr for name, expr in recorded.items() if name in text)
    # prometheus_client names a counter's family without _total and an Info without _info,
    # so each family name is a prefix of the exported series names.
    families = {family.name for family in Metrics().registry.collect()}
    # The regular expression kws_scored_.+_total selects the three scoring counters.
    missing = sorted(name for name in families
                     if not re.search(rf"\b{re.escape(name)}", text)
                     and not name.startswith("kws_scored_"))

    assert missing == []
    assert "kws_scored_true_positives_total" in text
    assert "kws_scored_false_positives_total" in text
    assert "kws_scored_false_negatives_total" in text


# ---------------------------------------------------------------------------------------
# Live: Prometheus scraping a real-time replay


def write_live_stream(directory: Path) -> tuple[Path, Path]:
    """Write about 25 s of labeled speech: the bundled stream's start, or Allison's digits."""
    audio_path = directory / "live.wav"
    labels_path = directory / "live.csv"
    if BUNDLED_STREAM.with_suffix(".flac").is_file():
        audio, rate = soundfile.read(BUNDLED_STREAM.with_suffix(".flac"), dtype="float32")
        with BUNDLED_STREAM.with_suffix(".csv").open(encoding="utf-8") as handle:
            rows = [(row["label"], float(row["start_ms"]), float(row["end_ms"]))
                    for row in csv.DictReader(handle)]
        cut_ms = float(LIVE_AUDIO_MS)
        # Never cut a word in two: end after the last word that starts before the cut.
        for _, start_ms, end_ms in rows:
            if start_ms < cut_ms < end_ms:
                cut_ms = end_ms + 500
        rows = [row for row in rows if row[2] <= cut_ms]
        write_wav(audio_path, audio[: int(rate * cut_ms / 1000)], rate)
    else:
        pieces = []
        rows = []
        position_ms = 0.0
        gap_s = 1.2
        for index in range(10):
            digit = decode_allison(f"digits/{index}.g722", directory)
            pieces += [silence(gap_s), digit]
            start_ms = position_ms + gap_s * 1000
            position_ms = start_ms + digit.size / 16
            rows.append((DIGIT_WORDS[index], start_ms, position_ms))
        pieces.append(silence(gap_s))
        write_wav(audio_path, np.concatenate(pieces))
    with labels_path.open("w", encoding="utf-8") as handle:
        handle.write("label,start_ms,end_ms\n")
        for label, start_ms, end_ms in rows:
            handle.write(f"{label},{start_ms:.1f},{end_ms:.1f}\n")
    return audio_path, labels_path


def wait_for_metrics(port: int, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + METRICS_READY_TIMEOUT_S
    while True:
        if process.poll() is not None:
            raise AssertionError(f"kwstream replay exited with status {process.returncode} "
                                 f"before serving metrics; stderr:\n{log_path.read_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1.0):
                return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"kwstream replay served no metrics on port {port} within "
                                 f"{METRICS_READY_TIMEOUT_S} s; stderr:\n{log_path.read_text()}")
        time.sleep(0.2)


def check_queries(server: PrometheusServer, values: dict[str, str]) -> list[str]:
    """Run every dashboard query; return one line per query that fails its expectation."""
    failures = []
    for title, ref_id, expr in dashboard_queries():
        query = substitute_variables(expr, values)
        result = server.query(query)
        if not result:
            failures.append(f"{title} ({ref_id}): no series for {query}")
            continue
        numbers = [float(series["value"][1]) for series in result]
        if any(name in expr for name in TRAFFIC_METRICS) and not any(n > 0 for n in numbers):
            failures.append(f"{title} ({ref_id}): no series above 0 for {query}: {numbers}")
    return failures


def variable_values(server: PrometheusServer, values: dict[str, str]) -> dict[str, list[str]]:
    """Resolve the dashboard's label_values() variables as Grafana does."""
    resolved = {}
    for variable in load_dashboard()["templating"]["list"]:
        if variable["type"] != "query":
            continue
        definition = substitute_variables(variable["query"]["query"], values)
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", definition)
        assert match, f"variable {variable['name']}: unsupported query {definition}"
        selector, label = match.groups()
        resolved[variable["name"]] = server.api(f"label/{label}/values", [("match[]", selector)])
    return resolved


@pytest.mark.prometheus
@pytest.mark.broker
@pytest.mark.skipif(not default_model_path().exists(), reason="no shipped model yet")
def test_dashboard_queries_on_live_replay(
    prometheus_server: PrometheusServer, mosquitto: Any, tmp_path: Path  # noqa: F811
) -> None:
    audio_path, labels_path = write_live_stream(tmp_path)
    model_id = load_card(default_model_path()).id
    metrics_port = free_port()
    log_path = tmp_path / "replay.log"
    events_path = tmp_path / "events.jsonl"
    command = [
        sys.executable, "-m", "kwstream", "replay", str(audio_path), "--labels", str(labels_path),
        "--speed", "realtime", "--metrics-port", str(metrics_port),
        "--mqtt", f"mqtt://{mosquitto.host}:{mosquitto.port}", "--device-id", "live-test",
    ]
    with log_path.open("wb") as log, events_path.open("wb") as events:
        replay = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=events, stderr=log,
                                  cwd=tmp_path)
    try:
        wait_for_metrics(metrics_port, replay, log_path)
        instance = f"127.0.0.1:{metrics_port}"
        prometheus_server.start([instance], rule_files=[RULES_FILE])

        # Poll until every panel has data, or the replay ends.
        # Grafana would insert regex-escaped values; these contain no character that needs it
        # beyond ".", which also matches itself.
        values = {"instance": instance, "model": model_id,
                  "__rate_interval": "1m", "__range": "5m"}
        failures = ["no query ran"]
        deadline = time.monotonic() + LIVE_AUDIO_MS / 1000 + REPLAY_STOP_TIMEOUT_S
        while replay.poll() is None and failures and time.monotonic() < deadline:
            time.sleep(1.0)
            failures = check_queries(prometheus_server, values)
        variables = variable_values(prometheus_server, {"instance": instance})
        rule_groups = prometheus_server.api("rules")["groups"]
        connected = prometheus_server.query(f'kws_mqtt_connected{{instance="{instance}"}}')
    finally:
        replay.terminate()
        try:
            replay.wait(REPLAY_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            replay.kill()
            replay.wait()

    replay_log = log_path.read_text(encoding="utf-8", errors="replace")
    assert failures == [], "\n".join(failures) + f"\nreplay stderr:\n{replay_log}"
    assert variables["instance"] == [instance]
    assert model_id in variables["model"]
    rule_errors = [f"{rule['name']}: {rule.get('lastError')}" for group in rule_groups
                   for rule in group["rules"] if rule["health"] == "err"]
    assert rule_errors == []
    assert [float(series["value"][1]) for series in connected] == [1.0]
