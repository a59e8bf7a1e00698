"""The platform's symbols and the vendors' spellings of them.

The platform names instruments as Alpaca does: stocks by their ticker (`AAPL`, `BRK.B`), crypto
and currency pairs with a slash (`BTC/USD`, `EUR/USD`), indices by their bare code (`SPX`) and
options by their OCC symbol (`SPY241220C00590000`). Polygon prefixes all but stocks and drops the
slash in REST (`X:BTCUSD`, `C:EURUSD`, `I:SPX`, `O:SPY241220C00590000`) but writes a dash in its
Flat Files (`X:BTC-USD`). A pair whose two legs are both fiat currencies is FX; any other pair is
crypto.
"""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.compute as pc

#: ISO 4217 codes that make a pair FX rather than crypto.
FIAT = frozenset({
    "USD", "EUR", "JPY", "GBP", "AUD", "CAD", "CHF", "NZD", "SEK", "NOK", "DKK", "MXN", "CNH", "CNY",
    "HKD", "SGD", "ZAR", "TRY", "PLN", "CZK", "HUF", "ILS", "INR", "KRW", "BRL", "THB", "TWD",
})
#: Quote legs recognised at the end of a Polygon pair without separator, longest first.
_QUOTES = ("USDT", "USDC", "USD", "EUR", "GBP", "JPY", "BTC", "ETH", "AUD", "CAD", "CHF")
_OCC = re.compile(r"^[A-Z]{1,6}\d{6}[CP]\d{8}$")


def is_pair(symbol: str) -> bool:
    return "/" in symbol


def is_fx(symbol: str) -> bool:
    base, _, quote = symbol.partition("/")
    return bool(quote) and base in FIAT and quote in FIAT


def is_crypto(symbol: str) -> bool:
    """Whether `symbol` is a crypto pair (trades 24/7 on UTC days)."""
    return is_pair(symbol) and not is_fx(symbol)


def is_option(symbol: str) -> bool:
    return bool(_OCC.match(symbol))


def to_polygon(symbol: str, *, index: bool = False) -> str:
    """Polygon's REST ticker for a platform symbol (`index=True`: the bare code is an index)."""
    if is_pair(symbol):
        return ("C:" if is_fx(symbol) else "X:") + symbol.replace("/", "")
    if index:
        return "I:" + symbol
    if is_option(symbol):
        return "O:" + symbol
    return symbol


def from_polygon(ticker: str, *, base: str | None = None, quote: str | None = None) -> str:
    """The platform symbol of a Polygon REST ticker; `base`/`quote` (from reference data) split a pair."""
    prefix, sep, code = ticker.partition(":")
    if not sep:
        return ticker
    if prefix in ("X", "C"):
        if base and quote and code == base + quote:
            return f"{base}/{quote}"
        if prefix == "C" and len(code) == 6:
            return f"{code[:3]}/{code[3:]}"
        for leg in _QUOTES:
            if code.endswith(leg) and len(code) > len(leg):
                return f"{code[: -len(leg)]}/{leg}"
        return code
    return code


def to_flatfile(symbol: str) -> str:
    """The ticker Polygon's Flat Files use: stocks as they are, pairs as `X:BTC-USD` / `C:EUR-USD`."""
    if is_pair(symbol):
        return ("C:" if is_fx(symbol) else "X:") + symbol.replace("/", "-")
    return symbol


def to_flatfile_array(symbols: pa.Array | pa.ChunkedArray, *, crypto: bool) -> pa.Array | pa.ChunkedArray:
    """`to_flatfile` over a column (one kind per call), vectorised."""
    if not crypto:
        return symbols
    return pc.binary_join_element_wise("X:", pc.replace_substring(symbols, "/", "-"), "")


def from_flatfile_array(tickers: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """Platform symbols of a column of flat-file tickers, vectorised: `X:BTC-USD` -> `BTC/USD`."""
    return pc.replace_substring_regex(tickers, r"^[XC]:([^-]+)-(.+)$", r"\1/\2")
