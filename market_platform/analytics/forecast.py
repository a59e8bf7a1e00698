"""Return features per (symbol, 5-minute window) and a walk-forward forecast of the next window's return.

Features (`schemas.RETURN_FEATURES`), computed by DuckDB from the session's `intraday_metrics`;
every one is known at the end of its window, and none looks past the session:

- `ret_lag0`, `ret_lag1`, `ret_lag2`: the log return ln(1 + pct_change) of this window and of the
  symbol's two previous windows with bars;
- `rolling_vol`: sample standard deviation of the last 12 windows' log returns (this one
  included; null with fewer than 3);
- `volume_z`: ln(1 + volume) against the mean and standard deviation of the 12 windows before
  (null with fewer than 3 of them, or no spread);
- `vwap_distance`: close / the session's VWAP up to this window's end - 1;
- `minutes_from_open`: minutes from the regular open to the window's start (negative pre-market);
- `next_return` (the label): the log return of the symbol's next window with bars in the same
  session; null for its last window.

Forecast (`schemas.RETURN_FORECAST`): for session D a model is fitted on the feature rows of up to
`lookback` sessions strictly before D (regular-hours windows with every feature and the label
present) and predicts D's regular-hours windows. Labels never cross a session boundary, so no row
of the training set holds anything from D or later: the forecast is walk-forward, out of sample.
The model is scikit-learn's ridge regression on standardised features (deterministic, fast, and
hard to overfit on near-random returns). It is scored on D against the random-walk baseline
(predict 0): `r2_oos` = 1 - MSE(model) / MSE(zero) (Campbell-Thompson), positive when it beats
the baseline; also the MSE of predicting the training mean, and the hit rate of the sign.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from market_platform import calendar, schemas
from market_platform.analytics.metrics import INTRADAY_METRICS
from market_platform.errors import InvalidInputError, NotEnoughHistoryError, PartitionNotFoundError
from market_platform.storage.lake import Lake

RETURN_FEATURES = "return_features"
RETURN_FORECAST = "return_forecast"
FEATURES = ("ret_lag0", "ret_lag1", "ret_lag2", "rolling_vol", "volume_z", "vwap_distance", "minutes_from_open")
LABEL = "next_return"
DEFAULT_LOOKBACK = 10


_FEATURES_SQL = """
WITH m AS (
    SELECT symbol, CAST(ts AS TIMESTAMPTZ) AS ts, phase, ln(1 + pct_change) AS ret, close,
           ln(1 + volume) AS log_volume,
           sum(coalesce(vwap, close) * volume) OVER s / nullif(sum(volume) OVER s, 0) AS session_vwap
    FROM intraday_metrics
    WHERE date = $day
    WINDOW s AS (PARTITION BY symbol ORDER BY ts ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
)
SELECT symbol, ts, phase,
       ret AS ret_lag0,
       lag(ret, 1) OVER p AS ret_lag1,
       lag(ret, 2) OVER p AS ret_lag2,
       CASE WHEN count(ret) OVER last12 >= 3 THEN stddev_samp(ret) OVER last12 END AS rolling_vol,
       CASE WHEN count(log_volume) OVER before12 >= 3
            THEN (log_volume - avg(log_volume) OVER before12) / nullif(stddev_samp(log_volume) OVER before12, 0)
       END AS volume_z,
       close / session_vwap - 1 AS vwap_distance,
       date_diff('second', CAST($regular_open AS TIMESTAMPTZ), ts) / 60.0 AS minutes_from_open,
       lead(ret) OVER p AS next_return
FROM m
WINDOW p AS (PARTITION BY symbol ORDER BY ts),
       last12 AS (PARTITION BY symbol ORDER BY ts ROWS BETWEEN 11 PRECEDING AND CURRENT ROW),
       before12 AS (PARTITION BY symbol ORDER BY ts ROWS BETWEEN 12 PRECEDING AND 1 PRECEDING)
ORDER BY symbol, ts
"""


def return_features(lake: Lake, day: date | str) -> pa.Table:
    """schemas.RETURN_FEATURES rows of session `day`, from the lake's intraday_metrics."""
    day = calendar.to_date(day)
    if not lake.has_partition(INTRADAY_METRICS, day):
        raise PartitionNotFoundError(
            f"the lake has no intraday_metrics for {day.isoformat()}: materialize them for that session first"
        )
    params = {"day": day, "regular_open": calendar.session(day).regular_open}
    return schemas.conform(lake.query(_FEATURES_SQL, params), schemas.RETURN_FEATURES)


def training_sessions(lake: Lake, day: date | str, *, lookback: int = DEFAULT_LOOKBACK) -> list[date]:
    """The (up to) `lookback` sessions strictly before `day` whose return_features are in the lake."""
    day = calendar.to_date(day)
    if lookback < 1:
        raise InvalidInputError(f"lookback={lookback}: expected at least 1 session")
    stored = [date.fromisoformat(d) for d in lake.dates(RETURN_FEATURES)]
    return [d for d in stored if d < day][-lookback:]


def _model_rows(table: pa.Table, *, need_label: bool) -> pa.Table:
    """Regular-hours rows with every feature (and the label, when asked) present."""
    mask = pc.equal(table["phase"], "regular")
    for name in (*FEATURES, LABEL) if need_label else FEATURES:
        mask = pc.and_(mask, pc.is_valid(table[name]))
        if pa.types.is_floating(table.schema.field(name).type):
            mask = pc.and_(mask, pc.invert(pc.is_nan(table[name])))
    return table.filter(mask)


def _matrix(table: pa.Table) -> np.ndarray:
    return np.column_stack([table[name].to_numpy(zero_copy_only=False) for name in FEATURES]).astype(np.float64)


def training_set(lake: Lake, day: date | str, *, lookback: int = DEFAULT_LOOKBACK) -> tuple[np.ndarray, np.ndarray, list[date]]:
    """(X, y, sessions): the model's training inputs for session `day`, from the sessions before it only."""
    sessions = training_sessions(lake, day, lookback=lookback)
    if not sessions:
        return np.empty((0, len(FEATURES))), np.empty(0), []
    tables = [_model_rows(lake.read_partition(RETURN_FEATURES, d), need_label=True) for d in sessions]
    rows = pa.concat_tables(tables)
    return _matrix(rows), rows[LABEL].to_numpy(zero_copy_only=False).astype(np.float64), sessions


@dataclass(frozen=True)
class ForecastResult:
    """A session's predictions and how they scored out of sample."""

    predictions: pa.Table  # schemas.RETURN_FORECAST
    train_sessions: list[date]
    train_rows: int
    test_rows: int  # predicted rows whose next return is known
    mse_model: float | None
    mse_zero: float | None  # the random-walk baseline
    mse_train_mean: float | None
    r2_oos: float | None  # 1 - mse_model / mse_zero
    hit_rate: float | None  # share of test rows whose predicted sign is the realized one
    coefficients: dict[str, float]

    @property
    def beats_baseline(self) -> bool | None:
        return None if self.r2_oos is None else self.r2_oos > 0


def forecast(
    lake: Lake, day: date | str, *, lookback: int = DEFAULT_LOOKBACK, alpha: float = 1.0, min_train_rows: int = 100
) -> ForecastResult:
    """Fit on the sessions before `day` (see the module docstring), predict `day`, and score it.

    Raises NotEnoughHistoryError when fewer than `min_train_rows` training rows exist (the first
    sessions of a history: materialize return_features for earlier sessions first).
    """
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    day = calendar.to_date(day)
    X, y, sessions = training_set(lake, day, lookback=lookback)
    if len(y) < min_train_rows:
        raise NotEnoughHistoryError(
            f"return_forecast for {day.isoformat()}: {len(y)} training rows in {len(sessions)} earlier "
            f"sessions of return_features, expected at least {min_train_rows}: materialize return_features "
            "for earlier sessions first"
        )
    model = make_pipeline(StandardScaler(), Ridge(alpha=alpha))
    model.fit(X, y)
    test = _model_rows(lake.read_partition(RETURN_FEATURES, day), need_label=False)
    predicted = model.predict(_matrix(test)) if test.num_rows else np.empty(0)
    predictions = schemas.conform(
        pa.table({"symbol": test["symbol"], "ts": test["ts"], "predicted_return": predicted,
                  "next_return": test[LABEL]}),
        schemas.RETURN_FORECAST,
    )
    actual = test[LABEL].to_numpy(zero_copy_only=False).astype(np.float64)
    known = ~np.isnan(actual)
    scores: dict[str, float | None] = dict.fromkeys(("mse_model", "mse_zero", "mse_train_mean", "r2_oos", "hit_rate"))
    if known.any():
        a, p = actual[known], predicted[known]
        scores["mse_model"] = float(np.mean((a - p) ** 2))
        scores["mse_zero"] = float(np.mean(a**2))
        scores["mse_train_mean"] = float(np.mean((a - y.mean()) ** 2))
        scores["r2_oos"] = 1 - scores["mse_model"] / scores["mse_zero"] if scores["mse_zero"] > 0 else None
        moved = a != 0
        scores["hit_rate"] = float(np.mean(np.sign(p[moved]) == np.sign(a[moved]))) if moved.any() else None
    ridge = model[-1]
    return ForecastResult(
        predictions=predictions,
        train_sessions=sessions,
        train_rows=len(y),
        test_rows=int(known.sum()),
        coefficients={name: float(c) for name, c in zip(FEATURES, ridge.coef_)},
        **scores,
    )
