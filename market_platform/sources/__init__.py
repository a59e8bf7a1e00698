"""Vendor adapters behind small interfaces; no Dagster imports."""
