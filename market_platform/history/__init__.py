"""History: which vendors serve a session (`vendors`), universe snapshots (`universe`), resumable
backfills of bars into the lake (`bars`) and what the lake holds (`status`). Plain library code on
top of sources, storage and replay; the Dagster assets in `defs/` are thin wrappers over it."""
