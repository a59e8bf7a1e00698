"""Charts a trader reads: candlesticks with volume for a symbol and range, and the day's movers.

Rendered with matplotlib's Agg backend (no display needed). A candlestick chart is a PNG, or a
self-contained HTML page (the chart as inline SVG, the bars as a table; no script, no network).
Candles sit side by side with no gaps for nights or quiet minutes; for intraday timeframes
extended hours are shaded, sessions are separated by a line, and the session VWAP is drawn.
Times are New York's. The PNG carries its symbol, timeframe and range in its text metadata.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa

from market_platform import calendar
from market_platform.errors import InvalidInputError
from market_platform.storage.lake import Lake
from market_platform.storage.rollups import TIMEFRAMES

UP, DOWN = "#089981", "#f23645"
VWAP_COLOR, GRID, TEXT, MUTED, SHADE = "#ff9800", "#e9ecef", "#131722", "#787b86", "#f4f6f9"

_COLUMNS = ["ts", "open", "high", "low", "close", "volume", "vwap"]

# From the lake's minute_bars, or an adjusted view of them (adjust.view_name), where `symbol` is
# today's name of the ticker.
_LAKE_SQL = """
SELECT CAST(ts AS TIMESTAMPTZ) AS ts, open, high, low, close, volume, vwap
FROM {view}
WHERE symbol = $symbol AND date BETWEEN $start AND $end
QUALIFY row_number() OVER (PARTITION BY ts ORDER BY source) = 1
"""

_LIVE_SQL = """
SELECT CAST(ts AS TIMESTAMPTZ) AS ts, open, high, low, close, volume, vwap
FROM live
WHERE symbol = $symbol
  AND CAST(timezone('America/New_York', CAST(ts AS TIMESTAMPTZ)) AS DATE) NOT IN (SELECT unnest($stored))
QUALIFY row_number() OVER (PARTITION BY ts ORDER BY source) = 1
"""

# The same buckets as rollups.py (clock-aligned in New York; 1d is the session), plus the session
# date, so that an intraday VWAP restarts each session.
_ROLLUP_SQL = """
SELECT time_bucket(CAST($width AS INTERVAL), ts, 'America/New_York') AS ts,
       CAST(timezone('America/New_York', min(ts)) AS DATE) AS session,
       arg_min(open, ts) AS open, max(high) AS high, min(low) AS low, arg_max(close, ts) AS close,
       sum(volume) AS volume,
       sum(coalesce(vwap, (high + low + close) / 3) * volume) AS value
FROM bars
WHERE ts >= $lo AND ts < $hi
GROUP BY 1
ORDER BY 1
"""


@dataclass(frozen=True)
class ChartInfo:
    """What a chart shows: its symbol, timeframe, first and last bar, and how many bars."""

    symbol: str
    timeframe: str
    first_ts: datetime
    last_ts: datetime
    bars: int
    path: Path | None = None
    adjust: str = "none"

    @property
    def description(self) -> str:
        return (f"{self.symbol} {self.timeframe} bars={self.bars} "
                f"first={self.first_ts.isoformat()} last={self.last_ts.isoformat()} adjust={self.adjust}")


def load_bars(
    lake: Lake,
    symbol: str,
    start: date | str,
    end: date | str,
    *,
    timeframe: str = "5m",
    live: pa.Table | None = None,
    adjust: str = "none",
) -> pa.Table:
    """Bars of `symbol` for the sessions in [start, end] at `timeframe`, rolled up by DuckDB from
    1-minute bars: the lake's `minute_bars`, and `live` (tick-store bars_1m rows, schemas.BARS)
    for the sessions the lake does not have. `adjust` (none, split, all) adjusts the lake's bars
    for corporate actions as of today (`analytics.adjust`; a renamed ticker's earlier bars come
    with it); today's live bars trade in today's terms already. Columns: ts, session, open, high,
    low, close, volume, value (the sum of price * volume, for VWAP).
    """
    import duckdb

    from market_platform.analytics import adjust as adjustment

    adjustment.check_adjust(adjust)
    start, end = calendar.to_date(start), calendar.to_date(end)
    if timeframe not in TIMEFRAMES:
        raise InvalidInputError(f"unknown timeframe {timeframe!r}: expected one of {', '.join(TIMEFRAMES)}")
    if start > end:
        raise InvalidInputError(f"from {start} is after to {end}: expected from <= to")
    sessions = calendar.sessions(start, end)
    if not sessions:
        raise InvalidInputError(f"no trading session between {start} and {end}")
    stored = [d for d in lake.dates("minute_bars") if start.isoformat() <= d <= end.isoformat()]
    pieces = []
    if stored and adjust == "none":
        pieces.append(lake.query(_LAKE_SQL.format(view="minute_bars"), {"symbol": symbol, "start": start, "end": end}))
    elif stored:
        adjusted, _ = adjustment.connect(lake, symbols=[symbol], dividends=adjust == "all")
        try:
            pieces.append(adjusted.sql(_LAKE_SQL.format(view=adjustment.view_name("minute_bars", adjust)),
                                       params={"symbol": symbol, "start": start, "end": end}).to_arrow_table())
        finally:
            adjusted.close()
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        if live is not None and live.num_rows:
            con.register("live", live)
            days = [date.fromisoformat(d) for d in stored]
            pieces.append(con.sql(_LIVE_SQL, params={"symbol": symbol, "stored": days}).to_arrow_table())
        if not pieces:
            raise InvalidInputError(f"no minute bars stored for {start} to {end}: materialize minute_bars first")
        con.register("bars", pa.concat_tables([p.cast(pieces[0].schema) for p in pieces]))
        table = con.sql(_ROLLUP_SQL, params={
            "width": TIMEFRAMES[timeframe][1],
            "lo": calendar.session(sessions[0]).start,
            "hi": calendar.session(sessions[-1]).end,
        }).to_arrow_table()
    finally:
        con.close()
    if table.num_rows == 0:
        raise InvalidInputError(f"no bars of {symbol!r} between {start} and {end}: is the symbol right?")
    return table


# -- rendering --------------------------------------------------------------------------------


def _figure(height_ratios: tuple[int, ...], size: tuple[float, float]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # A Figure with its own Agg canvas: no pyplot global state, safe in threads and servers.
    fig = Figure(figsize=size, dpi=110, facecolor="white")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(height_ratios), 1, sharex=True, gridspec_kw={"height_ratios": height_ratios, "hspace": 0.04})
    for ax in np.atleast_1d(axes):
        ax.set_facecolor("white")
        ax.grid(True, color=GRID, linewidth=0.8)
        ax.set_axisbelow(True)
        for side in ("top", "left"):
            ax.spines[side].set_visible(False)
        for side in ("right", "bottom"):
            ax.spines[side].set_color("#d1d4dc")
        ax.tick_params(colors=MUTED, labelsize=8.5, length=0)
        ax.yaxis.tick_right()
    return fig, axes


def _price_format(values: np.ndarray):
    from matplotlib.ticker import FuncFormatter

    span = float(np.nanmax(values) - np.nanmin(values)) if len(values) else 1.0
    digits = 4 if np.nanmax(values) < 1 else (3 if span < 0.5 else 2)
    return FuncFormatter(lambda v, _: f"{v:,.{digits}f}"), digits


def _volume_format():
    from matplotlib.ticker import FuncFormatter

    def fmt(v, _):
        for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
            if abs(v) >= scale:
                return f"{v / scale:.1f}{unit}"
        return f"{v:.0f}"

    return FuncFormatter(fmt)


def _new_york(ts: pa.ChunkedArray | pa.Array) -> list[datetime]:
    return [t.astimezone(calendar.NEW_YORK) for t in ts.to_pylist()]


def render_candles(bars: pa.Table, symbol: str, timeframe: str):
    """A matplotlib Figure: candles with session VWAP (intraday), volume below, New York times."""
    n = bars.num_rows
    o, h, l, c, v, value = (bars[name].to_numpy(zero_copy_only=False).astype(float)
                            for name in ("open", "high", "low", "close", "volume", "value"))
    times = _new_york(bars["ts"])
    sessions = bars["session"].to_pylist()
    intraday = timeframe != "1d"
    x = np.arange(n)
    up = c >= o
    colors = np.where(up, UP, DOWN)

    fig, (ax, axv) = _figure((4, 1), (13, 7.2))
    width = 0.7 if n < 400 else 0.85
    ax.vlines(x, l, h, colors=colors, linewidth=0.9 if n < 400 else 0.6, zorder=2)
    body = np.maximum(np.abs(c - o), (np.nanmax(h) - np.nanmin(l)) * 0.0015)
    ax.bar(x, body, width, bottom=np.minimum(o, c), color=colors, edgecolor=colors, linewidth=0.4, zorder=3)
    axv.bar(x, v, width, color=colors, alpha=0.55, zorder=2)

    if intraday:
        # Extended hours shaded, sessions split by a line, VWAP anchored at each session's start.
        by_session: dict[date, list[int]] = {}
        for i, s in enumerate(sessions):
            by_session.setdefault(s, []).append(i)
        for s, idx in by_session.items():
            idx = np.asarray(idx)
            cum_v = np.cumsum(v[idx])
            with np.errstate(invalid="ignore", divide="ignore"):
                vwap = np.where(cum_v > 0, np.cumsum(value[idx]) / cum_v, np.nan)
            ax.plot(idx, vwap, color=VWAP_COLOR, linewidth=1.3, zorder=4,
                    label="VWAP (session)" if idx[0] == 0 else None)
            session = calendar.session(s)
            regular = np.array([session.regular_open <= times[i] < session.regular_close for i in idx])
            for run_start, run_end in _runs(idx, ~regular):
                for a in (ax, axv):
                    a.axvspan(run_start - 0.5, run_end + 0.5, color=SHADE, zorder=0, linewidth=0)
            if idx[0] > 0:
                for a in (ax, axv):
                    a.axvline(idx[0] - 0.5, color="#b2b5be", linewidth=0.8, linestyle=(0, (4, 3)), zorder=1)
        ax.legend(loc="upper left", frameon=False, fontsize=8.5, labelcolor=MUTED)

    formatter, digits = _price_format(np.concatenate([l, h]))
    ax.yaxis.set_major_formatter(formatter)
    axv.yaxis.set_major_formatter(_volume_format())
    ax.set_xlim(-0.75, n - 0.25 + max(0.5, n / 40))  # a little room on the right for the price tag
    pad = (np.nanmax(h) - np.nanmin(l)) * 0.06 or np.nanmax(h) * 0.01
    ax.set_ylim(np.nanmin(l) - pad, np.nanmax(h) + pad)

    # The last price, tagged on the axis as trading screens do.
    last_color = UP if up[-1] else DOWN
    ax.axhline(c[-1], color=last_color, linewidth=0.8, linestyle=(0, (2, 2)), zorder=1)
    ax.annotate(f"{c[-1]:,.{digits}f}", xy=(1, c[-1]), xycoords=("axes fraction", "data"), xytext=(2, 0),
                textcoords="offset points", va="center", ha="left", fontsize=8.5, color="white",
                bbox={"boxstyle": "square,pad=0.25", "facecolor": last_color, "edgecolor": last_color})

    ticks, labels = _time_ticks(times, sessions, intraday)
    axv.set_xticks(ticks, labels)

    change = c[-1] / o[0] - 1
    first, last = times[0], times[-1]
    span = (f"{first:%a %Y-%m-%d %H:%M} – {last:%a %Y-%m-%d %H:%M} New York" if intraday
            else f"{first:%a %Y-%m-%d} – {last:%a %Y-%m-%d}")
    _text_row(fig, 0.965, [(symbol, {"fontsize": 17, "fontweight": "bold", "color": TEXT}),
                           (f"{timeframe}  ·  {span}", {"fontsize": 10, "color": MUTED})])
    mono = {"fontsize": 10, "family": "DejaVu Sans Mono"}
    _text_row(fig, 0.918, [
        (f"O {o[0]:,.{digits}f}  H {np.nanmax(h):,.{digits}f}  L {np.nanmin(l):,.{digits}f}  C {c[-1]:,.{digits}f}",
         {**mono, "color": TEXT}),
        (f"{c[-1] - o[0]:+,.{digits}f} ({change:+.2%})",
         {**mono, "color": UP if change >= 0 else DOWN, "fontweight": "bold"}),
    ])
    fig.text(0.99, 0.918, f"Vol {_volume_format()(float(v.sum()), None)}  ·  {n} bars", fontsize=9,
             color=MUTED, va="top", ha="right")
    fig.subplots_adjust(left=0.035, right=0.935, top=0.89, bottom=0.07)
    return fig


def _text_row(fig, y: float, pieces: list[tuple[str, dict]], *, x: float = 0.012, gap_px: float = 14) -> None:
    """Texts side by side at height `y` (figure fraction), each placed after the previous one's extent."""
    renderer = fig.canvas.get_renderer()
    for text, style in pieces:
        artist = fig.text(x, y, text, va="top", **style)
        box = artist.get_window_extent(renderer)
        x = (box.x1 + gap_px) / (fig.get_figwidth() * fig.dpi)


def _runs(idx: np.ndarray, mask: np.ndarray) -> list[tuple[int, int]]:
    """Contiguous runs (first, last position) of `idx` where `mask` holds."""
    runs, start = [], None
    for position, flag in zip(idx, mask):
        if flag and start is None:
            start = position
        if not flag and start is not None:
            runs.append((start, previous))
            start = None
        previous = position
    if start is not None:
        runs.append((start, idx[-1]))
    return runs


def _time_ticks(times: list[datetime], sessions: list, intraday: bool) -> tuple[list[int], list[str]]:
    n = len(times)
    if not intraday:
        step = max(1, n // 10)
        return list(range(0, n, step)), [f"{t:%b %d}" for t in times[::step]]
    multi = len(set(sessions)) > 1
    spacing = max(1, n // 12)  # about a dozen labels, none closer than this many bars
    starts = [i for i in range(n) if i == 0 or sessions[i] != sessions[i - 1]] if multi else []
    hours = [i for i, t in enumerate(times) if t.minute == 0 and (i == 0 or times[i - 1].hour != t.hour)]
    ticks = list(starts)
    for i in hours:
        if all(abs(i - j) >= spacing for j in ticks):
            ticks.append(i)
    ticks.sort()
    labels = [f"{times[i]:%a %b %d}" if i in starts else f"{times[i]:%H:%M}" for i in ticks]
    return ticks, labels


def candles_chart(
    lake: Lake,
    symbol: str,
    start: date | str,
    end: date | str,
    out: str | Path,
    *,
    timeframe: str = "5m",
    live: pa.Table | None = None,
    adjust: str = "none",
) -> ChartInfo:
    """Write a candlestick chart of `symbol` over the sessions in [start, end] to `out` (.png or .html),
    its prices adjusted for corporate actions as `adjust` says (none, split, all)."""
    out = Path(out)
    if out.suffix.lower() not in (".png", ".html", ".htm"):
        raise InvalidInputError(f"chart file {str(out)!r}: expected a name ending in .png or .html")
    bars = load_bars(lake, symbol, start, end, timeframe=timeframe, live=live, adjust=adjust)
    first, last = bars["ts"][0].as_py(), bars["ts"][-1].as_py()
    info = ChartInfo(symbol, timeframe, first, last, bars.num_rows, out, adjust)
    fig = render_candles(bars, symbol, timeframe)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".png":
        fig.savefig(out, format="png", metadata={"Title": f"{symbol} {timeframe}", "Description": info.description})
    else:
        out.write_text(_html_page(fig, bars, info), encoding="utf-8")
    return info


def _html_page(fig, bars: pa.Table, info: ChartInfo) -> str:
    svg = io.StringIO()
    fig.savefig(svg, format="svg", metadata={"Date": None})
    body = svg.getvalue()
    body = body[body.index("<svg"):]  # drop the XML prolog and doctype: inline SVG in HTML5
    rows = []
    times = _new_york(bars["ts"])
    for t, o, h, l, c, v in zip(times, *(bars[n].to_pylist() for n in ("open", "high", "low", "close", "volume"))):
        cls = "up" if c >= o else "down"
        rows.append(f'<tr class="{cls}"><td>{t:%Y-%m-%d %H:%M}</td><td>{o:,.4g}</td><td>{h:,.4g}</td>'
                    f"<td>{l:,.4g}</td><td>{c:,.4g}</td><td>{v:,.0f}</td></tr>")
    title = html.escape(f"{info.symbol} {info.timeframe} {info.first_ts:%Y-%m-%d} to {info.last_ts:%Y-%m-%d}")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="description" content="{html.escape(info.description)}">
<title>{title}</title>
<style>
body {{ font-family: -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; margin: 24px; color: {TEXT}; }}
svg {{ max-width: 100%; height: auto; }}
table {{ border-collapse: collapse; font-variant-numeric: tabular-nums; font-size: 13px; }}
td, th {{ padding: 2px 10px; text-align: right; border-bottom: 1px solid {GRID}; }}
tr.up td:nth-child(5) {{ color: {UP}; }} tr.down td:nth-child(5) {{ color: {DOWN}; }}
summary {{ cursor: pointer; color: {MUTED}; margin: 12px 0; }}
</style>
</head>
<body>
<figure data-symbol="{html.escape(info.symbol)}" data-timeframe="{info.timeframe}"
        data-first="{info.first_ts.isoformat()}" data-last="{info.last_ts.isoformat()}" data-bars="{info.bars}">
{body}
</figure>
<details><summary>{info.bars} bars (New York time)</summary>
<table><thead><tr><th>time</th><th>open</th><th>high</th><th>low</th><th>close</th><th>volume</th></tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody></table></details>
</body>
</html>
"""


def render_movers(gainers: pa.Table, losers: pa.Table, day: date, *, label: str = "change from previous close"):
    """A matplotlib Figure: the day's biggest gainers (top, green) and losers (bottom, red)."""
    # One ranking, biggest gain at the top down to the biggest loss at the bottom (barh draws y=0
    # at the bottom, hence the reversal).
    order_symbols = (gainers["symbol"].to_pylist() + losers["symbol"].to_pylist()[::-1])[::-1]
    order_changes = np.array(gainers["change"].to_pylist() + losers["change"].to_pylist()[::-1], dtype=float)[::-1]
    fig, ax = _figure((1,), (10, max(3.0, 0.34 * len(order_symbols) + 1.4)))
    ax = np.atleast_1d(ax)[0]
    y = np.arange(len(order_symbols))
    colors = np.where(order_changes >= 0, UP, DOWN)
    ax.barh(y, order_changes * 100, color=colors, height=0.68, zorder=2)
    ax.axvline(0, color="#b2b5be", linewidth=0.8)
    ax.set_yticks(y, order_symbols)
    ax.yaxis.tick_left()
    ax.tick_params(axis="y", labelsize=10, colors=TEXT)
    ax.grid(axis="y", visible=False)
    span = float(np.max(np.abs(order_changes))) * 100 if len(order_changes) else 1.0
    for yi, ch in zip(y, order_changes):
        ax.annotate(f"{ch:+.2%}", xy=(ch * 100, yi), xytext=(4 if ch >= 0 else -4, 0), textcoords="offset points",
                    va="center", ha="left" if ch >= 0 else "right", fontsize=9, color=TEXT)
    ax.set_xlim(-span * 1.3 if len(losers) else -span * 0.05, span * 1.3 if len(gainers) else span * 0.05)
    from matplotlib.ticker import FuncFormatter

    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:+.1f}%"))
    session = calendar.session(day)
    note = "  (half day)" if session.is_half_day else ""
    fig.text(0.02, 0.975, f"Movers {day:%a %Y-%m-%d}{note}", fontsize=14, fontweight="bold", color=TEXT, va="top")
    fig.text(0.02, 0.975 - 0.45 / fig.get_figheight(), f"Top {len(gainers)} gainers and {len(losers)} losers, "
             f"{label}", fontsize=9.5, color=MUTED, va="top")
    fig.subplots_adjust(left=0.1, right=0.97, top=1 - 1.0 / fig.get_figheight(), bottom=0.35 / fig.get_figheight() + 0.03)
    return fig


def png_bytes(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def markdown_image(png: bytes, alt: str) -> str:
    """Markdown showing `png` inline (a data URI): how the Dagster UI shows a chart in metadata."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"


__all__ = ["ChartInfo", "candles_chart", "load_bars", "markdown_image", "png_bytes", "render_candles", "render_movers"]
