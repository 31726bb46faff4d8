"""The Grafana dashboards, their provisioning and the Prometheus files, checked without a
server: the committed JSON is the generator's output, the schema is current, every panel uses
the datasource variable, and every metric an expression names is one the farm serves.
(tests/integration/test_observability.py runs them against a real Prometheus.)"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.metrics import EXPORTER, INGEST
from dashboards import generate

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "dashboards"
PROMETHEUS = ROOT / "deploy" / "prometheus"
GRAFANA = ROOT / "deploy" / "grafana" / "provisioning"


def panels(model: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in model["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_expressions(model: dict[str, Any]) -> list[str]:
    """Every PromQL expression of a dashboard: panel targets and query variables."""
    found = [t["expr"] for p in panels(model) for t in p.get("targets", []) if "expr" in t]
    for variable in model["templating"]["list"]:
        if variable["type"] == "query":
            found.append(variable["query"])
    return found


def rule_expressions() -> list[str]:
    rules = yaml.safe_load((PROMETHEUS / "rules" / "tinyfarm.rules.yml").read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


#: Every series name the farm serves (histogram series included) and Prometheus's own `up`.
SERVED = {"up"}
for _spec in [*EXPORTER.values(), *INGEST.values()]:
    SERVED.add(_spec.name)
    if _spec.type == "histogram":
        SERVED.update(f"{_spec.name}{suffix}" for suffix in ("_bucket", "_count", "_sum"))
_METRIC = re.compile(r"\b(farm_[a-z0-9_]+|up)\b(?!\s*\()")


@pytest.mark.parametrize("name", list(generate.DASHBOARDS))
def test_the_committed_json_is_what_the_generator_writes(name: str) -> None:
    committed = (DASHBOARDS / f"{name}.json").read_text()
    assert committed == generate.render(name), (
        f"dashboards/{name}.json is out of date: run python -m dashboards.generate"
    )


@pytest.mark.parametrize("name", list(generate.DASHBOARDS))
def test_dashboards_use_the_current_schema_and_the_datasource_variable(name: str) -> None:
    model = json.loads((DASHBOARDS / f"{name}.json").read_text())
    assert model["schemaVersion"] >= 41  # Grafana 12
    assert model["uid"] == f"tinyfarm-{name}" and "tinyfarm" in model["tags"]
    variables = {v["name"]: v for v in model["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert {"board"} <= set(variables)
    if name != "fleet":
        assert {"benchmark"} <= set(variables)
    ids = [p["id"] for p in panels(model)]
    assert len(ids) == len(set(ids))
    for panel in panels(model):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            assert target["refId"]
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"]["uid"] == "${datasource}"


def test_the_benchmarks_dashboard_repeats_a_row_per_benchmark() -> None:
    model = json.loads((DASHBOARDS / "benchmarks.json").read_text())
    rows = [p for p in model["panels"] if p["type"] == "row"]
    assert rows[0]["repeat"] == "benchmark"


def test_the_board_dashboard_has_the_latency_heatmap() -> None:
    model = json.loads((DASHBOARDS / "board.json").read_text())
    heatmaps = [p for p in panels(model) if p["type"] == "heatmap"]
    assert len(heatmaps) == 1
    target = heatmaps[0]["targets"][0]
    assert target["format"] == "heatmap"
    assert "farm_inference_latency_seconds_bucket" in target["expr"]


def test_every_metric_an_expression_names_is_served() -> None:
    expressions = [e for n in generate.DASHBOARDS for e in dashboard_expressions(
        json.loads((DASHBOARDS / f"{n}.json").read_text())
    )] + rule_expressions()  # fmt: skip
    assert len(expressions) > 60
    for expr in expressions:
        names = set(_METRIC.findall(expr))
        assert names, expr
        assert names <= SERVED, (expr, names - SERVED)


def test_every_alert_the_issue_asks_for_is_there() -> None:
    rules = yaml.safe_load((PROMETHEUS / "rules" / "tinyfarm.rules.yml").read_text())
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    assert {
        "FarmAgentDown",
        "FarmBoardOffline",
        "FarmBoardHealthBad",
        "FarmRunFailureRate",
        "FarmQualityBelowTarget",
        "FarmLatencyRegression",
        "FarmIngestRejectsRising",
        "FarmSweepOverdue",
        "FarmNightlyRegression",
    } <= alerts
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert rule["annotations"]["summary"] and rule["labels"]["severity"]


def test_the_provisioning_points_grafana_at_prometheus_and_the_dashboards() -> None:
    datasources = yaml.safe_load((GRAFANA / "datasources" / "tinyfarm.yml").read_text())
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus" and source["url"].startswith("http")
    providers = yaml.safe_load((GRAFANA / "dashboards" / "tinyfarm.yml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    # deploy/docker-compose.yml mounts ../dashboards there.
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    for config in ("prometheus.yml", "prometheus.host.yml"):
        scrape = yaml.safe_load((PROMETHEUS / config).read_text())
        jobs = {job["job_name"] for job in scrape["scrape_configs"]}
        assert jobs == {"farm-exporter", "farm-ingest"}
        assert scrape["rule_files"] == ["rules/tinyfarm.rules.yml"]


def test_generate_check_reports_a_stale_file(tmp_path: Path) -> None:
    assert generate.main(["--out", str(tmp_path)]) == 0
    assert generate.main(["--check", "--out", str(tmp_path)]) == 0
    (tmp_path / "board.json").write_text("{}\n")
    assert generate.main(["--check", "--out", str(tmp_path)]) == 1
