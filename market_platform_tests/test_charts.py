"""Candlestick and movers charts: valid PNG/HTML files that show the range asked for."""

from __future__ import annotations

import html.parser
import struct
from datetime import date

import pytest
from click.testing import CliRunner
from PIL import Image

from market_platform import calendar
from market_platform.analytics import charts, metrics
from market_platform.cli import main
from market_platform.errors import InvalidInputError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class Tags(html.parser.HTMLParser):
    """Every tag seen (start tags, then the closing html), and every attribute that would fetch."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.fetches: list[tuple[str, str]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.fetches += [(k, v) for k, v in attrs if k in ("src", "href", "xlink:href")]

    def handle_endtag(self, tag):
        if tag == "html":
            self.tags.append(tag)


def _png_text(path) -> dict[str, str]:
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        return dict(image.text)


def test_png_candles_of_the_right_range(metrics_lake, tmp_path):
    out = tmp_path / "aapl.png"
    info = charts.candles_chart(metrics_lake, "AAPL", "2024-11-26", "2024-11-27", out, timeframe="15m")
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    width, height = struct.unpack(">II", out.read_bytes()[16:24])
    assert (width, height) == (1430, 792)
    assert info.first_ts >= calendar.session("2024-11-26").start
    assert info.last_ts < calendar.session("2024-11-27").end
    bars = charts.load_bars(metrics_lake, "AAPL", "2024-11-26", "2024-11-27", timeframe="15m")
    assert info.bars == bars.num_rows and info.first_ts == bars["ts"][0].as_py()
    assert _png_text(out)["Description"] == info.description
    assert {s.isoformat() for s in bars["session"].to_pylist()} == {"2024-11-26", "2024-11-27"}


def test_html_candles_are_self_contained(metrics_lake, tmp_path):
    out = tmp_path / "nvda.html"
    info = charts.candles_chart(metrics_lake, "NVDA", "2024-11-29", "2024-11-29", out, timeframe="5m")
    text = out.read_text()
    parser = Tags()
    parser.feed(text)
    parser.close()
    assert text.startswith("<!DOCTYPE html>") and "svg" in parser.tags and parser.tags[-1] == "html"
    assert "script" not in parser.tags and "link" not in parser.tags and "img" not in parser.tags
    assert not [value for _, value in parser.fetches if value and value.startswith(("http:", "https:", "//"))]
    assert f'data-first="{info.first_ts.isoformat()}"' in text and f'data-bars="{info.bars}"' in text
    assert text.count("<tr class=") == info.bars
    half_day = calendar.session("2024-11-29")
    assert info.last_ts < half_day.end  # the half day's after-hours end at 17:00


def test_daily_candles_and_live_rows(metrics_lake, sim, tmp_path):
    live = sim.minute_bars(date(2024, 12, 2), ["AAPL"])
    info = charts.candles_chart(metrics_lake, "AAPL", "2024-11-25", "2024-12-02", tmp_path / "d.png",
                                timeframe="1d", live=live)
    assert info.bars == 5  # four sessions from the lake, one from the live rows


def test_bad_requests(metrics_lake, tmp_path):
    with pytest.raises(InvalidInputError, match="expected a name ending in .png or .html"):
        charts.candles_chart(metrics_lake, "AAPL", "2024-11-26", "2024-11-26", tmp_path / "x.jpg")
    with pytest.raises(InvalidInputError, match="no bars of 'NOPE'"):
        charts.candles_chart(metrics_lake, "NOPE", "2024-11-26", "2024-11-26", tmp_path / "x.png")
    with pytest.raises(InvalidInputError, match="no trading session"):
        charts.load_bars(metrics_lake, "AAPL", "2024-11-28", "2024-11-28")
    assert not (tmp_path / "x.png").exists()


def test_movers_chart(metrics_lake):
    gainers, losers = metrics.movers(metrics.daily_metrics(metrics_lake, "2024-11-29"), n=5)
    png = charts.png_bytes(charts.render_movers(gainers, losers, date(2024, 11, 29)))
    assert png[:8] == PNG_SIGNATURE
    assert charts.markdown_image(png, "movers").startswith("![movers](data:image/png;base64,iVBORw0KGgo")


def test_chart_cli(metrics_lake, tmp_path, monkeypatch, make_database):
    monkeypatch.setenv("MARKET_LAKE_URL", str(metrics_lake.url))
    monkeypatch.setenv("MARKET_DB_URL", make_database("postgres"))  # an empty tick store: the lake's bars only
    out = tmp_path / "spy.png"
    result = CliRunner().invoke(main, ["chart", "SPY", "--from", "2024-11-26", "--to", "2024-11-27",
                                       "--timeframe", "1h", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "SPY 1h bars=" in result.output and out.read_bytes()[:8] == PNG_SIGNATURE
    bad = CliRunner().invoke(main, ["chart", "SPY", "--from", "2024-11-27", "--to", "2024-11-26", "--out", str(out)])
    assert bad.exit_code == 2 and bad.output.startswith("error: from 2024-11-27 is after to 2024-11-26")
