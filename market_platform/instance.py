"""Dagster's own storage (runs, events, schedules) on the tick store's PostgreSQL server.

`dagster.yaml` names `PlatformStorage` as custom storage, so the URL is resolved when an instance
loads, the same way the platform resolves its own: MARKET_DB_URL, or the embedded server under
MARKET_PLATFORM_HOME (started if needed). No URL, and so no password, is ever written into the
instance's config, which Dagster serializes into run workers' command lines.

The local directories (step stdout/stderr, artifacts) are resolved the same way, under the loading
process's own `$MARKET_PLATFORM_HOME/dagster`: a Celery worker on another machine, which loads the
launcher's instance from its serialized config, writes to its own disk, never to a path that only
exists on the launcher's.
"""

from __future__ import annotations

import dagster as dg
from dagster._core.storage.local_compute_log_manager import LocalComputeLogManager
from dagster._core.storage.root import LocalArtifactStorage
from dagster._serdes import ConfigurableClassData
from dagster_postgres import DagsterPostgresStorage

from market_platform import settings
from market_platform.storage.timescale import dagster_storage_url


class PlatformStorage(DagsterPostgresStorage):
    """dagster-postgres storage whose URL comes from the platform's settings."""

    @classmethod
    def config_type(cls):
        return {"should_autocreate_tables": dg.Field(bool, is_required=False, default_value=True)}

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData | None, config_value) -> "PlatformStorage":
        return cls(
            postgres_url=without_commit_waits(dagster_storage_url()),
            should_autocreate_tables=config_value.get("should_autocreate_tables", True),
            inst_data=inst_data,
        )


def without_commit_waits(url: str) -> str:
    """`url` whose sessions commit without waiting for the WAL flush (`synchronous_commit=off`).

    Dagster writes each event of a run in its own transaction: a wait for the disk each (~25 ms
    on a laptop's embedded server, 300 of them in the demo). Without it an operating-system crash
    can lose the last fraction of a second of run events, never corrupt them; the tick store's own
    connections keep waiting (market data is never lost silently). A URL that sets `options`
    itself is left as it is."""
    if "options=" in url:
        return url
    return f"{url}{'&' if '?' in url else '?'}options=-c%20synchronous_commit%3Doff"


class _UnderThisMachinesHome:
    """A local directory of the instance, resolved under `$MARKET_PLATFORM_HOME/dagster/<subdir>`
    of the machine that loads the instance, never taken from its serialized config."""

    subdir = ""

    @classmethod
    def config_type(cls):
        return {}

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData | None, config_value):
        return cls(str(settings.dagster_home() / cls.subdir), inst_data=inst_data)


class PlatformComputeLogManager(_UnderThisMachinesHome, LocalComputeLogManager):
    """Steps' stdout and stderr under this machine's `$MARKET_PLATFORM_HOME/dagster/storage`."""

    subdir = "storage"


class PlatformArtifactStorage(_UnderThisMachinesHome, LocalArtifactStorage):
    """Dagster's local artifacts under this machine's `$MARKET_PLATFORM_HOME/dagster`."""
