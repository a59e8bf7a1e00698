"""Corporate actions of the simulated market: splits, dividends, renames and delistings.

The daily price path of `SimMarket` is the *continuous* price, what a fully adjusted series
shows, pinned to the reference price on REFERENCE_DAY. Raw prices, the ones that trade (every
trade, quote and bar the market serves), are the continuous price times C(d), the cumulative
factor of the actions in effect on day d relative to REFERENCE_DAY:

    C(d) = prod(r for actions with REFERENCE_DAY < ex_date <= d)        (d after REFERENCE_DAY)
    C(d) = 1 / prod(r for actions with d < ex_date <= REFERENCE_DAY)    (d before it)

with r = split_from / split_to for a split and r = 1 - cash_amount / P for a dividend, P the
previous session's closing price on the path in raw terms. A session opens at the previous close
(in continuous terms), so raw prices jump on every ex-date by exactly r and equal the continuous
path around REFERENCE_DAY. Trade sizes scale by the inverse of the splits' part of C (whole
shares stay whole, fractional ones stay in eighths), so volumes scale inversely to prices.

What happens, all deterministic (draws keyed by symbol; amounts and split decisions follow the
seed's prices):

- **Dividends**: about 40 % of stocks and a quarter of ETFs pay quarterly, from their listing
  on, each on a fixed cycle of months and day; amounts are a quarter of a yearly yield (0.4-3.4 %)
  of the price at the time, in cents. Now and then (1 in 25 payer-years) a special dividend of
  2-8 %. Declared 2-5 weeks ahead; record date the ex-date (T+1 settlement, from 2024-05-28) or
  the next session (before); paid 2-4 weeks after.
- **Splits**: generated names split 3:2, 2:1 or 3:1 when their raw price runs above $250, and
  reverse-split 1:10 when it sinks below $2, at most once a year; the well-known names of the
  reference list split only as `_CURATED_SPLITS` says (among them a 2:1 on a half day).
- **Renames**: `_RENAMES` (RDS.A became SHEL): the row's history continues under the new symbol,
  and the old symbol trades until the day before.
- **Delistings**: the reference's delisted names (`delist_day`): the ex-date is the first session
  the symbol no longer trades.
"""

from __future__ import annotations

import calendar as pycalendar
import functools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date

import numpy as np
import pyarrow as pa

from market_platform import calendar
from market_platform.schemas import CORPORATE_ACTIONS, action_id, conform
from market_platform.sources import sim_random as rnd
from market_platform.sources.sim_reference import EQUITY, OTC, REFERENCE_DAY, Reference

SPLIT, DIVIDEND, RENAME, DELISTING = range(4)
TYPE_NAMES = ("split", "dividend", "rename", "delisting")
#: Actions are generated for ex-dates in [FIRST, HORIZON] (a fixed horizon: the same everywhere).
FIRST, HORIZON = date(2004, 1, 2), date(2027, 12, 31)
#: From this day US stocks settle T+1, so the record date is the ex-date (before: the next session).
_T_PLUS_ONE = date(2024, 5, 28)

#: (symbol, ex-date, split_from, split_to, announced): the only splits of the reference list's
#: well-known names. AAPL's falls on a half day (the day after Thanksgiving 2026), MSFT's too.
_CURATED_SPLITS: tuple[tuple[str, str, float, float, str], ...] = (
    ("TSLA", "2022-08-25", 1.0, 3.0, "2022-08-05"),
    ("NVDA", "2024-06-10", 1.0, 10.0, "2024-05-22"),
    ("RIVN", "2025-03-03", 10.0, 1.0, "2025-02-12"),
    ("MSFT", "2025-07-03", 2.0, 3.0, "2025-06-11"),
    ("AAPL", "2026-11-27", 1.0, 2.0, "2026-10-29"),
)
#: symbol -> (months cycle 0-2: first month of the quarter + cycle, day of month): dividend
#: calendars of well-known payers; AAPL's goes ex on the last day of Feb/May/Aug/Nov.
_CURATED_DIVIDENDS: dict[str, tuple[int, int]] = {"AAPL": (1, 31), "MSFT": (1, 15), "JPM": (0, 5), "KO": (2, 14)}
#: current symbol -> ((old symbol, first day under the current one), ...), oldest first.
_RENAMES: dict[str, tuple[tuple[str, str], ...]] = {"SHEL": (("RDS.A", "2022-01-31"),)}

_SHIFT = 22  # lookup keys are row << 22 | ordinal (ordinals stay below 2**22 until 9999)


@dataclass(frozen=True)
class Schedule:
    """Every action of the simulated market, and the price factors they imply."""

    row: np.ndarray         # int64 reference row
    kind: np.ndarray        # int8 SPLIT, DIVIDEND, RENAME, DELISTING
    ex: np.ndarray          # int64 ordinals
    announced: np.ndarray
    record: np.ndarray      # int64 ordinals, 0 where none
    pay: np.ndarray
    split_from: np.ndarray  # float64, NaN where none
    split_to: np.ndarray
    cash: np.ndarray
    special: np.ndarray     # bool: a special dividend
    symbol: list[str]
    new_symbol: list[str | None]
    lookup_key: np.ndarray  # int64 row << _SHIFT | ordinal from which lookup_log applies, sorted
    lookup_log: np.ndarray  # log C from that day on
    lookup_split: np.ndarray  # log of the splits' part of C from that day on

    def factors(self, rows: np.ndarray, ordinal: int) -> tuple[np.ndarray, np.ndarray]:
        """(log C, log of its splits' part) of `rows` on day `ordinal`."""
        rows = np.asarray(rows, dtype=np.int64)
        if not len(self.lookup_key) or not len(rows):
            return np.zeros(len(rows)), np.zeros(len(rows))
        at = np.searchsorted(self.lookup_key, (rows << _SHIFT) | ordinal, side="right") - 1
        ok = (at >= 0) & ((self.lookup_key[np.maximum(at, 0)] >> _SHIFT) == rows)
        at = np.maximum(at, 0)
        return np.where(ok, self.lookup_log[at], 0.0), np.where(ok, self.lookup_split[at], 0.0)

    def table(self, index: np.ndarray) -> pa.Table:
        """The actions at `index` as schemas.CORPORATE_ACTIONS rows (source `sim`)."""
        def dates(values: np.ndarray) -> pa.Array:
            days = values[index]
            return pa.array([date.fromordinal(int(d)) if d else None for d in days], pa.date32())

        def floats(values: np.ndarray) -> pa.Array:
            v = values[index]
            return pa.array(v, pa.float64(), mask=np.isnan(v))

        kinds = [TYPE_NAMES[k] for k in self.kind[index]]
        dividend_type = [("SC" if s else "CD") if k == DIVIDEND else None
                         for k, s in zip(self.kind[index], self.special[index], strict=True)]
        symbols = [self.symbol[i] for i in index]
        ex = [date.fromordinal(int(d)) for d in self.ex[index]]
        return conform(pa.table({
            "action_id": [action_id(k, s, e, t) for k, s, e, t in zip(kinds, symbols, ex, dividend_type, strict=True)],
            "symbol": symbols, "action_type": kinds, "ex_date": pa.array(ex, pa.date32()),
            "announced_date": dates(self.announced), "split_from": floats(self.split_from),
            "split_to": floats(self.split_to), "cash_amount": floats(self.cash), "dividend_type": dividend_type,
            "record_date": dates(self.record), "pay_date": dates(self.pay),
            "new_symbol": [self.new_symbol[i] for i in index], "source": ["sim"] * len(index),
        }, schema=CORPORATE_ACTIONS.with_metadata(None)), CORPORATE_ACTIONS)


class Names:
    """Which symbol a reference row trades under on a day (renames), and the reverse."""

    def __init__(self, ref: Reference) -> None:
        self._ref = ref
        #: row -> sorted ((first ordinal under the next name, old name), ...)
        self.history: dict[int, tuple[tuple[int, str], ...]] = {}
        #: old symbol -> (row, first ordinal it traded under that name, first ordinal it no longer did)
        self.aliases: dict[str, tuple[int, int, int]] = {}
        for current, olds in _RENAMES.items():
            row = ref.index[current]
            steps = tuple((date.fromisoformat(until).toordinal(), old) for old, until in olds)
            self.history[row] = steps
            since = 0
            for until, old in steps:
                self.aliases[old] = (row, since, until)
                since = until

    def symbol(self, row: int, ordinal: int) -> str:
        for until, old in self.history.get(int(row), ()):
            if ordinal < until:
                return old
        return self._ref.symbol[row]

    def symbols(self, rows: np.ndarray, ordinal: int) -> list[str]:
        return [self.symbol(i, ordinal) for i in rows]

    def row(self, symbol: str) -> int | None:
        """The reference row of `symbol` (a current or an old symbol), None if unknown."""
        if symbol in self.aliases:
            return self.aliases[symbol][0]
        return self._ref.index.get(symbol)

    def valid(self, symbol: str, ordinal: int) -> bool:
        """Whether the row of `symbol` traded under that name on `ordinal`."""
        row = self.row(symbol)
        return row is not None and self.symbol(row, ordinal) == symbol

    def known(self) -> list[str]:
        return [*self._ref.symbol, *self.aliases]


@functools.lru_cache(maxsize=1)
def _sessions() -> np.ndarray:
    return np.array([d.toordinal() for d in calendar.sessions(FIRST, HORIZON)], dtype=np.int64)


def _on_or_after(ordinals: np.ndarray) -> np.ndarray:
    """The first session on or after each ordinal (HORIZON + 1 when past the last)."""
    s = _sessions()
    at = np.searchsorted(s, ordinals, side="left")
    return np.where(at < len(s), s[np.minimum(at, len(s) - 1)], HORIZON.toordinal() + 1)


def _before(ordinals: np.ndarray, sessions_back: int | np.ndarray = 1) -> np.ndarray:
    """The session `sessions_back` sessions before each ordinal (before FIRST: as many weekdays back)."""
    s = _sessions()
    at = np.searchsorted(s, ordinals, side="left") - sessions_back
    return np.where(at >= 0, s[np.maximum(at, 0)], ordinals - (np.asarray(sessions_back) * 7 + 4) // 5)


@functools.lru_cache(maxsize=1)
def _symbol_keys(symbols: tuple[str, ...]) -> dict[str, int]:
    return {s: rnd.text_key("sim.actions", s) for s in symbols}


def _u(name: str, symbols: list[str], counters: np.ndarray | None = None) -> np.ndarray:
    """A uniform per symbol (and counter) for a purpose: the same for every seed."""
    from market_platform.sources.sim_reference import reference

    table = _symbol_keys(tuple(reference().symbol))
    keys = rnd.derive(np.array([table[s] for s in symbols], dtype=np.uint64), rnd.text_key(name))
    c = np.zeros(len(symbols), np.uint64) if counters is None else counters.astype(np.uint64)
    return rnd.uniform53(rnd.bits(keys, c))


LogClose = Callable[[np.ndarray, np.ndarray], np.ndarray]


def build(ref: Reference, log_close: LogClose, fixed_names: frozenset[str]) -> Schedule:
    """The schedule of every action, given the continuous log closing price of (rows, ordinals).

    `fixed_names`: the well-known names, which split only as curated.
    """
    names = Names(ref)
    stock = np.flatnonzero((ref.scale_group == EQUITY) & np.isin(np.array(ref.category), ["us_equities", "etf"]))
    first, horizon, ref_day = FIRST.toordinal(), HORIZON.toordinal(), REFERENCE_DAY.toordinal()
    parts: list[dict[str, np.ndarray]] = []

    splits = _splits(ref, stock, log_close, fixed_names, first, horizon, ref_day)
    parts.append(splits)
    dividends = _dividends(ref, stock, first, horizon)
    parts.append(dividends)

    # Renames and delistings move no price.
    rename_rows, rename_ex, rename_old, rename_new = [], [], [], []
    for row, steps in names.history.items():
        for until, old in steps:
            if first <= until <= horizon:
                rename_rows.append(row)
                rename_ex.append(int(_on_or_after(np.array([until]))[0]))
                rename_old.append(old)
                rename_new.append(names.symbol(row, until))
    delisted = np.flatnonzero((ref.delist_day >= first) & (ref.delist_day <= horizon)
                              & np.isin(ref.scale_group, [EQUITY, OTC]))
    delist_ex = _on_or_after(ref.delist_day[delisted])
    delisted, delist_ex = delisted[delist_ex <= horizon], delist_ex[delist_ex <= horizon]

    row = np.concatenate([splits["row"], dividends["row"], np.array(rename_rows, np.int64), delisted])
    kind = np.concatenate([np.full(len(splits["row"]), SPLIT), np.full(len(dividends["row"]), DIVIDEND),
                           np.full(len(rename_rows), RENAME), np.full(len(delisted), DELISTING)]).astype(np.int8)
    ex = np.concatenate([splits["ex"], dividends["ex"], np.array(rename_ex, np.int64), delist_ex])
    n_price = len(splits["row"]) + len(dividends["row"])
    n = len(row)

    def pad(values: np.ndarray, fill) -> np.ndarray:
        out = np.full(n, fill, dtype=np.asarray(values).dtype if len(values) else type(fill))
        out[: len(values)] = values
        return out

    announced = np.concatenate([splits["announced"], dividends["announced"],
                                _before(np.array(rename_ex, np.int64), 15), _before(delist_ex, 10)])
    record = pad(np.concatenate([np.zeros(len(splits["row"]), np.int64), dividends["record"]]), 0)
    pay = pad(np.concatenate([np.zeros(len(splits["row"]), np.int64), dividends["pay"]]), 0)
    split_from = pad(splits["from"], np.nan)
    split_to = pad(splits["to"], np.nan)
    special = pad(np.concatenate([np.zeros(len(splits["row"]), bool), dividends["special"]]), False)
    log_split_r = np.log(split_from[:n_price] / split_to[:n_price])
    log_split_r[len(splits["row"]):] = 0.0

    # Dividend factors need the raw previous close, which depends on every factor: solve by
    # fixed point (three rounds move amounts by far less than a cent).
    price_rows, price_ex = row[:n_price], ex[:n_price]
    is_div = kind[:n_price] == DIVIDEND
    prev = _before(price_ex)
    cont_prev = np.exp(log_close(price_rows, prev))
    log_r = np.where(is_div, np.log1p(-np.concatenate([np.zeros(len(splits["row"])), dividends["yield"]])),
                     log_split_r)
    cash = np.full(n_price, np.nan)
    for round_ in range(4):
        key, log_c, log_s = _lookup(price_rows, price_ex, log_r, log_split_r, ref_day)
        raw_prev = cont_prev * np.exp(_factor_at(key, log_c, price_rows, prev))
        if round_ == 0:
            cash = np.where(is_div, np.maximum(0.01, np.round(
                np.concatenate([np.zeros(len(splits["row"])), dividends["yield"]]) * raw_prev, 2)), np.nan)
            cash = np.where(is_div, np.minimum(cash, np.floor(raw_prev * 50.0) / 100.0), cash)  # at most half
        log_r = np.where(is_div, np.log1p(-np.where(is_div, cash, 0.0) / raw_prev), log_split_r)
    key, log_c, log_s = _lookup(price_rows, price_ex, log_r, log_split_r, ref_day)

    old_symbols = [names.symbol(r, int(e) - 1) for r, e in zip(row, ex, strict=True)]
    new_symbols: list[str | None] = [None] * n
    for j, new in enumerate(rename_new):
        new_symbols[n_price + j] = new
    return Schedule(
        row=row, kind=kind, ex=ex, announced=announced, record=record, pay=pay, split_from=split_from,
        split_to=split_to, cash=pad(cash, np.nan), special=special, symbol=old_symbols, new_symbol=new_symbols,
        lookup_key=key, lookup_log=log_c, lookup_split=log_s,
    )


def _lookup(rows: np.ndarray, ex: np.ndarray, log_r: np.ndarray, log_split_r: np.ndarray,
            ref_day: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row, the log factors from each ex-date on, relative to `ref_day`, as sorted lookup
    keys, with a base entry (ordinal 0) for the days before the row's first action."""
    order = np.lexsort((ex, rows))
    rows, ex = rows[order], ex[order]
    if not len(rows):
        return np.zeros(0, np.int64), np.zeros(0), np.zeros(0)
    starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    group = np.cumsum(np.r_[True, rows[1:] != rows[:-1]]) - 1
    index = np.arange(len(rows))
    last_by_ref = np.maximum.reduceat(np.where(ex <= ref_day, index, -1), starts)
    out = []
    for values in (log_r[order], log_split_r[order]):
        cum = np.cumsum(values)
        base = np.where(starts > 0, cum[np.maximum(starts - 1, 0)], 0.0)
        c = cum - base[group]
        at_ref = np.where(last_by_ref >= starts, c[np.maximum(last_by_ref, 0)], 0.0)
        out.append(np.r_[-at_ref, c - at_ref[group]])
    keys = np.r_[rows[starts] << _SHIFT, (rows << _SHIFT) | ex]
    sort = np.argsort(keys, kind="stable")
    return keys[sort], out[0][sort], out[1][sort]


def _factor_at(key: np.ndarray, log_c: np.ndarray, rows: np.ndarray, ordinals: np.ndarray) -> np.ndarray:
    at = np.searchsorted(key, (rows << _SHIFT) | ordinals, side="right") - 1
    ok = (at >= 0) & ((key[np.maximum(at, 0)] >> _SHIFT) == rows)
    return np.where(ok, log_c[np.maximum(at, 0)], 0.0)


def _splits(ref: Reference, stock: np.ndarray, log_close: LogClose, fixed_names: frozenset[str],
            first: int, horizon: int, ref_day: int) -> dict[str, np.ndarray]:
    rows, ex, announced, s_from, s_to = [], [], [], [], []
    for symbol, day, f, t, ann in _CURATED_SPLITS:
        rows.append(ref.index[symbol])
        ex.append(date.fromisoformat(day).toordinal())
        announced.append(date.fromisoformat(ann).toordinal())
        s_from.append(f)
        s_to.append(t)
    generated = np.array([i for i in stock if ref.symbol[i] not in fixed_names and ref.type[i] != "ETF"], np.int64)
    symbols = [ref.symbol[i] for i in generated]
    # One candidate day a year per name; forward from the reference day's year, then backward.
    years_forward = range(REFERENCE_DAY.year, HORIZON.year + 1)
    years_backward = range(REFERENCE_DAY.year, FIRST.year - 1, -1)
    for direction, years in ((1, years_forward), (-1, years_backward)):
        multiplier = np.zeros(len(generated))  # log of the splits' factor relative to ref_day
        for year in years:
            counter = np.full(len(generated), year, np.uint64)
            u_day, u_go, u_ratio = (_u(p, symbols, counter) for p in ("split.day", "split.go", "split.ratio"))
            start, end = date(year, 1, 1).toordinal(), date(year, 12, 31).toordinal()
            if direction > 0:
                start = max(start, ref_day + 1)
            else:
                end = min(end, ref_day)
            if start > end:
                continue
            day = _on_or_after(start + (u_day * (end - start)).astype(np.int64))
            ok = ((day <= min(end, horizon)) & (day >= first) & (ref.list_day[generated] + 365 <= day)
                  & (day < ref.delist_day[generated]))
            if direction > 0:
                price = np.exp(log_close(generated, _before(day)) + multiplier)  # raw, before the split
                forward = ok & (price > 250.0) & (u_go < 0.5)
                reverse = ok & (price < 2.0) & (u_go < 0.5)
            else:
                price = np.exp(log_close(generated, day) + multiplier)  # raw, after the split
                forward = ok & (price > 80.0) & (price < 200.0) & (u_go < 0.06)
                reverse = ok & (price > 10.0) & (price < 25.0) & (u_go > 0.985)
            ratio = np.where(u_ratio < 0.3, 1.5, np.where(u_ratio < 0.85, 2.0, 3.0))
            if direction > 0:
                ratio = np.where(price > 600.0, 3.0, ratio)
            f = np.where(forward, np.where(ratio == 1.5, 2.0, 1.0), 10.0)
            t = np.where(forward, np.where(ratio == 1.5, 3.0, ratio), 1.0)
            hit = forward | reverse
            log_r = np.log(f / t)
            # After a split (forward in time) prices are r times those before it.
            multiplier = np.where(hit, multiplier + direction * log_r, multiplier)
            rows.extend(generated[hit].tolist())
            ex.extend(day[hit].tolist())
            announced.extend(_before(day[hit], 10 + (u_day[hit] * 20).astype(np.int64)).tolist())
            s_from.extend(f[hit].tolist())
            s_to.extend(t[hit].tolist())
    return {"row": np.array(rows, np.int64), "ex": np.array(ex, np.int64), "announced": np.array(announced, np.int64),
            "from": np.array(s_from, np.float64), "to": np.array(s_to, np.float64)}


def _dividends(ref: Reference, stock: np.ndarray, first: int, horizon: int) -> dict[str, np.ndarray]:
    symbols = [ref.symbol[i] for i in stock]
    is_etf = np.array([ref.type[i] == "ETF" for i in stock])
    u_pay, u_yield, u_cycle, u_dom = (_u(p, symbols) for p in ("div.pay", "div.yield", "div.cycle", "div.dom"))
    payer = u_pay < np.where(is_etf, 0.25, 0.4)
    cycle = (u_cycle * 3).astype(np.int64)
    dom = 1 + (u_dom * 27).astype(np.int64)
    for symbol, (c, d) in _CURATED_DIVIDENDS.items():
        at = symbols.index(symbol)
        payer[at], cycle[at], dom[at] = True, c, d
    quarterly = 0.25 * (0.004 + 0.03 * u_yield)
    payers = np.flatnonzero(payer)
    rows, ex, frac, special = [], [], [], []
    for year in range(FIRST.year, HORIZON.year + 1):
        month_start = np.array([0] + [date(year, m, 1).toordinal() for m in range(1, 13)], np.int64)
        month_days = np.array([0] + [pycalendar.monthrange(year, m)[1] for m in range(1, 13)], np.int64)
        for quarter in range(4):
            months = 3 * quarter + 1 + cycle[payers]
            base = month_start[months] + np.minimum(dom[payers], month_days[months]) - 1
            rows.append(stock[payers])
            ex.append(_on_or_after(base))
            frac.append(quarterly[payers])
            special.append(np.zeros(len(payers), bool))
        counter = np.full(len(payers), year, np.uint64)
        payer_symbols = [symbols[i] for i in payers]
        u_sc, u_when, u_size = (_u(p, payer_symbols, counter) for p in ("sc.go", "sc.when", "sc.size"))
        go = u_sc < 0.04
        when = date(year, 1, 1).toordinal() + 15 + (u_when * 330).astype(np.int64)
        rows.append(stock[payers][go])
        ex.append(_on_or_after(when[go]))
        frac.append(0.02 + 0.06 * u_size[go])
        special.append(np.ones(int(go.sum()), bool))
    row, ex_day = np.concatenate(rows), np.concatenate(ex)
    frac_all, special_all = np.concatenate(frac), np.concatenate(special)
    listed = ((ex_day >= first) & (ex_day <= horizon) & (ref.list_day[row] + 90 <= ex_day)
              & (ex_day < ref.delist_day[row]))
    row, ex_day, frac_all, special_all = row[listed], ex_day[listed], frac_all[listed], special_all[listed]
    # One action per (row, ex-date, kind): a special dividend on a regular one's day moves a week.
    special_day = np.where(special_all, _on_or_after(ex_day + 7), ex_day)
    order = np.lexsort((special_all, special_day, row))
    row, ex_day, frac_all, special_all = row[order], special_day[order], frac_all[order], special_all[order]
    keep = np.r_[True, (row[1:] != row[:-1]) | (ex_day[1:] != ex_day[:-1]) | (special_all[1:] != special_all[:-1])]
    row, ex_day, frac_all, special_all = row[keep], ex_day[keep], frac_all[keep], special_all[keep]
    u_ann = _u("div.announced", [ref.symbol[i] for i in row], ex_day.astype(np.uint64))
    announced = _before(ex_day, 10 + (u_ann * 15).astype(np.int64))
    record = np.where(ex_day >= _T_PLUS_ONE.toordinal(), ex_day, _on_or_after(ex_day + 1))
    pay = _on_or_after(ex_day + 14 + (u_ann * 14).astype(np.int64))
    pay = np.where(pay > horizon, ex_day + 14, pay)
    return {"row": row, "ex": ex_day, "announced": announced, "record": record, "pay": pay,
            "yield": frac_all, "special": special_all}
