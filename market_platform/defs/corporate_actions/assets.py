"""`corporate_actions`: what the vendors say about splits, dividends, renames and delistings."""

from typing import Optional

import dagster as dg
from pydantic import Field

from market_platform.defs.resources import LakeResource, TickStoreResource, VendorsResource
from market_platform.history import actions


class CorporateActionsConfig(dg.Config):
    tickers: Optional[list[str]] = Field(
        default=None, description="Only these tickers, over all history (default: every ticker, the recent window)")
    full: bool = Field(default=False, description="Fetch all history, not only the last 30 days and the year ahead")


@dg.asset(group_name="reference", kinds={"polygon", "alpaca", "parquet", "postgres"})
def corporate_actions(context: dg.AssetExecutionContext, config: CorporateActionsConfig, vendors: VendorsResource,
                      lake: LakeResource, tick_store: TickStoreResource) -> dg.MaterializeResult:
    """One row per corporate action (split, cash dividend, rename, delisting) and reporting source
    (polygon, alpaca; schemas.CORPORATE_ACTIONS), with its ex-date and announcement date: in the
    lake (`corporate_actions`, a file per source, replaced whole) and the tick store's table. Bars
    are stored raw; adjusted and point-in-time reads are computed from these rows."""
    v = vendors.vendors()
    done = actions.refresh(v, lake.lake(), tick_store.store(), full=config.full, tickers=config.tickers)
    if not done:
        raise dg.Failure("no vendor reports corporate actions: configure Polygon or Alpaca (or no keys: the replay)")
    metadata: dict[str, dg.MetadataValue] = {"vendors": dg.MetadataValue.text(v.describe())}
    for r in done:
        context.log.info(f"{r.source}: {r.fetched:,} actions with ex-dates {r.start} to {r.end}; {r.stored:,} stored")
        metadata[f"{r.source}_rows"] = dg.MetadataValue.int(r.stored)
        metadata[f"{r.source}_fetched"] = dg.MetadataValue.int(r.fetched)
        metadata[f"{r.source}_window"] = dg.MetadataValue.text(f"{r.start} to {r.end}")
        metadata[f"{r.source}_by_type"] = dg.MetadataValue.json(r.by_type)
    return dg.MaterializeResult(metadata=metadata)


corporate_actions_job = dg.define_asset_job("corporate_actions_job", selection=[corporate_actions])
