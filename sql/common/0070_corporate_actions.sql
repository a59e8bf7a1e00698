-- corporate_actions: splits, dividends, renames and delistings (schemas.CORPORATE_ACTIONS), as
-- reported by each source. Bars in this store are raw (as traded); adjusted prices are computed
-- at read time from these rows, as of a date (only actions with announced_date <= that date).
-- A plain table on both variants: a few rows per ticker and year, no time partitioning needed.
-- TickStore.write_corporate_actions replaces one source's rows in one transaction.
CREATE TABLE corporate_actions (
    action_id      text             NOT NULL,  -- {action_type}:{symbol}:{ex_date}[:{dividend_type}]
    symbol         text             NOT NULL,  -- ticker as traded before ex_date
    action_type    text             NOT NULL CHECK (action_type IN ('split', 'dividend', 'rename', 'delisting')),
    ex_date        date             NOT NULL,  -- first session the action is in effect
    announced_date date             NOT NULL,
    split_from     double precision CHECK (split_from > 0),
    split_to       double precision CHECK (split_to > 0),
    cash_amount    double precision CHECK (cash_amount >= 0),
    dividend_type  text             CHECK (dividend_type IN ('CD', 'SC')),
    record_date    date,
    pay_date       date,
    new_symbol     text,
    source         text             NOT NULL,  -- sim, polygon, alpaca
    PRIMARY KEY (action_id, source),
    CHECK (action_type <> 'split' OR (split_from IS NOT NULL AND split_to IS NOT NULL)),
    CHECK (action_type <> 'dividend' OR cash_amount IS NOT NULL),
    CHECK (action_type <> 'rename' OR new_symbol IS NOT NULL)
);
-- Adjustment reads walk a symbol's actions in ex_date order; renames are followed by new_symbol.
CREATE INDEX corporate_actions_symbol_idx ON corporate_actions (symbol, ex_date);
CREATE INDEX corporate_actions_new_symbol_idx ON corporate_actions (new_symbol) WHERE new_symbol IS NOT NULL;
