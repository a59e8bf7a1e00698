"""Alerts: rules on metrics, recorded once in the tick store's `alerts` table, delivered to a log,
a JSON-lines file and a webhook (Slack-compatible payload).

Rules live in a YAML file:

    rules:
      - name: big_gap                # unique; names the alert everywhere
        dataset: daily_metrics       # daily_metrics, intraday_metrics or stream_stalls
        metric: gap                  # a numeric column of that dataset
        op: "abs>"                   # >, >=, <, <=, abs> (absolute value above)
        threshold: 0.03
        symbols: [AAPL, NVDA]        # or "*" / left out: every symbol
        cooldown: 1d                 # 90s, 30m, 2h, 1d; 0 (default) fires on every matching row
      - name: window_pop_high
        dataset: intraday_metrics
        metric: probability_of_profit
        op: ">="
        threshold: 0.95
        cooldown: 30m

Semantics. A row of the dataset fires a rule when `metric op threshold` holds (null never fires).
Its `event_ts` is the row's `ts` (a window's start, or a session's midnight New York), so
cooldowns run on market time and a replay or backfill behaves as the live run did: a candidate
is suppressed when an alert of the same rule and symbol exists, or fires in the same batch,
less than `cooldown` before or after it. Each alert is recorded once, keyed by (rule, symbol,
event_ts), under a transaction-scoped advisory lock, so concurrent or repeated evaluations of the
same rows record and deliver nothing twice. Delivery happens after the record commits; a channel
that fails (the webhook is down) is retried by `Alerter.redeliver` up to `max_attempts` times.
Recording is exactly once; delivery is at least once only if the process dies between a send and
its bookkeeping (a window of one UPDATE).
"""

from __future__ import annotations

import json
import logging
import math
import re
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.compute as pc

from market_platform import calendar, schemas
from market_platform.errors import InvalidInputError
from market_platform.storage.timescale import TickStore

log = logging.getLogger("market_platform.alerts")

DATASETS: dict[str, pa.Schema] = {
    "daily_metrics": schemas.DAILY_METRICS,
    "intraday_metrics": schemas.INTRADAY_METRICS,
    # Silent stalls of the live stream found by feed health (market_platform.snapshots.feed_health).
    "stream_stalls": schemas.STREAM_STALLS,
}
OPS = {
    ">": pc.greater,
    ">=": pc.greater_equal,
    "<": pc.less,
    "<=": pc.less_equal,
    "abs>": lambda values, threshold: pc.greater(pc.abs(values), threshold),
}
_ALERTS_LOCK = 0x6D70_616C_6572_7473  # "mpalerts": serialises evaluations across processes
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def parse_duration(value: str | int | float | None, *, what: str = "duration") -> timedelta:
    """`90s`, `30m`, `2h`, `1d` or a number of seconds (0 or None: no cooldown)."""
    if value is None:
        return timedelta(0)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return timedelta(seconds=value)
    match = _DURATION.match(str(value))
    if not match:
        raise InvalidInputError(f"{what} {value!r}: expected a duration like 90s, 30m, 2h or 1d")
    return timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})


@dataclass(frozen=True)
class Rule:
    """One alert rule (see the module docstring)."""

    name: str
    dataset: str
    metric: str
    op: str
    threshold: float
    symbols: tuple[str, ...] | None = None  # None: every symbol
    cooldown: timedelta = timedelta(0)

    def __post_init__(self) -> None:
        where = f"alert rule {self.name!r}"
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise InvalidInputError(f"alert rule name {self.name!r}: expected letters, digits, '_', '.', '-'")
        if self.dataset not in DATASETS:
            raise InvalidInputError(f"{where}: dataset {self.dataset!r}, expected one of {', '.join(DATASETS)}")
        schema = DATASETS[self.dataset]
        numeric = [f.name for f in schema if pa.types.is_floating(f.type) or pa.types.is_integer(f.type)]
        if self.metric not in numeric:
            raise InvalidInputError(f"{where}: metric {self.metric!r} is not a numeric column of {self.dataset}: "
                                    f"expected one of {', '.join(numeric)}")
        if self.op not in OPS:
            raise InvalidInputError(f"{where}: op {self.op!r}, expected one of {', '.join(OPS)}")
        if not isinstance(self.threshold, (int, float)) or isinstance(self.threshold, bool) or not math.isfinite(self.threshold):
            raise InvalidInputError(f"{where}: threshold {self.threshold!r}, expected a finite number")
        if self.cooldown < timedelta(0):
            raise InvalidInputError(f"{where}: cooldown {self.cooldown}, expected >= 0")

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, "dataset": self.dataset, "metric": self.metric, "op": self.op,
                "threshold": self.threshold, "symbols": list(self.symbols) if self.symbols else "*",
                "cooldown_seconds": self.cooldown.total_seconds()}


def rules_from_dict(document: Any, *, origin: str = "alert rules") -> list[Rule]:
    if not isinstance(document, dict) or not isinstance(document.get("rules"), list):
        raise InvalidInputError(f"{origin}: expected a mapping with a list under 'rules'")
    rules, seen = [], set()
    known = {"name", "dataset", "metric", "op", "threshold", "symbols", "cooldown"}
    for index, item in enumerate(document["rules"]):
        if not isinstance(item, dict) or "name" not in item:
            raise InvalidInputError(f"{origin}: rule #{index + 1} is not a mapping with a name")
        unknown = sorted(set(item) - known)
        if unknown:
            raise InvalidInputError(f"{origin}: rule {item['name']!r} has unknown keys {unknown}: expected {sorted(known)}")
        missing = sorted({"dataset", "metric", "op", "threshold"} - set(item))
        if missing:
            raise InvalidInputError(f"{origin}: rule {item['name']!r} lacks {missing}")
        symbols = item.get("symbols", "*")
        if symbols in ("*", None):
            symbols = None
        elif isinstance(symbols, str):
            symbols = (symbols,)
        elif isinstance(symbols, list) and all(isinstance(s, str) for s in symbols):
            symbols = tuple(symbols)
        else:
            raise InvalidInputError(f"{origin}: rule {item['name']!r} symbols {symbols!r}: expected '*' or a list of symbols")
        rule = Rule(name=item["name"], dataset=item["dataset"], metric=item["metric"], op=str(item["op"]),
                    threshold=item["threshold"], symbols=symbols,
                    cooldown=parse_duration(item.get("cooldown"), what=f"rule {item['name']!r} cooldown"))
        if rule.name in seen:
            raise InvalidInputError(f"{origin}: rule name {rule.name!r} is used twice")
        seen.add(rule.name)
        rules.append(rule)
    return rules


def load_rules(path: str | Path) -> list[Rule]:
    """The rules of a YAML file; InvalidInputError names the file and the bad rule or key."""
    import yaml

    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidInputError(f"alert rules file {str(path)!r} does not exist") from None
    except yaml.YAMLError as exc:
        raise InvalidInputError(f"alert rules file {str(path)!r} is not valid YAML: {str(exc).splitlines()[0]}") from None
    return rules_from_dict(document, origin=f"alert rules file {str(path)!r}")


def candidates(rule: Rule, table: pa.Table) -> pa.Table:
    """The rows of `table` (a `rule.dataset` table) that fire `rule`, vectorised, sorted by symbol and ts."""
    values = table[rule.metric]
    if pa.types.is_integer(values.type):
        values = values.cast(pa.float64())
    mask = pc.fill_null(OPS[rule.op](values, rule.threshold), False)
    if rule.symbols is not None:
        mask = pc.and_(mask, pc.is_in(table["symbol"], pa.array(rule.symbols)))
    hits = table.filter(mask)
    return hits.take(pc.sort_indices(hits, [("symbol", "ascending"), ("ts", "ascending")]))


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclass(frozen=True)
class Alert:
    """An alert as recorded."""

    id: int
    rule: str
    symbol: str
    event_ts: datetime
    metric: str
    value: float
    op: str
    threshold: float
    message: str
    row_values: dict[str, Any]

    def payload(self) -> dict[str, Any]:
        """A Slack-compatible webhook body: `text` for notifications, `blocks` for the layout."""
        fields = ", ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in self.row_values.items() if k not in ("symbol", "ts") and v is not None)
        return {
            "text": self.message,
            "blocks": [
                {"type": "section", "text": {"type": "mrkdwn", "text": f"*{self.rule}* · *{self.symbol}*\n{self.message}"}},
                {"type": "context", "elements": [{"type": "mrkdwn", "text": fields[:2900] or "-"}]},
            ],
        }

    def record(self) -> dict[str, Any]:
        return {"id": self.id, "rule": self.rule, "symbol": self.symbol, "event_ts": self.event_ts.isoformat(),
                "metric": self.metric, "value": self.value, "op": self.op, "threshold": self.threshold,
                "message": self.message, "values": self.row_values}


def _message(rule: Rule, symbol: str, event_ts: datetime, value: float) -> str:
    local = event_ts.astimezone(calendar.NEW_YORK)
    when = f"{local:%Y-%m-%d}" if rule.dataset == "daily_metrics" else f"{local:%Y-%m-%d %H:%M} New York"
    return f"{symbol}: {rule.metric} = {value:.6g} ({rule.op} {rule.threshold:g}) on {when} [rule {rule.name}]"


@dataclass
class Report:
    """What one evaluation did."""

    candidates: int = 0
    fired: list[Alert] = field(default_factory=list)
    suppressed_by_cooldown: int = 0
    already_recorded: int = 0
    delivered: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        return (f"{self.candidates} candidates, {len(self.fired)} alerts fired, {self.already_recorded} already recorded, "
                f"{self.suppressed_by_cooldown} in cooldown; delivered {self.delivered or {}}"
                + (f", failed {self.failed}" if self.failed else ""))


class Alerter:
    """Evaluates rules over metric tables, records alerts in `store`, and delivers them.

    `json_file`: JSON lines appended, one alert a line. `webhook_url`: POSTed a Slack-compatible
    JSON body; treated as a secret (logs and errors show its host only).
    """

    def __init__(
        self,
        store: TickStore,
        rules: Sequence[Rule],
        *,
        json_file: str | Path | None = None,
        webhook_url: str | None = None,
        webhook_timeout: float = 5.0,
        max_attempts: int = 5,
        logger: logging.Logger | None = None,
    ) -> None:
        self.store = store
        self.rules = list(rules)
        self.json_file = Path(json_file) if json_file else None
        if webhook_url and urlsplit(webhook_url).scheme not in ("http", "https"):
            raise InvalidInputError(f"alert webhook URL for host {urlsplit(webhook_url).hostname!r}: expected http(s)://")
        self.webhook_url = webhook_url or None
        self.webhook_timeout = webhook_timeout
        self.max_attempts = max_attempts
        self.log = logger or log

    @property
    def channels(self) -> list[str]:
        return ["log"] + (["json_file"] if self.json_file else []) + (["webhook"] if self.webhook_url else [])

    # -- evaluation ---------------------------------------------------------------------------

    def evaluate(self, dataset: str, table: pa.Table) -> Report:
        """Apply every rule on `dataset` to `table`; record and deliver what fires."""
        report = Report()
        for rule in self.rules:
            if rule.dataset != dataset:
                continue
            hits = candidates(rule, table)
            report.candidates += hits.num_rows
            if hits.num_rows:
                report.fired += self._record(rule, hits, report)
        self._deliver(report.fired, report)
        return report

    def _record(self, rule: Rule, hits: pa.Table, report: Report) -> list[Alert]:
        symbols = hits["symbol"].to_pylist()
        stamps = hits["ts"].to_pylist()
        values = hits[rule.metric].to_pylist()
        rows = hits.to_pylist()
        inserted: list[Alert] = []
        with self.store.connect() as conn:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_ALERTS_LOCK,))
                existing: dict[str, list[datetime]] = {}
                for symbol, ts in conn.execute(
                    "SELECT symbol, event_ts FROM alerts WHERE rule = %s AND symbol = ANY(%s) "
                    "AND event_ts > %s AND event_ts < %s",
                    (rule.name, sorted(set(symbols)), min(stamps) - rule.cooldown, max(stamps) + rule.cooldown),
                ).fetchall():
                    existing.setdefault(symbol, []).append(ts)
                accepted = []
                for i, (symbol, ts) in enumerate(zip(symbols, stamps)):
                    near = existing.setdefault(symbol, [])
                    if ts in near:
                        report.already_recorded += 1
                    elif any(abs(ts - other) < rule.cooldown for other in near):
                        report.suppressed_by_cooldown += 1
                    else:
                        near.append(ts)
                        accepted.append(i)
                for i in accepted:
                    row = {k: _jsonable(v) for k, v in rows[i].items()}
                    message = _message(rule, symbols[i], stamps[i], float(values[i]))
                    found = conn.execute(
                        "INSERT INTO alerts (rule, symbol, event_ts, dataset, metric, value, op, threshold, rule_spec, "
                        "row_values, message) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s::jsonb, %s) "
                        "ON CONFLICT (rule, symbol, event_ts) DO NOTHING RETURNING id",
                        (rule.name, symbols[i], stamps[i], rule.dataset, rule.metric, float(values[i]), rule.op,
                         float(rule.threshold), json.dumps(rule.spec()), json.dumps(row), message),
                    ).fetchone()
                    if found is None:
                        report.already_recorded += 1
                        continue
                    inserted.append(Alert(found[0], rule.name, symbols[i], stamps[i], rule.metric, float(values[i]),
                                          rule.op, float(rule.threshold), message, row))
        return inserted

    # -- delivery -----------------------------------------------------------------------------

    def _deliver(self, alerts: list[Alert], report: Report, channels: dict[int, list[str]] | None = None) -> None:
        outcomes = []
        for alert in alerts:
            done, error = [], None
            for channel in (channels or {}).get(alert.id, self.channels):
                try:
                    self._send(channel, alert)
                except OSError as exc:  # URLError, HTTPError, disk errors
                    error = f"{channel}: {self._describe(exc)}"
                    report.failed[channel] = report.failed.get(channel, 0) + 1
                    self.log.warning(f"alert {alert.id} not delivered to {error}")
                    continue
                done.append(channel)
                report.delivered[channel] = report.delivered.get(channel, 0) + 1
            outcomes.append((done, error, alert.id))
        if outcomes:
            with self.store.connect() as conn, conn.transaction():
                conn.cursor().executemany(
                    "UPDATE alerts SET delivered = delivered || (SELECT coalesce(jsonb_object_agg(c, now()), "
                    "'{}'::jsonb) FROM unnest(%s::text[]) AS c), delivery_attempts = delivery_attempts + 1, "
                    "last_error = %s WHERE id = %s",
                    outcomes,
                )

    def _send(self, channel: str, alert: Alert) -> None:
        if channel == "log":
            self.log.warning(f"ALERT {alert.message}")
        elif channel == "json_file":
            self.json_file.parent.mkdir(parents=True, exist_ok=True)
            with self.json_file.open("a", encoding="utf-8") as out:
                out.write(json.dumps(alert.record(), sort_keys=True) + "\n")
        elif channel == "webhook":
            request = urllib.request.Request(
                self.webhook_url, data=json.dumps(alert.payload()).encode("utf-8"),
                headers={"Content-Type": "application/json"}, method="POST")
            with urllib.request.urlopen(request, timeout=self.webhook_timeout) as response:
                response.read()
        else:
            raise InvalidInputError(f"unknown alert channel {channel!r}")

    def _describe(self, exc: OSError) -> str:
        # Never the webhook URL: its path is the secret.
        host = urlsplit(self.webhook_url).hostname if self.webhook_url else None
        if isinstance(exc, urllib.error.HTTPError):
            return f"HTTP {exc.code} from {host}"
        if isinstance(exc, urllib.error.URLError):
            return f"cannot reach {host}: {type(exc.reason).__name__}"
        return f"{type(exc).__name__}: {exc.strerror or exc}"

    def redeliver(self) -> Report:
        """Retry the channels (of those configured now) that have not taken an alert yet."""
        report = Report()
        with self.store.connect() as conn:
            rows = conn.execute(
                "SELECT id, rule, symbol, event_ts, metric, value, op, threshold, message, row_values, delivered "
                "FROM alerts WHERE delivery_attempts < %s AND NOT (delivered ?& %s::text[]) ORDER BY id",
                (self.max_attempts, self.channels),
            ).fetchall()
            conn.rollback()
        alerts, channels = [], {}
        for row in rows:
            alert = Alert(*row[:10])
            alerts.append(alert)
            channels[alert.id] = [c for c in self.channels if c not in row[10]]
        self._deliver(alerts, report, channels)
        report.fired = alerts
        return report


def recorded(store: TickStore, *, rule: str | None = None) -> pa.Table:
    """The alerts table (of one rule, when given) as Arrow, oldest first."""
    from psycopg import sql

    where = sql.SQL(" WHERE rule = %s") if rule else sql.SQL("")
    return store.read_arrow(sql.SQL("SELECT * FROM alerts{} ORDER BY id").format(where), (rule,) if rule else None)


def utc_now() -> datetime:
    return datetime.now(timezone.utc)
