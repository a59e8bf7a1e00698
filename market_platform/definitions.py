"""The Dagster entry point: everything under defs/, plus resources wired from the environment, and
the Celery executor when MARKET_CELERY_BROKER_URL is set (see defs/executor.py)."""

from pathlib import Path

import dagster as dg

from market_platform.defs.executor import platform_executor
from market_platform.defs.resources import default_resources


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions.merge(
        dg.load_from_defs_folder(path_within_project=Path(__file__).resolve().parent.parent),
        dg.Definitions(resources=default_resources(), executor=platform_executor()),
    )
