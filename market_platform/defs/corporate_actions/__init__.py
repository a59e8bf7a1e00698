"""Corporate actions as data: splits, dividends, renames and delistings from the vendors, into the
lake (`corporate_actions`, one file per source) and the tick store; refreshed before each session
and for tickers that appear in the universe. Bars stay raw; adjusted reads use these rows."""
