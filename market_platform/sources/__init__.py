"""Market data sources: one adapter per vendor, plus the deterministic simulated market (`sim`)."""
