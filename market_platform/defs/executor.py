"""Where a run's steps execute: in the launching process, or on Celery workers on other machines.

With `MARKET_CELERY_BROKER_URL` unset (the default) nothing changes: the CLI runs its steps in its
own process, the daemon's runs use Dagster's default executor. With it set (a Redis URL), the
`Definitions` take dagster-celery's executor with Redis as broker and result backend: every asset
job and backfill (bars and rollups, vendor bars, metrics, universe) sends each step to the queue
`MARKET_CELERY_QUEUE` (default `dagster`), where `market-platform worker`s take them. The stream
jobs keep Dagster's default executor (they name it themselves): one websocket per account, in one
process.

Workers share nothing on disk with the launcher: the database is `MARKET_DB_URL`, the lake an
`s3://` URL; a launch or a worker refuses the embedded database and a local lake unless
`MARKET_CELERY_SINGLE_HOST=1` says that every process runs on this machine
(`settings.check_shared_state`).

Celery itself is imported only when a broker is set: the executor, the lost-step watch and the
workers' task live in `market_platform.workers`.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import dagster as dg
from dagster._core.definitions.reconstruct import ReconstructableJob, ReconstructableRepository
from dagster._core.storage.tags import PARTITION_NAME_TAG

from market_platform import settings
from market_platform.errors import BrokerUnavailableError, ConfigError
from market_platform.sources.vendor import redact_url, redis_client

if TYPE_CHECKING:
    import celery

DEFAULT_QUEUE = "dagster"
DEFINITIONS_MODULE = "market_platform.definitions"
#: The code location's name in workspace.yaml (what `market-platform ui` serves).
CODE_LOCATION = "market_platform"


def queue() -> str:
    return os.environ.get(settings.CELERY_QUEUE_VAR) or DEFAULT_QUEUE


def celery_settings() -> dict[str, Any]:
    """The Celery app's settings, the same for the launcher and the workers."""
    return {
        "task_default_queue": queue(),
        # A worker takes a step only when a slot is free, and acknowledges it as it starts: a
        # killed worker holds no step it had not started, and the launcher resends those it had.
        "worker_prefetch_multiplier": 1,
        "worker_disable_prefetch": True,
        "task_acks_late": False,
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
    }


# --------------------------------------------------------------------------- checks


def broker_url() -> str:
    url = settings.celery_broker_url()
    if url is None:
        raise ConfigError(f"{settings.CELERY_BROKER_URL_VAR} is not set: expected the Redis URL of the "
                          "workers, e.g. redis://host:6379/0")
    return url


def check_broker(url: str) -> None:
    """BrokerUnavailableError, in one line, when the Redis at `url` does not answer."""
    import redis

    try:
        redis_client(url, origin=settings.CELERY_BROKER_URL_VAR, timeout=3.0).ping()
    except redis.RedisError as exc:
        raise BrokerUnavailableError(
            f"the Celery broker {redact_url(url)} ({settings.CELERY_BROKER_URL_VAR}) cannot be reached "
            f"({' '.join(str(exc).split())}): start Redis there, or unset {settings.CELERY_BROKER_URL_VAR} "
            "to run steps in this process") from None


def listening(app: celery.Celery, *, timeout: float = 1.0) -> dict[str, list[str]]:
    """The workers that answer within `timeout` seconds, and the queues they take steps from."""
    replies = app.control.inspect(timeout=timeout).active_queues() or {}
    return {name: sorted(q["name"] for q in queues) for name, queues in replies.items()}


def live_workers(app: celery.Celery, *, timeout: float = 1.0) -> dict[str, dict[str, Any]]:
    """The workers that answer within `timeout` seconds: name -> {"queues", "pid", "concurrency",
    "active"} (Celery's inspect, over the broker)."""
    inspect = app.control.inspect(timeout=timeout)
    queues = inspect.active_queues() or {}
    stats = inspect.stats() or {}
    active = inspect.active() or {}
    return {
        name: {
            "queues": sorted(q["name"] for q in queues.get(name, [])),
            "pid": stats.get(name, {}).get("pid"),
            "concurrency": stats.get(name, {}).get("pool", {}).get("max-concurrency"),
            "active": len(active.get(name, [])),
        }
        for name in sorted(set(queues) | set(stats))
    }


def preflight() -> None:
    """`check_scaleout` when a broker is set; nothing otherwise. Launchers call it before they
    record or fetch anything."""
    if settings.celery_broker_url() is not None:
        check_scaleout()


def check_scaleout() -> None:
    """Before a launch with a broker set: the broker answers, the state is shared, and some
    worker takes steps from the queue; one clear error otherwise. A success holds for a minute
    in this process (a backfill launches a run per ten sessions)."""
    global _VERIFIED_AT
    if time.monotonic() - _VERIFIED_AT < 60.0:
        return
    url = broker_url()
    check_broker(url)
    settings.check_shared_state()
    from market_platform.workers import celery_app

    if not any(queue() in names for names in listening(celery_app()).values()):
        raise ConfigError(
            f"no Celery worker takes steps from queue {queue()!r} at {redact_url(url)}: start one with "
            f"`market-platform worker`, or unset {settings.CELERY_BROKER_URL_VAR} to run steps in this process")
    _VERIFIED_AT = time.monotonic()


_VERIFIED_AT = float("-inf")


# --------------------------------------------------------------------------- the executor


def platform_executor() -> dg.ExecutorDefinition | None:
    """The Celery executor when `MARKET_CELERY_BROKER_URL` is set (its value is read by Dagster
    at run time, never written into the run's config), else None: Dagster's default."""
    if settings.celery_broker_url() is None:
        return None
    from market_platform.workers import platform_celery_executor

    env = {"env": settings.CELERY_BROKER_URL_VAR}
    return platform_celery_executor.configured(
        {"broker": env, "backend": env, "config_source": celery_settings()}, name="celery")


# --------------------------------------------------------------------------- launching runs


def execute_assets(definitions: dg.Definitions, keys: Sequence[dg.AssetKey], *, instance: dg.DagsterInstance,
                   run_config: Mapping[str, Any], tags: Mapping[str, str] | None = None,
                   partition_key: str | None = None):
    """Materialize `keys` as one run recorded in `instance`, and return its result (`success`,
    `run_id`, `all_events`, ...): in this process with Dagster's in-process executor (a step in a
    process of its own costs about a second more), or, with a broker set, with each step on the
    Celery workers (after `check_scaleout`).

    The run is recorded as the UI or `dagster job execute` would record it: its asset selection
    (the Runs page's Target column) and the code location it belongs to, `market_platform` of
    workspace.yaml (the Overview timeline shows only runs of a code location)."""
    from dagster._core.definitions.job_base import InMemoryJob
    from dagster._core.execution.api import execute_run

    job_def = definitions.resolve_implicit_job_def_def_for_assets(list(keys))
    tags = {**(tags or {}), **({PARTITION_NAME_TAG: partition_key} if partition_key else {})}
    if settings.celery_broker_url() is None:
        job = InMemoryJob(job_def)
        run_config = {**run_config, **_in_process_execution(job_def)}
    else:
        check_scaleout()
        job = ReconstructableRepository.for_module(DEFINITIONS_MODULE, "defs").get_reconstructable_job(job_def.name)
    run = instance.create_run_for_job(
        job_def=job_def, run_config=dict(run_config), tags=tags, asset_selection=frozenset(keys),
        remote_job_origin=remote_job_origin(job_def.name),
        job_code_origin=job.get_python_origin() if isinstance(job, ReconstructableJob) else None)
    return execute_run(job, run, instance, raise_on_error=False)


def _in_process_execution(job_def: dg.JobDefinition) -> dict[str, Any]:
    """Run config choosing the in-process side of Dagster's default executor (no config otherwise)."""
    if job_def.executor_def is dg.multi_or_in_process_executor:
        return {"execution": {"config": {"in_process": {}}}}
    return {}


def remote_job_origin(job_name: str):
    """Where the UI finds `job_name`: the repository of the `market_platform` code location of
    workspace.yaml (what the UI's own launches record)."""
    from dagster._core.definitions.repository_definition.valid_definitions import SINGLETON_REPOSITORY_NAME
    from dagster._core.remote_origin import (
        ManagedGrpcPythonEnvCodeLocationOrigin,
        RemoteJobOrigin,
        RemoteRepositoryOrigin,
    )
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

    location = ManagedGrpcPythonEnvCodeLocationOrigin(
        LoadableTargetOrigin(executable_path=sys.executable, module_name=DEFINITIONS_MODULE,
                             working_directory=str(settings.PROJECT_ROOT)),
        location_name=CODE_LOCATION)
    return RemoteJobOrigin(RemoteRepositoryOrigin(location, SINGLETON_REPOSITORY_NAME), job_name)
