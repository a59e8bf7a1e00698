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

A worker that dies mid-step: each step message is acknowledged as the step starts, and a worker
takes a message only when it has a free slot (`worker_disable_prefetch`), so the broker never hands
a dead worker's steps to anyone behind Dagster's back. While a step runs, its worker refreshes a key
in Redis every few seconds (`HEARTBEAT_TTL`); the launcher watches it, and when it lapses before the
step's result arrives, sends the step again (it resumes: a step's lake writes are atomic and its
fetches staged), at most `MAX_SUBMISSIONS` times in all, then fails the run with `WorkerLostError`.
Each step's first event names the host and pid that ran it (`StepTask`).
"""

from __future__ import annotations

import json
import os
import logging
import socket
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import celery
import celery.exceptions
import dagster as dg
from dagster._core.definitions.reconstruct import ReconstructableRepository
from dagster._core.events import EngineEventData
from dagster._core.execution.retries import RetryMode
from dagster._core.storage.tags import PARTITION_NAME_TAG
from dagster_celery.core_execution_loop import core_celery_execution_loop
from dagster_celery.executor import CELERY_CONFIG, CeleryExecutor, _submit_task
from dagster_celery.make_app import make_app
from dagster_celery.tasks import create_task

from market_platform import settings
from market_platform.errors import BrokerUnavailableError, ConfigError, WorkerLostError
from market_platform.sources.vendor import redact_url, redis_client

DEFAULT_QUEUE = "dagster"
#: A running step's heartbeat key lives this long and is refreshed every HEARTBEAT_EVERY seconds:
#: a worker silent for HEARTBEAT_TTL seconds is lost.
HEARTBEAT_TTL, HEARTBEAT_EVERY = 15, 3
#: A step is sent at most this many times when its workers keep dying.
MAX_SUBMISSIONS = 3
DEFINITIONS_MODULE = "market_platform.definitions"
_LOG = logging.getLogger("market_platform.worker")


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


def celery_app() -> celery.Celery:
    """The Celery app of the platform's workers, on `MARKET_CELERY_BROKER_URL` (broker and results)."""
    url = broker_url()
    app = make_app(CeleryExecutor.for_cli(broker=url, backend=url, config_source=celery_settings()).app_args())
    create_task(app, base=StepTask)
    return app


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
    if not any(queue() in names for names in listening(celery_app()).values()):
        raise ConfigError(
            f"no Celery worker takes steps from queue {queue()!r} at {redact_url(url)}: start one with "
            f"`market-platform worker`, or unset {settings.CELERY_BROKER_URL_VAR} to run steps in this process")
    _VERIFIED_AT = time.monotonic()


_VERIFIED_AT = float("-inf")


# --------------------------------------------------------------------------- the executor


class WatchedCeleryExecutor(CeleryExecutor):
    """dagster-celery's executor, which also resends a step whose worker stopped beating."""

    def execute(self, plan_context, execution_plan):
        check_broker(self.broker)
        settings.check_shared_state()
        heartbeats = redis_client(self.broker, origin=settings.CELERY_BROKER_URL_VAR)

        def submit(app, context, step, queue_name, priority, known_state):
            def send():
                # dagster-celery registers its task again on each submission; Celery 5.7 warns each time.
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", celery.exceptions.DuplicateTaskNameWarning)
                    return _submit_task(app, context, step, queue_name, priority, known_state)

            def report(message: str, worker: Mapping[str, Any]) -> None:
                context.instance.report_engine_event(
                    message, context.dagster_run,
                    EngineEventData({f"lost {k}": v for k, v in worker.items()}),
                    step_key=step.key)

            return WatchedResult(send, step.key, lambda task_id: _heartbeat(heartbeats, task_id), report)

        return core_celery_execution_loop(plan_context, execution_plan, step_execution_fn=submit)


@dg.executor(name="celery", config_schema=CELERY_CONFIG, requirements=dg.multiple_process_executor_requirements())
def platform_celery_executor(init_context: dg.InitExecutorContext) -> WatchedCeleryExecutor:
    """dagster-celery's executor on the platform's Redis, resending steps whose worker died."""
    config = init_context.executor_config
    return WatchedCeleryExecutor(
        broker=config.get("broker"), backend=config.get("backend"), include=config.get("include"),
        config_source=config.get("config_source"), retries=RetryMode.from_config(config["retries"]))


def platform_executor() -> dg.ExecutorDefinition | None:
    """The Celery executor when `MARKET_CELERY_BROKER_URL` is set (its value is read by Dagster
    at run time, never written into the run's config), else None: Dagster's default."""
    if settings.celery_broker_url() is None:
        return None
    env = {"env": settings.CELERY_BROKER_URL_VAR}
    return platform_celery_executor.configured(
        {"broker": env, "backend": env, "config_source": celery_settings()}, name="celery")


class WatchedResult:
    """The AsyncResult of a step's task, resent when the worker running it stops beating.

    `ready()` is what dagster-celery's loop polls each second; `get()` returns the step's events,
    or raises WorkerLostError once the step was lost `MAX_SUBMISSIONS` times."""

    def __init__(self, send: Callable[[], Any], step_key: str,
                 beat: Callable[[str], dict | None], report: Callable[[str, Mapping[str, Any]], None]) -> None:
        self._send, self._step_key, self._beat, self._report = send, step_key, beat, report
        self._result = send()
        self._worker: dict | None = None   # the worker last seen running the current submission
        self._lost: list[dict] = []

    def ready(self) -> bool:
        if self._result.ready():
            return True
        worker = self._beat(self._result.id)
        if worker is not None:
            self._worker = worker
            return False
        if self._worker is None or self._result.ready():
            return self._result.ready()   # not started yet (queued), or just finished
        lost, self._worker = self._worker, None
        self._lost.append(lost)
        where = f"{lost.get('host')} (pid {lost.get('pid')}, worker {lost.get('worker')})"
        if len(self._lost) >= MAX_SUBMISSIONS:
            return True
        self._report(f"the worker running step {self._step_key} on {where} stopped for {HEARTBEAT_TTL}s: "
                     f"step sent again ({len(self._lost) + 1} of {MAX_SUBMISSIONS})", lost)
        self._result = self._send()
        return False

    def get(self) -> Any:
        if len(self._lost) >= MAX_SUBMISSIONS:
            hosts = ", ".join(f"{w.get('host')} pid {w.get('pid')}" for w in self._lost)
            raise WorkerLostError(f"step {self._step_key}: its worker died {len(self._lost)} times ({hosts}): "
                                  "re-execute the run from failure once workers are stable")
        return self._result.get()

    def revoke(self) -> None:
        self._result.revoke()

    @property
    def id(self) -> str:
        return self._result.id


# --------------------------------------------------------------------------- the workers' side


def _heartbeat_key(task_id: str) -> str:
    return f"market_platform:step:{task_id}"


def _heartbeat(client, task_id: str) -> dict | None:
    value = client.get(_heartbeat_key(task_id))
    return json.loads(value) if value else None


@contextmanager
def heartbeat(client, task_id: str, worker: Mapping[str, Any]):
    """Keep `task_id`'s heartbeat key alive while the block runs. It is left to expire afterwards:
    the step's result is stored by then, so the launcher never mistakes an ended step for a lost one."""
    import redis

    key, value = _heartbeat_key(task_id), json.dumps(dict(worker))
    client.set(key, value, ex=HEARTBEAT_TTL)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_EVERY):
            try:
                client.set(key, value, ex=HEARTBEAT_TTL)
            except redis.RedisError:
                pass  # the next beat tries again; a lapse only makes the launcher resend the step

    thread = threading.Thread(target=beat, name="step-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


_CLIENTS: dict[tuple[int, str], Any] = {}
_INSTANCES: dict[tuple[int, str], dg.DagsterInstance] = {}


def _per_process(cache: dict, key: str, make: Callable[[], Any]) -> Any:
    """One object per (process, key): the pool's forked children each build their own."""
    slot = (os.getpid(), key)
    if slot not in cache:
        cache[slot] = make()
    return cache[slot]


class StepTask(celery.Task):
    """The base of dagster-celery's step task on the platform's workers: the step's heartbeat
    runs while it executes, and its first event says which host and pid ran it."""

    def __call__(self, *args, **kwargs):
        url = self.app.conf.broker_url
        client = _per_process(_CLIENTS, url, lambda: redis_client(url, origin=settings.CELERY_BROKER_URL_VAR))
        worker = {"host": socket.gethostname(), "pid": os.getpid(), "worker": self.request.hostname}
        started = time.monotonic()
        with heartbeat(client, self.request.id, worker):
            what = _report_worker(kwargs.get("execute_step_args_packed") or args[0], worker)
            _LOG.info("%s: started", what)
            try:
                events = super().__call__(*args, **kwargs)
            except BaseException:
                _LOG.warning("%s: failed after %.1fs", what, time.monotonic() - started)
                raise
        _LOG.info("%s: ended in %.1fs", what, time.monotonic() - started)
        return events


def _report_worker(packed: Mapping[str, Any], worker: Mapping[str, Any]) -> str:
    """Record which host and pid run the step, as an event of the step in the run's log; returns
    "step KEY of run ID" for the worker's own log."""
    from dagster._grpc.types import ExecuteStepArgs
    from dagster._serdes import serialize_value, unpack_value

    step_args = unpack_value(packed, as_type=ExecuteStepArgs)
    ref = step_args.instance_ref
    instance = _per_process(_INSTANCES, serialize_value(ref), lambda: dg.DagsterInstance.from_ref(ref))
    run = instance.get_run_by_id(step_args.run_id)
    keys = list(step_args.step_keys_to_execute or [])
    what = f"step {', '.join(keys)} of run {step_args.run_id}"
    if run is None or not keys:
        return what
    instance.report_engine_event(
        f"step {', '.join(keys)} runs on {worker['host']}, pid {worker['pid']} (Celery worker {worker['worker']})",
        run,
        EngineEventData({"worker host": dg.MetadataValue.text(str(worker["host"])),
                         "worker pid": dg.MetadataValue.int(int(worker["pid"])),
                         "celery worker": dg.MetadataValue.text(str(worker["worker"]))}),
        step_key=keys[0],
    )
    return what


# --------------------------------------------------------------------------- launching runs


def execute_assets(definitions: dg.Definitions, keys: Sequence[dg.AssetKey], *, instance: dg.DagsterInstance,
                   run_config: Mapping[str, Any], tags: Mapping[str, str] | None = None,
                   partition_key: str | None = None):
    """Materialize `keys` as one run recorded in `instance`, and return its result (`success`,
    `run_id`, `all_events`, ...): in this process, or, with a broker set, with each step on the
    Celery workers (after `check_scaleout`)."""
    job = definitions.resolve_implicit_job_def_def_for_assets(list(keys))
    if settings.celery_broker_url() is None:
        return job.get_subset(asset_selection=set(keys)).execute_in_process(
            partition_key=partition_key, instance=instance, run_config=dict(run_config), tags=dict(tags or {}),
            raise_on_error=False)
    check_scaleout()
    recon = ReconstructableRepository.for_module(DEFINITIONS_MODULE, "defs").get_reconstructable_job(job.name)
    tags = {**(tags or {}), **({PARTITION_NAME_TAG: partition_key} if partition_key else {})}
    with dg.execute_job(recon, instance, run_config=dict(run_config), tags=tags, asset_selection=list(keys)) as result:
        return result
