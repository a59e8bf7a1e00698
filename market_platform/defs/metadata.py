"""Metadata every table-producing asset reports: rows, symbols, time span and a small preview."""

from __future__ import annotations

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc


def table_metadata(table: pa.Table, *, preview_rows: int = 5) -> dict[str, dg.MetadataValue]:
    metadata: dict[str, dg.MetadataValue] = {"rows": dg.MetadataValue.int(table.num_rows)}
    if "symbol" in table.column_names:
        metadata["symbols"] = dg.MetadataValue.int(pc.count_distinct(table["symbol"]).as_py())
    if "ts" in table.column_names and table.num_rows:
        bounds = pc.min_max(table["ts"]).as_py()
        metadata["first_ts"] = dg.MetadataValue.text(bounds["min"].isoformat())
        metadata["last_ts"] = dg.MetadataValue.text(bounds["max"].isoformat())
    if table.num_rows:
        metadata["preview"] = dg.MetadataValue.md(table.slice(0, preview_rows).to_pandas().to_markdown(index=False))
    return metadata
