"""Promotion policy of ``kwstream compare``: rules over the measured numbers, and the decision.

A policy (TOML, see ``bench/compare/policy.toml``) is a list of ``[[rule]]`` tables:

- ``kind``: how the rule judges a metric, with ``delta = candidate - baseline``:

  - ``min_increase``: ``delta >= limit`` and ``delta > 0``. A model never improves on
    itself, so a policy with such a rule never promotes a model compared with itself.
  - ``max_decrease``: ``-delta <= limit``.
  - ``no_significant_decrease``: fails only when the whole confidence interval of ``delta``
    lies below ``-limit``, that is when the candidate is worse by more than ``limit``
    beyond the uncertainty of the measurement.
  - ``max_increase``: ``delta <= limit``.
  - ``max_value`` and ``min_value``: the candidate's own value against ``limit``.

- ``metric``: one of :data:`METRICS`.
- ``keyword`` (per-keyword metrics): ``target``, ``others`` (every common keyword but the
  target), ``each`` (every common keyword), or a keyword. Absent: the metric over all common
  keywords (streaming metrics only). Without a target keyword, ``target`` means the metric
  over all common keywords and ``others`` means every common keyword.
- ``scenario`` (stream and clip metrics): a stream or clip set of the suite, or ``all`` (the
  default) for the numbers pooled over every stream or every clip set.
- ``limit``: a number in the metric's unit.

Besides the policy's rules, the decision always applies one built-in rule: the candidate
file must differ from the baseline file (sha256). A policy must hold at least one
``min_increase`` rule, so that a candidate is promoted only for an improvement.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kwstream.compare import ALL
from kwstream.compare_suite import Suite
from kwstream.errors import ConfigError

RULE_KINDS = ("min_increase", "max_decrease", "no_significant_decrease", "max_increase",
              "max_value", "min_value")
KEYWORD_SCOPES = ("target", "others", "each")


@dataclass(frozen=True)
class MetricInfo:
    section: str
    """``stream``, ``clips`` or ``model``: where the numbers come from."""
    per_keyword: bool
    """Whether the metric is measured per keyword."""
    overall: bool
    """Whether the metric is also measured over all keywords (or is global only)."""
    unit: str


METRICS: dict[str, MetricInfo] = {
    "stream.recall": MetricInfo("stream", True, True, "ratio"),
    "stream.precision": MetricInfo("stream", True, True, "ratio"),
    "stream.f1": MetricInfo("stream", True, True, "ratio"),
    "stream.false_accepts_per_hour": MetricInfo("stream", True, True, "per hour"),
    "clips.recall": MetricInfo("clips", True, False, "ratio"),
    "clips.precision": MetricInfo("clips", True, False, "ratio"),
    "clips.f1": MetricInfo("clips", True, False, "ratio"),
    "clips.accuracy": MetricInfo("clips", False, True, "ratio"),
    "clips.macro_f1": MetricInfo("clips", False, True, "ratio"),
    "latency.p50_ms": MetricInfo("model", False, True, "ms"),
    "latency.p95_ms": MetricInfo("model", False, True, "ms"),
    "latency.p99_ms": MetricInfo("model", False, True, "ms"),
    "model.size_bytes": MetricInfo("model", False, True, "bytes"),
    "model.arena_bytes": MetricInfo("model", False, True, "bytes"),
}


@dataclass(frozen=True)
class Rule:
    name: str
    kind: str
    metric: str
    limit: float
    keyword: str | None = None
    scenario: str = ALL

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "metric": self.metric,
                "keyword": self.keyword, "scenario": self.scenario, "limit": self.limit}


@dataclass(frozen=True)
class Policy:
    path: Path
    description: str
    rules: tuple[Rule, ...]
    target_keyword: str | None = None


def load_policy(path: Path) -> Policy:
    """Read and check a policy file; every error names the file, the rule and the value."""
    if not path.is_file():
        raise ConfigError(f"policy file not found: {path}")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read policy: {error}") from error
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: invalid TOML: {error}") from error
    return parse_policy(data, path)


def parse_policy(data: dict[str, Any], path: Path) -> Policy:
    unknown = sorted(set(data) - {"description", "target_keyword", "rule"})
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)} "
                          "(known: description, target_keyword, rule)")
    entries = data.get("rule", [])
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{path}: the policy lists no [[rule]]")
    rules = tuple(_parse_rule(entry, index, path) for index, entry in enumerate(entries))
    if not any(rule.kind == "min_increase" for rule in rules):
        raise ConfigError(
            f"{path}: the policy needs at least one min_increase rule; without one a "
            "candidate that improves nothing would be promoted"
        )
    target = data.get("target_keyword")
    if target is not None and (not isinstance(target, str) or not target):
        raise ConfigError(f"{path}: target_keyword must be a non-empty string, got {target!r}")
    return Policy(path, str(data.get("description", "")), rules, target)


def _parse_rule(entry: Any, index: int, path: Path) -> Rule:
    where = f"{path}: rule[{index}]"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: must be a table")
    unknown = sorted(set(entry) - {"name", "kind", "metric", "limit", "keyword", "scenario"})
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} "
                          "(known: name, kind, metric, limit, keyword, scenario)")
    name = str(entry.get("name", f"rule {index}"))
    where = f"{path}: rule {name!r}"
    kind = entry.get("kind")
    if kind not in RULE_KINDS:
        raise ConfigError(f"{where}: unknown rule kind {kind!r} (known: {', '.join(RULE_KINDS)})")
    metric = entry.get("metric")
    if metric not in METRICS:
        raise ConfigError(f"{where}: unknown metric {metric!r} (known: {', '.join(METRICS)})")
    info = METRICS[metric]
    limit = entry.get("limit")
    if isinstance(limit, bool) or not isinstance(limit, int | float):
        raise ConfigError(f"{where}: limit must be a number, got {limit!r}")
    keyword = entry.get("keyword")
    if keyword is not None:
        if not info.per_keyword:
            raise ConfigError(f"{where}: metric {metric} is not measured per keyword; "
                              "remove keyword")
        if not isinstance(keyword, str) or not keyword:
            raise ConfigError(f"{where}: keyword must be a non-empty string, got {keyword!r}")
    elif not info.overall:
        raise ConfigError(f"{where}: metric {metric} is measured per keyword; set keyword to "
                          f"{', '.join(KEYWORD_SCOPES)} or a keyword")
    scenario = entry.get("scenario", ALL)
    if info.section == "model" and "scenario" in entry:
        raise ConfigError(f"{where}: metric {metric} has no scenario; remove scenario")
    if not isinstance(scenario, str) or not scenario:
        raise ConfigError(f"{where}: scenario must be a non-empty string, got {scenario!r}")
    if kind == "no_significant_decrease" and info.section == "model":
        raise ConfigError(f"{where}: metric {metric} has no confidence interval; use "
                          "max_decrease or max_increase")
    if limit < 0 and kind not in ("max_value", "min_value"):
        raise ConfigError(f"{where}: limit of a {kind} rule must be >= 0, got {limit}")
    return Rule(name, kind, metric, float(limit), keyword, scenario)


def check_policy(policy: Policy, suite: Suite, keywords: list[str], target: str | None) -> None:
    """Check the policy's scenarios and keywords against the suite and the common keywords."""
    streams = [stream.name for stream in suite.streams]
    clip_sets = [clip_set.name for clip_set in suite.clip_sets]
    if target is not None and target not in keywords:
        raise ConfigError(f"target keyword {target!r} is not a keyword of both models "
                          f"(common keywords: {', '.join(keywords)})")
    for rule in policy.rules:
        where = f"{policy.path}: rule {rule.name!r}"
        info = METRICS[rule.metric]
        if info.section == "stream" and rule.scenario not in (ALL, *streams):
            raise ConfigError(f"{where}: scenario {rule.scenario!r} is not a stream of the "
                              f"suite ({', '.join([ALL, *streams])})")
        if info.section == "clips":
            if not clip_sets:
                raise ConfigError(f"{where}: metric {rule.metric} needs clips, but the suite "
                                  f"{suite.path} has no [[clips]]")
            if rule.scenario not in (ALL, *clip_sets):
                raise ConfigError(f"{where}: scenario {rule.scenario!r} is not a clip set of "
                                  f"the suite ({', '.join([ALL, *clip_sets])})")
        if rule.keyword is None or rule.keyword in KEYWORD_SCOPES:
            if rule.keyword == "target" and target is None and not info.overall:
                raise ConfigError(f"{where}: metric {rule.metric} has no value over all "
                                  "keywords; pass --target-keyword or set target_keyword")
            continue
        if rule.keyword not in keywords:
            raise ConfigError(f"{where}: keyword {rule.keyword!r} is not a keyword of both "
                              f"models (common keywords: {', '.join(keywords)})")


# Decision.


def lookup(results: dict[str, Any], metric: str, scenario: str,
           keyword: str | None) -> dict[str, Any]:
    """Return ``baseline``, ``candidate``, ``delta`` and ``delta_ci`` of one metric."""
    section, name = metric.split(".", 1)
    if section == "stream":
        numbers = (results["streaming"][ALL] if scenario == ALL
                   else results["streaming"]["scenarios"][scenario])
        difference = numbers["difference"]
        entry = difference["overall"] if keyword is None else difference["per_keyword"][keyword]
        return dict(entry[name])
    if section == "clips":
        numbers = results["clips"][ALL] if scenario == ALL else results["clips"]["sets"][scenario]
        difference = numbers.get("difference")
        if difference is None:
            return {"baseline": None, "candidate": None, "delta": None, "delta_ci": None}
        entry = difference if keyword is None else difference["per_keyword"][keyword]
        return dict(entry[name])
    if section == "latency":
        key = name.removesuffix("_ms")
        values = {role: results["latency_ms"][role][key] for role in ("baseline", "candidate")}
    else:
        values = {role: results["models"][role][name] for role in ("baseline", "candidate")}
    base, cand = values["baseline"], values["candidate"]
    delta = None if base is None or cand is None else cand - base
    return {"baseline": base, "candidate": cand, "delta": delta, "delta_ci": None}


def judge(kind: str, limit: float, measured: dict[str, Any]) -> tuple[str, str]:
    """Return the verdict (pass, fail or not measured) of one check and why."""
    delta, interval, candidate = measured["delta"], measured["delta_ci"], measured["candidate"]
    if kind in ("max_value", "min_value"):
        if candidate is None:
            return "fail", "the candidate's value is not measured"
        passed = candidate <= limit if kind == "max_value" else candidate >= limit
        sign = "<=" if kind == "max_value" else ">="
        return ("pass" if passed else "fail"), f"candidate {candidate:g} {sign} {limit:g}"
    if kind == "min_increase":
        if delta is None:
            return "fail", "no improvement can be shown: the metric is not measured"
        passed = delta >= limit and delta > 0
        return ("pass" if passed else "fail"), f"increase {delta:+g}, needs >= {limit:g} and > 0"
    if delta is None:
        return "not measured", "no data in this scenario for this metric"
    if kind == "max_decrease":
        decrease = 0.0 - delta
        return ("pass" if decrease <= limit else "fail"), (
            f"decrease {decrease:+g}, at most {limit:g}")
    if kind == "max_increase":
        return ("pass" if delta <= limit else "fail"), f"increase {delta:+g}, at most {limit:g}"
    if interval is None:
        return "not measured", f"change {delta:+g} without a confidence interval"
    passed = interval[1] >= -limit
    return ("pass" if passed else "fail"), (
        f"change {delta:+g}, interval [{interval[0]:+g}, {interval[1]:+g}]; fails when the "
        f"upper bound is below {-limit:g}")


def expand_keywords(rule: Rule, keywords: list[str], target: str | None) -> list[str | None]:
    """Return the keywords one rule checks (None: the metric over all common keywords)."""
    if rule.keyword is None:
        return [None]
    if rule.keyword == "target":
        return [target]
    if rule.keyword == "others":
        return [k for k in keywords if k != target]
    if rule.keyword == "each":
        return list(keywords)
    return [rule.keyword]


def decide(results: dict[str, Any], policy: Policy, target: str | None) -> dict[str, Any]:
    """Apply the built-in rule and every policy rule; return the decision and each verdict."""
    keywords = results["labels"]["common_keywords"]
    baseline_sha = results["models"]["baseline"]["sha256"]
    candidate_sha = results["models"]["candidate"]["sha256"]
    same = baseline_sha == candidate_sha
    verdicts = [{
        "name": "candidate differs from baseline",
        "kind": "built-in",
        "metric": "model.sha256",
        "keyword": None,
        "scenario": None,
        "limit": None,
        "verdict": "fail" if same else "pass",
        "checks": [{"keyword": None, "baseline": baseline_sha, "candidate": candidate_sha,
                    "delta": None, "delta_ci": None, "verdict": "fail" if same else "pass",
                    "reason": "the same model file" if same else "different model files"}],
    }]
    for rule in policy.rules:
        checks = []
        for keyword in expand_keywords(rule, keywords, target):
            measured = lookup(results, rule.metric, rule.scenario, keyword)
            verdict, reason = judge(rule.kind, rule.limit, measured)
            checks.append({"keyword": keyword, **measured, "verdict": verdict,
                           "reason": reason})
        failed = any(check["verdict"] == "fail" for check in checks)
        verdicts.append({**rule.to_dict(), "verdict": "fail" if failed else "pass",
                         "checks": checks})
    promote = all(entry["verdict"] == "pass" for entry in verdicts)
    return {"decision": "promote" if promote else "reject", "rules": verdicts}
