"""The Celery side of scale-out (see `defs.executor`): the executor that sends a run's steps to the
workers and resends a step whose worker died, and the workers' step task.

Kept out of `defs/` (which Dagster imports whenever the definitions load) so that Celery is imported
only when a broker is set.

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
import logging
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from typing import Any

import celery
import celery.exceptions
import dagster as dg
from dagster._core.events import EngineEventData
from dagster._core.execution.retries import RetryMode
from dagster_celery.core_execution_loop import core_celery_execution_loop
from dagster_celery.executor import CELERY_CONFIG, CeleryExecutor, _submit_task
from dagster_celery.make_app import make_app
from dagster_celery.tasks import create_task

from market_platform import settings
from market_platform.defs.executor import broker_url, celery_settings, check_broker
from market_platform.errors import WorkerLostError
from market_platform.sources.vendor import redis_client

#: A running step's heartbeat key lives this long and is refreshed every HEARTBEAT_EVERY seconds:
#: a worker silent for HEARTBEAT_TTL seconds is lost.
HEARTBEAT_TTL, HEARTBEAT_EVERY = 15, 3
#: A step is sent at most this many times when its workers keep dying.
MAX_SUBMISSIONS = 3
_LOG = logging.getLogger("market_platform.worker")


def celery_app() -> celery.Celery:
    """The Celery app of the platform's workers, on `MARKET_CELERY_BROKER_URL` (broker and results)."""
    url = broker_url()
    app = make_app(CeleryExecutor.for_cli(broker=url, backend=url, config_source=celery_settings()).app_args())
    create_task(app, base=StepTask)
    return app


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
