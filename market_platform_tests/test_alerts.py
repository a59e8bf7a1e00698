"""Alerts: rules, cooldown, exactly-once recording and delivery (log, JSON file, a real local webhook
server), retries, and the sensor."""

from __future__ import annotations

import json
import logging
import threading
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


import dagster as dg
import pyarrow as pa
import pytest

from market_platform import schemas
from market_platform.analytics import alerts, metrics
from market_platform.defs.metrics.sensors import alerts_sensor, closed_windows
from market_platform.defs.resources import AlertsResource, LakeResource, TickStoreResource
from market_platform.errors import InvalidInputError
from market_platform.storage.lake import Lake

T0 = datetime(2024, 11, 26, 15, 0, tzinfo=timezone.utc)


class Webhook:
    """A Slack-like webhook on 127.0.0.1:<free port> that records what it is sent."""

    def __init__(self) -> None:
        self.received: list[dict] = []
        self.status = 200
        received, webhook = self.received, self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if webhook.status == 200:
                    received.append({"path": self.path, "body": json.loads(body),
                                     "content_type": self.headers["Content-Type"]})
                self.send_response(webhook.status)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/services/T000/B000/secret-token"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook():
    hook = Webhook()
    yield hook
    hook.close()


def _windows(rows: list[tuple[str, int, float]]) -> pa.Table:
    """intraday_metrics rows: (symbol, minutes after T0, probability_of_profit)."""
    n = len(rows)
    return schemas.conform(pa.table({
        "symbol": [r[0] for r in rows], "ts": [T0 + timedelta(minutes=r[1]) for r in rows],
        "phase": ["regular"] * n, "open": [10.0] * n, "high": [10.0] * n, "low": [10.0] * n, "close": [10.0] * n,
        "pct_change": [0.0] * n, "vwap": [10.0] * n, "volume": [100.0] * n, "trade_count": [1] * n,
        "observations": [5] * n, "volatility": [0.0] * n, "probability_of_profit": [r[2] for r in rows],
    }), schemas.INTRADAY_METRICS)


RULES = {"rules": [
    {"name": "pop_high", "dataset": "intraday_metrics", "metric": "probability_of_profit", "op": ">=",
     "threshold": 0.9, "symbols": ["AAPL", "NVDA"], "cooldown": "30m"},
    {"name": "big_move", "dataset": "daily_metrics", "metric": "pct_change", "op": "abs>", "threshold": 0.01},
]}


def test_rules_are_validated(tmp_path):
    path = tmp_path / "alerts.yaml"
    path.write_text("rules:\n  - name: x\n    dataset: daily_metrics\n    metric: nope\n    op: '>'\n    threshold: 1\n")
    with pytest.raises(InvalidInputError, match="metric 'nope' is not a numeric column of daily_metrics"):
        alerts.load_rules(path)
    with pytest.raises(InvalidInputError, match="op '=>'"):
        alerts.rules_from_dict({"rules": [{**RULES["rules"][0], "op": "=>"}]})
    with pytest.raises(InvalidInputError, match="cooldown '5 parsecs'"):
        alerts.rules_from_dict({"rules": [{**RULES["rules"][0], "cooldown": "5 parsecs"}]})
    with pytest.raises(InvalidInputError, match="used twice"):
        alerts.rules_from_dict({"rules": [RULES["rules"][0], RULES["rules"][0]]})
    with pytest.raises(InvalidInputError, match="does not exist"):
        alerts.load_rules(tmp_path / "missing.yaml")
    assert [r.name for r in alerts.rules_from_dict(RULES)] == ["pop_high", "big_move"]
    assert alerts.parse_duration("1d") == timedelta(days=1) and alerts.parse_duration(90) == timedelta(seconds=90)


def test_cooldown_and_exactly_once(tick_store, tmp_path, webhook, caplog):
    alerter = alerts.Alerter(tick_store, alerts.rules_from_dict(RULES), json_file=tmp_path / "alerts.jsonl",
                             webhook_url=webhook.url)
    table = _windows([
        ("AAPL", 0, 0.95),   # fires
        ("AAPL", 5, 1.0),    # within 30m of the first: cooldown
        ("AAPL", 35, 0.5),   # below threshold
        ("AAPL", 40, 0.9),   # 40 min after the first: fires
        ("NVDA", 5, 0.92),   # another symbol: fires
        ("TSLA", 5, 1.0),    # not in the rule's symbols
    ])
    with caplog.at_level(logging.WARNING, logger="market_platform.alerts"):
        first = alerter.evaluate("intraday_metrics", table)
    assert [(a.symbol, a.event_ts) for a in first.fired] == [
        ("AAPL", T0), ("AAPL", T0 + timedelta(minutes=40)), ("NVDA", T0 + timedelta(minutes=5))]
    assert first.suppressed_by_cooldown == 1 and first.candidates == 4
    assert first.delivered == {"log": 3, "json_file": 3, "webhook": 3}

    # The same rows again, and again with a later window inside the cooldown: nothing new anywhere.
    again = alerter.evaluate("intraday_metrics", table)
    later = alerter.evaluate("intraday_metrics", _windows([("AAPL", 60, 0.99)]))
    assert again.fired == [] and again.already_recorded == 3 and again.suppressed_by_cooldown == 1
    assert later.fired == [] and later.suppressed_by_cooldown == 1

    recorded = alerts.recorded(tick_store)
    assert recorded.num_rows == 3
    assert recorded["rule"].to_pylist() == ["pop_high"] * 3
    assert json.loads(recorded["rule_spec"][0].as_py())["cooldown_seconds"] == 1800
    assert json.loads(recorded["row_values"][0].as_py())["probability_of_profit"] == 0.95
    assert all(set(json.loads(d)) == {"log", "json_file", "webhook"} for d in recorded["delivered"].to_pylist())

    lines = [json.loads(line) for line in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert [line["symbol"] for line in lines] == ["AAPL", "AAPL", "NVDA"]
    assert len(webhook.received) == 3
    body = webhook.received[0]["body"]
    assert body["text"].startswith("AAPL: probability_of_profit = 0.95") and body["blocks"][0]["type"] == "section"
    assert webhook.received[0]["content_type"] == "application/json"
    assert sum("ALERT AAPL" in r.message for r in caplog.records) == 2


def test_failed_webhook_is_retried_and_never_logged_with_its_secret(tick_store, webhook, caplog):
    alerter = alerts.Alerter(tick_store, alerts.rules_from_dict(RULES), webhook_url=webhook.url)
    webhook.status = 500
    with caplog.at_level(logging.WARNING):
        report = alerter.evaluate("intraday_metrics", _windows([("AAPL", 0, 0.95)]))
    assert report.failed == {"webhook": 1} and report.delivered == {"log": 1}
    assert "secret-token" not in caplog.text and "HTTP 500 from 127.0.0.1" in caplog.text
    assert webhook.received == []

    webhook.status = 200
    retried = alerter.redeliver()
    assert retried.delivered == {"webhook": 1}
    assert len(webhook.received) == 1
    assert alerter.redeliver().delivered == {}  # delivered once, not again
    row = alerts.recorded(tick_store).to_pylist()[0]
    assert set(json.loads(row["delivered"])) == {"log", "webhook"} and row["delivery_attempts"] == 2


def test_daily_rule_on_daily_metrics(tick_store, metrics_lake):
    table = metrics.daily_metrics(metrics_lake, "2024-11-29")
    alerter = alerts.Alerter(tick_store, alerts.rules_from_dict(RULES))
    report = alerter.evaluate("daily_metrics", table)
    moved = [r["symbol"] for r in table.to_pylist() if r["pct_change"] is not None and abs(r["pct_change"]) > 0.01]
    assert sorted(a.symbol for a in report.fired) == sorted(moved) and moved
    assert "on 2024-11-29" in report.fired[0].message


def test_closed_windows():
    table = _windows([("AAPL", 0, 1.0), ("AAPL", 5, 1.0), ("AAPL", 10, 1.0)])
    now = T0 + timedelta(minutes=11, seconds=30)  # the 10-minute window is still open
    assert [t.minute for t in closed_windows(table, now, None)["ts"].to_pylist()] == [0, 5]
    assert [t.minute for t in closed_windows(table, now, T0)["ts"].to_pylist()] == [5]


def test_alerts_sensor_on_new_materializations(tmp_path, metrics_lake, db_url):
    rules = tmp_path / "alerts.yaml"
    import yaml

    rules.write_text(yaml.safe_dump(RULES))
    lake = Lake(tmp_path / "lake")
    lake.write_partition("daily_metrics", "2024-11-29", metrics.daily_metrics(metrics_lake, "2024-11-29"))
    resources = {"lake": LakeResource(url=str(lake.url)), "tick_store": TickStoreResource(url=db_url),
                 "alerts": AlertsResource(rules_file=str(rules), json_file=str(tmp_path / "out.jsonl"))}
    with dg.instance_for_test() as instance:
        no_rules = alerts_sensor(dg.build_sensor_context(instance=instance, resources={
            **resources, "alerts": AlertsResource(rules_file=str(tmp_path / "none.yaml"))}))
        assert "no alert rules" in no_rules.skip_message
        instance.report_runless_asset_event(dg.AssetMaterialization("daily_metrics", partition="2024-11-29"))
        context = dg.build_sensor_context(instance=instance, resources=resources)
        first = alerts_sensor(context)
        assert "daily_metrics/2024-11-29" in first.skip_message and "alerts fired" in first.skip_message
        fired = len((tmp_path / "out.jsonl").read_text().splitlines())
        assert fired > 0
        second = alerts_sensor(dg.build_sensor_context(instance=instance, resources=resources, cursor=context.cursor))
        assert second.skip_message == "nothing new to evaluate"
        assert len((tmp_path / "out.jsonl").read_text().splitlines()) == fired



def test_live_windows_are_evaluated_during_the_session(tmp_path, db_url, tick_store, sim):
    from market_platform.defs.metrics.sensors import evaluate_alerts

    tick_store.write_bars(sim.minute_bars("2024-11-26"))
    rules = alerts.rules_from_dict({"rules": [
        {"name": "pop", "dataset": "intraday_metrics", "metric": "probability_of_profit", "op": ">=",
         "threshold": 1.0, "symbols": ["AAPL", "SPY"], "cooldown": "15m"}]})
    alerter = alerts.Alerter(tick_store, rules)
    now = datetime(2024, 11, 26, 15, 31, 30, tzinfo=timezone.utc)  # 10:31:30 New York
    with dg.instance_for_test() as instance:
        cursor, reports = evaluate_alerts(instance, None, alerter, LakeResource(url=str(tmp_path / "lake")), now)
        fired = reports["live"].fired
        assert fired and all(a.event_ts <= now - timedelta(minutes=6) for a in fired)
        assert json.loads(cursor)["live_window"] == "2024-11-26T15:25:00+00:00"
        live = metrics.live_intraday_metrics(tick_store, "2024-11-26", until=now)
        expected = {(r["symbol"], r["ts"]) for r in closed_windows(live, now, None).to_pylist()
                    if r["symbol"] in ("AAPL", "SPY") and r["probability_of_profit"] >= 1.0}
        assert {(a.symbol, a.event_ts) for a in fired} <= expected
        again, more = evaluate_alerts(instance, cursor, alerter, LakeResource(url=str(tmp_path / "lake")), now)
        assert "live" not in more and again == cursor
