"""Reference data of the simulated market: who is listed, where, since when, and how big.

One fixed master list, the same for every seed and scale: a few dozen well-known names per
group at the top (with their real exchanges and listing dates, and a handful of famous
delistings), then deterministically generated companies, ETFs and OTC names with plausible
tickers, names and log-normal market caps; most listed before 2004 and about a fifth listed
since, and some delisted between 2004 and 2026, so snapshots differ from day to day. Crypto
pairs, currency pairs and indices are short fixed lists. Options chains are built per day in
`sim.py`, since their strikes follow the simulated underlying price.

Ranks order each scale group by reference market cap (ETF: assets); a `SimMarket` at scale N
takes the first N of its group that are listed on the day, so a symbol's rank never depends on N.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np

from market_platform.sources.sim_random import bits, derive, normal, text_key, uniform53

#: Listing groups, which set trade and quote venue mixes and tapes.
XNYS, XNAS, XASE, ARCX, BATS, OTCM, CRYPTO = range(7)
MICS = ("XNYS", "XNAS", "XASE", "ARCX", "BATS", "OTCM", None)
#: Consolidated tape by listing exchange (A: NYSE, B: NYSE Arca/American/Cboe, C: Nasdaq).
TAPES = ("A", "C", "B", "B", "B", None, None)

#: Scale groups: which `SimMarket` count each instrument counts against.
EQUITY, OTC, CRYPTO_GROUP, REFERENCE_ONLY = range(4)

NEVER = date(9999, 12, 31).toordinal()
_GENERATED_FROM, _GENERATED_TO = date(2004, 1, 5), date(2026, 12, 31)
_N_EQUITY_GENERATED = 4_000  # with the fixed names ≥ 3,000 CS/ADRC/ETF are listed on any day
_ETF_SHARE = 0.17
_N_OTC = 300
_UNIVERSE_KEY = text_key("market_platform.sim.universe", 1)

# symbol, name, listing, type, reference cap in $B, reference price, listed, delisted
_EQUITIES: tuple[tuple[str, str, int, str, float, float, str, str | None], ...] = (
    ("AAPL", "Apple Inc.", XNAS, "CS", 3400, 190, "1980-12-12", None),
    ("MSFT", "Microsoft Corporation", XNAS, "CS", 3100, 420, "1986-03-13", None),
    ("NVDA", "NVIDIA Corporation", XNAS, "CS", 3000, 120, "1999-01-22", None),
    ("GOOGL", "Alphabet Inc. Class A", XNAS, "CS", 2100, 170, "2004-08-19", None),
    ("AMZN", "Amazon.com, Inc.", XNAS, "CS", 1900, 185, "1997-05-15", None),
    ("META", "Meta Platforms, Inc. Class A", XNAS, "CS", 1300, 500, "2012-05-18", None),
    ("BRK.B", "Berkshire Hathaway Inc. Class B", XNYS, "CS", 900, 410, "1996-05-09", None),
    ("TSM", "Taiwan Semiconductor Manufacturing Company Ltd. ADR", XNYS, "ADRC", 880, 170, "1997-10-09", None),
    ("TSLA", "Tesla, Inc.", XNAS, "CS", 800, 220, "2010-06-29", None),
    ("LLY", "Eli Lilly and Company", XNYS, "CS", 800, 880, "1970-07-09", None),
    ("AVGO", "Broadcom Inc.", XNAS, "CS", 750, 160, "2009-08-06", None),
    ("JPM", "JPMorgan Chase & Co.", XNYS, "CS", 580, 205, "1980-03-17", None),
    ("V", "Visa Inc. Class A", XNYS, "CS", 540, 275, "2008-03-19", None),
    ("WMT", "Walmart Inc.", XNYS, "CS", 540, 67, "1972-08-25", None),
    ("XOM", "Exxon Mobil Corporation", XNYS, "CS", 470, 115, "1970-01-02", None),
    ("UNH", "UnitedHealth Group Incorporated", XNYS, "CS", 460, 500, "1984-10-17", None),
    ("NVO", "Novo Nordisk A/S ADR", XNYS, "ADRC", 430, 130, "1981-04-30", None),
    ("MA", "Mastercard Incorporated Class A", XNYS, "CS", 420, 450, "2006-05-25", None),
    ("PG", "The Procter & Gamble Company", XNYS, "CS", 400, 165, "1970-01-02", None),
    ("ORCL", "Oracle Corporation", XNYS, "CS", 390, 140, "1986-03-12", None),
    ("COST", "Costco Wholesale Corporation", XNAS, "CS", 380, 850, "1985-12-05", None),
    ("ASML", "ASML Holding N.V. ADR", XNAS, "ADRC", 380, 950, "1995-03-15", None),
    ("JNJ", "Johnson & Johnson", XNYS, "CS", 360, 150, "1970-01-02", None),
    ("HD", "The Home Depot, Inc.", XNYS, "CS", 350, 350, "1981-09-22", None),
    ("MRK", "Merck & Co., Inc.", XNYS, "CS", 320, 125, "1970-01-02", None),
    ("BAC", "Bank of America Corporation", XNYS, "CS", 310, 40, "1973-01-02", None),
    ("ABBV", "AbbVie Inc.", XNYS, "CS", 300, 170, "2013-01-02", None),
    ("NFLX", "Netflix, Inc.", XNAS, "CS", 290, 670, "2002-05-23", None),
    ("CVX", "Chevron Corporation", XNYS, "CS", 290, 155, "1970-01-02", None),
    ("KO", "The Coca-Cola Company", XNYS, "CS", 270, 63, "1970-01-02", None),
    ("CRM", "Salesforce, Inc.", XNYS, "CS", 260, 260, "2004-06-23", None),
    ("AMD", "Advanced Micro Devices, Inc.", XNAS, "CS", 260, 160, "1979-01-02", None),
    ("TM", "Toyota Motor Corporation ADR", XNYS, "ADRC", 250, 200, "1999-09-29", None),
    ("PEP", "PepsiCo, Inc.", XNAS, "CS", 230, 165, "1970-01-02", None),
    ("SAP", "SAP SE ADR", XNYS, "ADRC", 230, 200, "1998-08-03", None),
    ("SHEL", "Shell plc ADR", XNYS, "ADRC", 220, 70, "2005-07-20", None),
    ("ADBE", "Adobe Inc.", XNAS, "CS", 220, 500, "1986-08-13", None),
    ("TMO", "Thermo Fisher Scientific Inc.", XNYS, "CS", 210, 560, "1980-01-02", None),
    ("WFC", "Wells Fargo & Company", XNYS, "CS", 210, 58, "1970-01-02", None),
    ("LIN", "Linde plc", XNAS, "CS", 210, 440, "2018-10-31", None),
    ("ACN", "Accenture plc Class A", XNYS, "CS", 200, 300, "2001-07-19", None),
    ("CSCO", "Cisco Systems, Inc.", XNAS, "CS", 190, 47, "1990-02-16", None),
    ("QCOM", "QUALCOMM Incorporated", XNAS, "CS", 190, 170, "1991-12-13", None),
    ("MCD", "McDonald's Corporation", XNYS, "CS", 190, 260, "1970-01-02", None),
    ("BABA", "Alibaba Group Holding Limited ADR", XNYS, "ADRC", 190, 75, "2014-09-19", None),
    ("ABT", "Abbott Laboratories", XNYS, "CS", 185, 105, "1970-01-02", None),
    ("GE", "GE Aerospace", XNYS, "CS", 180, 165, "1970-01-02", None),
    ("IBM", "International Business Machines Corporation", XNYS, "CS", 170, 180, "1970-01-02", None),
    ("DIS", "The Walt Disney Company", XNYS, "CS", 170, 95, "1970-01-02", None),
    ("CAT", "Caterpillar Inc.", XNYS, "CS", 165, 340, "1970-01-02", None),
    ("GS", "The Goldman Sachs Group, Inc.", XNYS, "CS", 160, 470, "1999-05-04", None),
    ("UBER", "Uber Technologies, Inc.", XNYS, "CS", 150, 70, "2019-05-10", None),
    ("ARM", "Arm Holdings plc ADR", XNAS, "ADRC", 140, 130, "2023-09-14", None),
    ("INTC", "Intel Corporation", XNAS, "CS", 130, 30, "1971-10-13", None),
    ("T", "AT&T Inc.", XNYS, "CS", 130, 18, "1984-02-16", None),
    ("C", "Citigroup Inc.", XNYS, "CS", 120, 62, "1986-10-29", None),
    ("ABNB", "Airbnb, Inc. Class A", XNAS, "CS", 90, 140, "2020-12-10", None),
    ("PLTR", "Palantir Technologies Inc. Class A", XNAS, "CS", 60, 24, "2020-09-30", None),
    ("COIN", "Coinbase Global, Inc. Class A", XNAS, "CS", 55, 230, "2021-04-14", None),
    ("SNOW", "Snowflake Inc. Class A", XNYS, "CS", 45, 130, "2020-09-16", None),
    ("F", "Ford Motor Company", XNYS, "CS", 45, 11, "1970-01-02", None),
    ("RIVN", "Rivian Automotive, Inc. Class A", XNAS, "CS", 15, 12, "2021-11-10", None),
    # Famous delistings, so point-in-time snapshots differ from today's list.
    ("CELG", "Celgene Corporation", XNAS, "CS", 80, 100, "1987-07-01", "2019-11-21"),
    ("WB", "Wachovia Corporation", XNYS, "CS", 80, 40, "1972-01-03", "2009-01-02"),
    ("ATVI", "Activision Blizzard, Inc.", XNAS, "CS", 70, 90, "1993-10-26", "2023-10-13"),
    ("MON", "Monsanto Company", XNYS, "CS", 50, 110, "2000-10-18", "2018-06-07"),
    ("YHOO", "Yahoo! Inc.", XNAS, "CS", 50, 40, "1996-04-12", "2017-06-19"),
    ("LEH", "Lehman Brothers Holdings Inc.", XNYS, "CS", 45, 60, "1994-05-31", "2008-09-17"),
    ("TWTR", "Twitter, Inc.", XNYS, "CS", 35, 40, "2013-11-07", "2022-10-28"),
    ("BSC", "The Bear Stearns Companies Inc.", XNYS, "CS", 20, 150, "1985-10-29", "2008-05-30"),
)

_ETFS: tuple[tuple[str, str, int, float, float, str], ...] = (
    ("SPY", "SPDR S&P 500 ETF Trust", ARCX, 560, 540, "1993-01-29"),
    ("IVV", "iShares Core S&P 500 ETF", ARCX, 520, 545, "2000-05-19"),
    ("VOO", "Vanguard S&P 500 ETF", ARCX, 500, 500, "2010-09-09"),
    ("VTI", "Vanguard Total Stock Market ETF", ARCX, 400, 265, "2001-05-31"),
    ("QQQ", "Invesco QQQ Trust, Series 1", XNAS, 290, 480, "1999-03-10"),
    ("VEA", "Vanguard FTSE Developed Markets ETF", ARCX, 130, 50, "2007-07-26"),
    ("VUG", "Vanguard Growth ETF", ARCX, 130, 370, "2004-01-30"),
    ("VTV", "Vanguard Value ETF", ARCX, 120, 165, "2004-01-30"),
    ("IEFA", "iShares Core MSCI EAFE ETF", BATS, 120, 75, "2012-10-24"),
    ("AGG", "iShares Core U.S. Aggregate Bond ETF", ARCX, 115, 98, "2003-09-29"),
    ("BND", "Vanguard Total Bond Market ETF", XNAS, 110, 72, "2007-04-10"),
    ("IWF", "iShares Russell 1000 Growth ETF", ARCX, 95, 360, "2000-05-26"),
    ("IJH", "iShares Core S&P Mid-Cap ETF", ARCX, 90, 60, "2000-05-26"),
    ("IEMG", "iShares Core MSCI Emerging Markets ETF", ARCX, 80, 55, "2012-10-24"),
    ("VWO", "Vanguard FTSE Emerging Markets ETF", ARCX, 80, 44, "2005-03-10"),
    ("GLD", "SPDR Gold Shares", ARCX, 70, 215, "2004-11-18"),
    ("XLK", "Technology Select Sector SPDR Fund", ARCX, 70, 220, "1998-12-22"),
    ("IWM", "iShares Russell 2000 ETF", ARCX, 65, 210, "2000-05-26"),
    ("SCHD", "Schwab U.S. Dividend Equity ETF", ARCX, 60, 80, "2011-10-20"),
    ("EFA", "iShares MSCI EAFE ETF", ARCX, 55, 80, "2001-08-17"),
    ("TLT", "iShares 20+ Year Treasury Bond ETF", XNAS, 55, 92, "2002-07-30"),
    ("XLF", "Financial Select Sector SPDR Fund", ARCX, 40, 42, "1998-12-22"),
    ("XLE", "Energy Select Sector SPDR Fund", ARCX, 37, 90, "1998-12-22"),
    ("DIA", "SPDR Dow Jones Industrial Average ETF Trust", ARCX, 33, 400, "1998-01-20"),
    ("LQD", "iShares iBoxx $ Investment Grade Corporate Bond ETF", ARCX, 30, 108, "2002-07-26"),
    ("TQQQ", "ProShares UltraPro QQQ", XNAS, 22, 60, "2010-02-11"),
    ("SMH", "VanEck Semiconductor ETF", XNAS, 20, 250, "2011-12-20"),
    ("EEM", "iShares MSCI Emerging Markets ETF", ARCX, 18, 42, "2003-04-14"),
    ("HYG", "iShares iBoxx $ High Yield Corporate Bond ETF", ARCX, 15, 78, "2007-04-11"),
    ("GDX", "VanEck Gold Miners ETF", ARCX, 13, 35, "2006-05-22"),
    ("SLV", "iShares Silver Trust", ARCX, 12, 27, "2006-04-28"),
    ("ARKK", "ARK Innovation ETF", ARCX, 6, 48, "2014-10-31"),
    ("SQQQ", "ProShares UltraPro Short QQQ", XNAS, 3, 10, "2010-02-11"),
    ("USO", "United States Oil Fund, LP", ARCX, 1.3, 75, "2006-04-10"),
)

# pair, base currency name, reference price, listed
_CRYPTO: tuple[tuple[str, str, float, str], ...] = (
    ("BTC/USD", "Bitcoin", 60_000.0, "2013-01-01"),
    ("ETH/USD", "Ethereum", 3_000.0, "2016-05-01"),
    ("SOL/USD", "Solana", 150.0, "2020-04-10"),
    ("XRP/USD", "XRP", 0.55, "2014-01-02"),
    ("DOGE/USD", "Dogecoin", 0.15, "2014-01-02"),
    ("USDT/USD", "Tether", 1.0, "2015-03-02"),
    ("USDC/USD", "USD Coin", 1.0, "2018-10-01"),
    ("ADA/USD", "Cardano", 0.45, "2017-10-02"),
    ("AVAX/USD", "Avalanche", 35.0, "2020-09-22"),
    ("LINK/USD", "Chainlink", 15.0, "2017-11-01"),
    ("DOT/USD", "Polkadot", 7.0, "2020-08-20"),
    ("LTC/USD", "Litecoin", 80.0, "2013-06-03"),
    ("BCH/USD", "Bitcoin Cash", 450.0, "2017-08-01"),
    ("SHIB/USD", "Shiba Inu", 0.00002, "2021-05-10"),
    ("UNI/USD", "Uniswap", 8.0, "2020-09-17"),
    ("AAVE/USD", "Aave", 100.0, "2020-10-02"),
    ("MKR/USD", "Maker", 2_500.0, "2017-12-01"),
    ("XTZ/USD", "Tezos", 0.9, "2017-07-03"),
    ("CRV/USD", "Curve DAO Token", 0.4, "2020-08-14"),
    ("GRT/USD", "The Graph", 0.2, "2020-12-17"),
    ("BAT/USD", "Basic Attention Token", 0.25, "2017-06-01"),
    ("SUSHI/USD", "SushiSwap", 1.0, "2020-09-01"),
    ("YFI/USD", "yearn.finance", 7_000.0, "2020-07-20"),
    ("PEPE/USD", "Pepe", 0.00001, "2023-04-17"),
    ("ETH/BTC", "Ethereum", 0.05, "2016-05-01"),
    ("BTC/USDT", "Bitcoin", 60_000.0, "2017-01-02"),
)

_CURRENCY_NAMES = {
    "USD": "United States Dollar", "EUR": "Euro", "GBP": "British Pound", "JPY": "Japanese Yen",
    "CHF": "Swiss Franc", "AUD": "Australian Dollar", "CAD": "Canadian Dollar",
    "NZD": "New Zealand Dollar", "SEK": "Swedish Krona", "NOK": "Norwegian Krone",
    "MXN": "Mexican Peso", "CNH": "Chinese Yuan Offshore", "HKD": "Hong Kong Dollar",
    "SGD": "Singapore Dollar", "ZAR": "South African Rand", "BTC": "Bitcoin", "USDT": "Tether",
}
_FX = ("EUR/USD", "USD/JPY", "GBP/USD", "AUD/USD", "USD/CAD", "USD/CHF", "NZD/USD", "EUR/GBP",
       "EUR/JPY", "GBP/JPY", "EUR/CHF", "USD/SEK", "USD/NOK", "USD/MXN", "USD/CNH", "USD/HKD",
       "USD/SGD", "USD/ZAR", "AUD/JPY", "EUR/AUD")

_INDICES: tuple[tuple[str, str, str], ...] = (
    ("SPX", "S&P 500", "1957-03-04"), ("NDX", "Nasdaq-100", "1985-01-31"),
    ("DJI", "Dow Jones Industrial Average", "1896-05-26"), ("RUT", "Russell 2000", "1984-01-02"),
    ("RUA", "Russell 3000", "1984-01-02"), ("RUI", "Russell 1000", "1984-01-02"),
    ("VIX", "Cboe Volatility Index", "1993-01-19"), ("VXN", "Cboe Nasdaq-100 Volatility Index", "2001-01-23"),
    ("COMP", "Nasdaq Composite", "1971-02-05"), ("OEX", "S&P 100", "1983-03-11"),
    ("MID", "S&P MidCap 400", "1991-06-19"), ("SML", "S&P SmallCap 600", "1994-10-28"),
    ("SOX", "PHLX Semiconductor Index", "1993-12-01"), ("NYA", "NYSE Composite", "1966-01-03"),
    ("DJT", "Dow Jones Transportation Average", "1896-05-26"), ("XAU", "PHLX Gold/Silver Index", "1979-01-02"),
)

#: Underlyings of the simulated options chains.
OPTION_ROOTS = ("SPY", "QQQ", "AAPL", "MSFT", "NVDA", "TSLA")

_SYLLABLE_START = (
    "Al", "Am", "Ar", "Ax", "Bel", "Bri", "Cal", "Cor", "Cy", "Dal", "Del", "Dyn", "El", "En", "Ev",
    "Fal", "Fer", "Gal", "Gen", "Hal", "Hel", "Hor", "Il", "In", "Jan", "Jov", "Kal", "Ker", "Lam",
    "Lor", "Lum", "Mar", "Mer", "Mon", "Nav", "Nor", "Nov", "Oc", "Om", "Or", "Pal", "Per", "Pol",
    "Pro", "Quin", "Ral", "Reg", "Ros", "Sal", "Sel", "Sol", "Syn", "Tal", "Tel", "Ter", "Tri",
    "Ul", "Un", "Val", "Ven", "Ver", "Vir", "Wel", "Wyn", "Xan", "Yar", "Zel", "Zen",
)
_SYLLABLE_MID = ("a", "e", "i", "o", "u", "", "an", "er", "is", "or", "en", "ar", "y", "")
_SYLLABLE_END = (
    "tra", "vex", "dyne", "tek", "gen", "ora", "ix", "on", "ant", "ex", "ia", "ium", "co", "lux",
    "sys", "tis", "via", "nix", "ara", "eon", "ent", "ics", "ano", "ova", "ton", "well", "field",
    "stone", "ridge", "mark", "point", "wave", "core", "gate",
)
_COMPANY_SUFFIX = (
    "Inc.", "Corp.", "Holdings, Inc.", "Therapeutics, Inc.", "Technologies, Inc.",
    "Pharmaceuticals, Inc.", "Biosciences, Inc.", "Energy Corp.", "Group, Inc.", "Systems, Inc.",
    "Semiconductor Corp.", "Software, Inc.", "Industries, Inc.", "Brands, Inc.", "Resources Corp.",
    "Networks, Inc.", "Medical, Inc.", "Properties, Inc.", "Financial Corp.", "Bancorp, Inc.",
)
_ADR_SUFFIX = ("plc ADR", "AG ADR", "S.A. ADR", "Ltd. ADR", "N.V. ADR", "SE ADR", "K.K. ADR")
_ETF_ISSUER = (
    "iShares", "Vanguard", "SPDR", "Invesco", "Schwab", "First Trust", "Global X", "ProShares",
    "VanEck", "WisdomTree", "Direxion", "JPMorgan", "Fidelity", "Franklin", "Pacer", "Amplify",
)
_ETF_THEME = (
    "Core S&P Small-Cap", "MSCI Emerging Markets", "Semiconductor", "Short-Term Treasury",
    "Dividend Growth", "Clean Energy", "Cybersecurity", "Robotics & AI", "High Yield Bond",
    "Municipal Bond", "Biotech", "Regional Banks", "Real Estate", "Momentum Factor",
    "Quality Factor", "Low Volatility", "Value Factor", "Intermediate Corporate Bond", "Gold Miners",
    "China Large-Cap", "Japan Equity", "Europe Equity", "Infrastructure", "Cloud Computing",
    "Uranium", "Lithium & Battery Tech", "Water Resources", "Aerospace & Defense", "Healthcare",
    "Consumer Staples", "Utilities", "Industrials", "Materials", "Communication Services",
    "TIPS Bond", "Floating Rate", "Preferred Securities", "Covered Call", "Equal Weight",
    "Mid-Cap Growth", "Small-Cap Value", "Total International", "Long-Term Treasury",
)
_ETF_LEVERAGE = ("", "", "", "", "Ultra ", "2x Bull ", "3x Bear ")


@dataclass(frozen=True)
class Reference:
    """The master list, one entry per instrument; `rank` counts from 0 within `scale_group`."""

    symbol: list[str]
    name: list[str]
    category: list[str]
    type: list[str | None]
    listing: np.ndarray      # int8: XNYS..CRYPTO; -1 for reference-only rows (fx, indices)
    currency: list[str]
    ref_cap: np.ndarray      # float64 $, NaN where a cap means nothing
    ref_price: np.ndarray    # float64 $ at REFERENCE_DAY
    list_day: np.ndarray     # int64 date ordinals
    delist_day: np.ndarray   # int64 date ordinals; NEVER if still listed
    scale_group: np.ndarray  # int8: EQUITY, OTC, CRYPTO_GROUP, REFERENCE_ONLY
    rank: np.ndarray         # int64

    @functools.cached_property
    def index(self) -> dict[str, int]:
        return {symbol: i for i, symbol in enumerate(self.symbol)}

    def __len__(self) -> int:
        return len(self.symbol)


#: The day at which `ref_price` and `ref_cap` hold.
REFERENCE_DAY = date(2024, 6, 28)


def well_known() -> frozenset[str]:
    """The fixed, well-known names at the top of the list (stocks and ETFs)."""
    return frozenset(row[0] for row in (*_EQUITIES, *_ETFS))


def _bits(field: str, n: int) -> np.ndarray:
    keys = np.full(n, derive(_UNIVERSE_KEY, text_key(field))[0], dtype=np.uint64)
    return bits(keys, np.arange(n, dtype=np.uint64))


def _u(field: str, n: int) -> np.ndarray:
    return uniform53(_bits(field, n))


def _z(field: str, n: int) -> np.ndarray:
    return normal(_bits(field, n))


def _weekday(ordinal: int) -> int:
    """The ordinal moved forward to a Monday if it falls on a weekend."""
    weekday = date.fromordinal(ordinal).weekday()
    return ordinal + (7 - weekday if weekday >= 5 else 0)


def _pick(options: tuple[str, ...], u: float) -> str:
    return options[min(int(u * len(options)), len(options) - 1)]


def _word(u: np.ndarray) -> str:
    return (_pick(_SYLLABLE_START, u[0]) + _pick(_SYLLABLE_MID, u[1]) + _pick(_SYLLABLE_END, u[2])).capitalize()


def _ticker_candidates(word: str, length: int, u: float) -> list[str]:
    letters = word.upper()
    consonants = letters[0] + "".join(c for c in letters[1:] if c not in "AEIOU")
    out = [consonants[:length], letters[:length], letters[0] + letters[2:length + 1]]
    for shift in range(1, 4):
        out.append(consonants[:length - 1] + consonants[min(len(consonants) - 1, length - 1 + shift)])
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    seed = int(u * 2**40)
    for _ in range(40):
        seed = (seed * 6364136223846793005 + 1442695040888963407) % 2**64
        tail = "".join(alphabet[(seed >> (8 * p)) % 26] for p in range(length - 1))
        out.append(letters[0] + tail)
    return [t for t in out if len(t) == length and t.isalpha()]


@functools.cache
def reference() -> Reference:
    """The master list (built once per process; identical in every process)."""
    rows: list[dict] = []
    # Index symbols are reserved up front so no generated stock takes one.
    taken: set[str] = {symbol for symbol, _, _ in _INDICES}

    def add(**row) -> None:
        taken.add(row["symbol"])
        rows.append(row)

    for symbol, name, listing, type_, cap, price, listed, delisted in _EQUITIES:
        add(symbol=symbol, name=name, category="us_equities", type=type_, listing=listing, currency="USD",
            ref_cap=cap * 1e9, ref_price=price, list_day=date.fromisoformat(listed).toordinal(),
            delist_day=date.fromisoformat(delisted).toordinal() if delisted else NEVER, scale_group=EQUITY)
    for symbol, name, listing, cap, price, listed in _ETFS:
        add(symbol=symbol, name=name, category="etf", type="ETF", listing=listing, currency="USD",
            ref_cap=cap * 1e9, ref_price=price, list_day=date.fromisoformat(listed).toordinal(),
            delist_day=NEVER, scale_group=EQUITY)
    _generate_equities(add, taken)
    _generate_otc(add, taken)
    for symbol, base, price, listed in _CRYPTO:
        quote = symbol.split("/")[1]
        add(symbol=symbol, name=f"{base} - {_CURRENCY_NAMES[quote]}", category="crypto", type=None,
            listing=CRYPTO, currency=quote, ref_cap=np.nan, ref_price=price,
            list_day=date.fromisoformat(listed).toordinal(), delist_day=NEVER, scale_group=CRYPTO_GROUP)
    for pair in _FX:
        base, quote = pair.split("/")
        add(symbol=pair, name=f"{_CURRENCY_NAMES[base]} - {_CURRENCY_NAMES[quote]}", category="fx", type=None,
            listing=-1, currency=quote, ref_cap=np.nan, ref_price=np.nan,
            list_day=date(1990, 1, 2).toordinal(), delist_day=NEVER, scale_group=REFERENCE_ONLY)
    for symbol, name, listed in _INDICES:
        add(symbol=symbol, name=name, category="indices", type="INDEX", listing=-1, currency="USD",
            ref_cap=np.nan, ref_price=np.nan, list_day=date.fromisoformat(listed).toordinal(),
            delist_day=NEVER, scale_group=REFERENCE_ONLY)

    def column(key: str, dtype=None):
        values = [row[key] for row in rows]
        return np.array(values, dtype=dtype) if dtype else values

    ref_cap = column("ref_cap", np.float64)
    scale_group = column("scale_group", np.int8)
    rank = np.zeros(len(rows), dtype=np.int64)
    symbols = column("symbol")
    for group in (EQUITY, OTC, CRYPTO_GROUP, REFERENCE_ONLY):
        members = np.flatnonzero(scale_group == group)
        if group == EQUITY or group == OTC:
            # Largest first; ties (none in practice) by symbol so the order is total.
            order = sorted(members, key=lambda i: (-ref_cap[i], symbols[i]))
        else:
            order = list(members)
        rank[np.array(order, dtype=np.int64)] = np.arange(len(order))
    if len(set(symbols)) != len(symbols):  # pragma: no cover - guarded by `taken`
        raise RuntimeError("duplicate symbols in the simulated universe")
    return Reference(
        symbol=symbols, name=column("name"), category=column("category"), type=column("type"),
        listing=column("listing", np.int8), currency=column("currency"), ref_cap=ref_cap,
        ref_price=column("ref_price", np.float64), list_day=column("list_day", np.int64),
        delist_day=column("delist_day", np.int64), scale_group=scale_group, rank=rank,
    )


def _dates(u_when: np.ndarray, u_new: np.ndarray, new_share: np.ndarray | float,
           since: date = date(1975, 1, 2)) -> np.ndarray:
    """Listing ordinals: most before 2004 (so the early universe is full), the rest since."""
    old_from, old_to = since.toordinal(), _GENERATED_FROM.toordinal() - 1
    new_from, new_to = _GENERATED_FROM.toordinal(), _GENERATED_TO.toordinal()
    old = old_from + (u_when * (old_to - old_from)).astype(np.int64)
    new = new_from + (u_when * (new_to - new_from)).astype(np.int64)
    return np.array([_weekday(int(d)) for d in np.where(u_new < new_share, new, old)], dtype=np.int64)


def _delistings(list_day: np.ndarray, u_whether: np.ndarray, u_when: np.ndarray, share: float) -> np.ndarray:
    start = np.maximum(list_day + 400, date(2004, 3, 1).toordinal())
    end = _GENERATED_TO.toordinal()
    when = start + (u_when * np.maximum(end - start, 0)).astype(np.int64)
    out = np.where((u_whether < share) & (start < end), when, NEVER)
    return np.array([d if d == NEVER else _weekday(int(d)) for d in out], dtype=np.int64)


def _generate_equities(add, taken: set[str]) -> None:
    n = _N_EQUITY_GENERATED
    u_kind, u_listing, u_cap, u_price = _u("eq.kind", n), _u("eq.listing", n), _z("eq.cap", n), _z("eq.price", n)
    u_when, u_new, u_del, u_del_when = _u("eq.when", n), _u("eq.new", n), _u("eq.del", n), _u("eq.del_when", n)
    u_names = np.stack([_u(f"eq.name{k}", n) for k in range(6)], axis=1)
    is_etf = u_kind < _ETF_SHARE
    is_adr = (~is_etf) & (u_kind > 0.93)
    cap = np.where(is_etf, 6e8 * np.exp(1.9 * u_cap), 1.5e9 * np.exp(1.8 * u_cap))
    cap = np.clip(cap, np.where(is_etf, 1e7, 5e7), np.where(is_etf, 1.5e11, 2.8e11))
    price = np.clip(np.exp(np.log(35.0) + 0.12 * np.log(cap / 1.5e9) + 0.9 * u_price), 2.5, 1500.0)
    list_day = np.where(is_etf, _dates(u_when, u_new, 0.45, since=date(1993, 1, 29)),  # the first US ETF
                        _dates(u_when, u_new, 0.2))
    delist_day = _delistings(list_day, u_del, u_del_when, 0.18)
    for i in range(n):
        u = u_names[i]
        if is_etf[i]:
            listing = ARCX if u_listing[i] < 0.8 else (BATS if u_listing[i] < 0.92 else XNAS)
            name = f"{_pick(_ETF_ISSUER, u[0])} {_pick(_ETF_LEVERAGE, u[1])}{_pick(_ETF_THEME, u[2])} ETF"
            length = 3 if u[3] < 0.55 else 4
            word = _pick(_ETF_ISSUER, u[0])[0] + _pick(_ETF_THEME, u[2]).replace(" ", "")
        else:
            if u_listing[i] < 0.52:
                listing, length = XNAS, 4 if u[3] < 0.9 else 3
            elif u_listing[i] < 0.92:
                listing, length = XNYS, 3 if u[3] < 0.9 else 2
            elif u_listing[i] < 0.97:
                listing, length = XASE, 3
            else:
                listing, length = (ARCX if u_listing[i] < 0.98 else BATS), 4
            word = _word(u)
            suffix = _pick(_ADR_SUFFIX, u[4]) if is_adr[i] else _pick(_COMPANY_SUFFIX, u[4])
            name = f"{word} {suffix}"
        symbol = next((t for t in _ticker_candidates(word, length, u[5]) if t not in taken), None)
        if symbol is None:  # pragma: no cover - 40 random candidates all taken
            raise RuntimeError(f"no free ticker for {name}")
        add(symbol=symbol, name=name, category="etf" if is_etf[i] else "us_equities",
            type="ETF" if is_etf[i] else ("ADRC" if is_adr[i] else "CS"), listing=listing, currency="USD",
            ref_cap=float(cap[i]), ref_price=float(price[i]), list_day=int(list_day[i]),
            delist_day=int(delist_day[i]), scale_group=EQUITY)


def _generate_otc(add, taken: set[str]) -> None:
    n = _N_OTC
    u_kind, u_cap, u_price, u_sub = _u("otc.kind", n), _z("otc.cap", n), _z("otc.price", n), _u("otc.sub", n)
    u_when, u_new, u_del, u_del_when = _u("otc.when", n), _u("otc.new", n), _u("otc.del", n), _u("otc.del_when", n)
    u_names = np.stack([_u(f"otc.name{k}", n) for k in range(6)], axis=1)
    cap = np.clip(1e8 * np.exp(2.0 * u_cap), 1e6, 5e10)
    sub_dollar = u_sub < 0.55
    price = np.where(sub_dollar, np.clip(0.2 * np.exp(1.2 * u_price), 0.01, 0.95),
                     np.clip(8.0 * np.exp(1.0 * u_price), 1.2, 200.0))
    list_day = _dates(u_when, u_new, 0.3)
    delist_day = _delistings(list_day, u_del, u_del_when, 0.25)
    for i in range(n):
        u = u_names[i]
        word = _word(u)
        if u_kind[i] < 0.35:  # foreign ordinary shares: 5 letters ending in F
            type_, name, ending = "OS", f"{word} {_pick(('Ltd.', 'AG', 'S.A.', 'plc', 'N.V.'), u[4])}", "F"
        elif u_kind[i] < 0.55:  # unsponsored ADRs: 5 letters ending in Y
            type_, name, ending = "ADRC", f"{word} {_pick(_ADR_SUFFIX, u[4])}", "Y"
        else:
            type_, name, ending = "CS", f"{word} {_pick(_COMPANY_SUFFIX, u[4])}", ""
        length = 4
        symbol = next(t + ending for t in _ticker_candidates(word, length, u[5]) if t + ending not in taken)
        add(symbol=symbol, name=name, category="otc", type=type_, listing=OTCM, currency="USD",
            ref_cap=float(cap[i]), ref_price=float(price[i]), list_day=int(list_day[i]),
            delist_day=int(delist_day[i]), scale_group=OTC)


def third_fridays(after: date, months: int) -> list[date]:
    """Monthly option expirations (third Friday) in the `months` months starting with `after`'s."""
    out = []
    year, month = after.year, after.month
    for _ in range(months):
        first = date(year, month, 1)
        out.append(first + timedelta(days=(4 - first.weekday()) % 7 + 14))
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return out
