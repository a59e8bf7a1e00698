"""The rollup refresh schedule and job, on the tick store of both servers."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import dagster as dg
import pytest

from market_platform.defs.resources import TickStoreResource
from market_platform.errors import DatabaseUnavailableError
from market_platform.defs.storage.schedules import rollup_refresh_job, rollup_refresh_schedule
from market_platform.storage import synthetic
from market_platform.storage.server import create_database, drop_database
from market_platform.storage.timescale import TickStore

UTC = timezone.utc


def test_the_refresh_schedule_runs_the_job_only_while_a_range_waits(tick_store: TickStore) -> None:
    assert rollup_refresh_schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    resources = {"tick_store": TickStoreResource(url=tick_store.url)}
    context = dg.build_schedule_context(resources=resources,
                                        scheduled_execution_time=datetime(2024, 11, 27, 15, 10, tzinfo=UTC))
    skip = rollup_refresh_schedule(context)
    assert isinstance(skip, dg.SkipReason) and "no rollup range" in skip.skip_message

    # A session replayed after the fact: its minutes wait for the rollups' refresh.
    tick_store.write_bars(synthetic.bars(10, symbols=2, start=datetime(2024, 11, 25, 15, tzinfo=UTC)))
    request = rollup_refresh_schedule(context)
    assert isinstance(request, dg.RunRequest) and request.run_key == "rollups:2024-11-27T15:10"
    result = rollup_refresh_job.execute_in_process(resources=resources)
    assert result.success
    [output] = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    assert output.event_specific_data.metadata["refreshed"].value == 4  # one day of each rollup
    assert tick_store.pending_rollups() == []


def test_a_tick_store_that_failed_to_initialise_is_not_kept(pg_server_url) -> None:
    # The database is not there yet: store() fails, and once it exists the next store() opens it
    # and applies the schema, instead of handing back the half-made store of the first call.
    name = f"mp_test_{uuid.uuid4().hex[:12]}"
    url = pg_server_url.rsplit("/", 1)[0] + "/" + name
    resource = TickStoreResource(url=url)
    with pytest.raises(DatabaseUnavailableError, match=name):
        resource.store()
    create_database(pg_server_url, name)
    try:
        store = resource.store()
        assert store.read_arrow("SELECT count(*) AS n FROM schema_migrations").column("n").to_pylist()[0] > 0
        store.close()
    finally:
        drop_database(pg_server_url, name)
