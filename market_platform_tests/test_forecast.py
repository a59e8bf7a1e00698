"""Return features against pandas, and a forecast that never sees the future."""

from __future__ import annotations

import shutil
from datetime import date

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from market_platform import calendar
from market_platform.analytics import forecast, metrics
from market_platform.errors import NotEnoughHistoryError
from market_platform.storage.lake import Lake
from market_platform_tests.fixtures.metrics import METRICS_DAYS


@pytest.fixture(scope="module")
def features_lake(metrics_lake, tmp_path_factory) -> Lake:
    """A copy of the metrics lake with intraday metrics and features for every stored session."""
    root = tmp_path_factory.mktemp("features") / "lake"
    shutil.copytree(metrics_lake.url, root)
    lake = Lake(root)
    for day in METRICS_DAYS:
        lake.write_partition(metrics.INTRADAY_METRICS, day, metrics.intraday_metrics(lake, day))
        lake.write_partition(forecast.RETURN_FEATURES, day, forecast.return_features(lake, day))
    return lake


def test_features_match_pandas(features_lake):
    day = METRICS_DAYS[1]
    m = features_lake.read_partition(metrics.INTRADAY_METRICS, day).to_pandas()
    got = features_lake.read_partition(forecast.RETURN_FEATURES, day).to_pandas()
    ret = np.log1p(m["pct_change"])
    g = ret.groupby(m.symbol)
    logv = np.log1p(m.volume)
    prior = logv.groupby(m.symbol)
    mean12 = prior.transform(lambda s: s.shift(1).rolling(12, min_periods=3).mean())
    std12 = prior.transform(lambda s: s.shift(1).rolling(12, min_periods=3).std())
    value = (m.vwap.fillna(m.close) * m.volume).groupby(m.symbol).cumsum()
    session_vwap = value / m.volume.groupby(m.symbol).cumsum()
    want = pd.DataFrame({
        "ret_lag0": ret, "ret_lag1": g.shift(1), "ret_lag2": g.shift(2),
        "rolling_vol": g.transform(lambda s: s.rolling(12, min_periods=3).std()),
        "volume_z": (logv - mean12) / std12.replace(0, np.nan),
        "vwap_distance": m.close / session_vwap - 1,
        "minutes_from_open": (m.ts - pd.Timestamp(calendar.session(day).regular_open)).dt.total_seconds() / 60,
        "next_return": g.shift(-1),
    })
    assert (got.symbol == m.symbol).all() and (got.ts == m.ts).all()
    for column in want.columns:
        np.testing.assert_allclose(got[column].astype(float), want[column].astype(float), rtol=1e-7, atol=1e-12,
                                   err_msg=column)
    # The label never crosses into the next session.
    last = got.groupby("symbol").tail(1)
    assert last.next_return.isna().all()


def _shuffled(table: pa.Table, seed: int) -> pa.Table:
    """`table` with every numeric column's values permuted: the same shape, other contents."""
    rng = np.random.default_rng(seed)
    columns = {}
    for name in table.column_names:
        column = table[name]
        if pa.types.is_floating(column.type):
            column = pa.array(rng.permutation(column.to_numpy(zero_copy_only=False)), column.type)
        columns[name] = column
    return pa.table(columns, schema=table.schema)


def test_forecast_never_sees_the_future(features_lake, tmp_path):
    day = METRICS_DAYS[2]
    X, y, sessions = forecast.training_set(features_lake, day)
    assert sessions == list(METRICS_DAYS[:2]) and len(y) > 100
    before = forecast.forecast(features_lake, day, min_train_rows=100)

    # Scramble the session being predicted and every later one: training inputs stay the same.
    future = Lake(tmp_path / "lake")
    shutil.copytree(features_lake.url, future.url)
    for d in METRICS_DAYS:
        if d >= day:
            future.write_partition(forecast.RETURN_FEATURES, d, _shuffled(future.read_partition(forecast.RETURN_FEATURES, d), 3))
    X2, y2, sessions2 = forecast.training_set(future, day)
    assert sessions2 == sessions
    np.testing.assert_array_equal(X2, X)
    np.testing.assert_array_equal(y2, y)
    after = forecast.forecast(future, day, min_train_rows=100)
    assert after.coefficients == before.coefficients
    assert after.train_rows == before.train_rows


def test_forecast_scores_out_of_sample(features_lake):
    result = forecast.forecast(features_lake, METRICS_DAYS[3], min_train_rows=100)
    assert result.train_sessions == list(METRICS_DAYS[:3])
    assert result.predictions.num_rows > 0 and result.test_rows > 0
    p = result.predictions.to_pandas().dropna()
    mse = float(np.mean((p.next_return - p.predicted_return) ** 2))
    assert result.mse_model == pytest.approx(mse)
    assert result.mse_zero == pytest.approx(float(np.mean(p.next_return**2)))
    assert result.r2_oos == pytest.approx(1 - mse / result.mse_zero)
    assert result.beats_baseline == (result.r2_oos > 0)
    assert 0 <= result.hit_rate <= 1
    assert set(result.coefficients) == set(forecast.FEATURES)


def test_forecast_needs_history(features_lake):
    with pytest.raises(NotEnoughHistoryError, match="earlier sessions"):
        forecast.forecast(features_lake, METRICS_DAYS[0])
    assert forecast.training_sessions(features_lake, date(2024, 12, 31), lookback=2) == list(METRICS_DAYS[2:])
