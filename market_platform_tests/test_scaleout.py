"""Scale-out: the platform's runs on two Celery workers (`market-platform worker`) on Redis, each
started as a subprocess with its own MARKET_PLATFORM_HOME and working directory (nothing on disk
shared with each other or the launcher), the lake on S3 (moto on loopback), the database at
127.0.0.1:5432, Polygon REST from a replay that enforces 60 calls per minute.

One backfill proves everything the design promises, because the rate limit alone makes any honest
run of it last more than a minute: 6 sessions x 6 tickers of 1-minute and vendor 5-minute bars
through `market-platform backfill`, i.e. 78 REST calls (6 ticker checks by the launcher, 36 per bars
step), 60 of which the plan allows in a first minute.

- The two REST steps start together, one on each worker, and all calls of both workers and the
  launcher never exceed 60 in any 60 s of the replay's request log (and no 429), across 60 s.
- As soon as a worker that already completed a step starts another one, its process group (the
  worker and its pool) is SIGKILLed: the launcher sees the step's heartbeat lapse, sends the step
  again, and the run completes on the other worker.
- From the event log: every step succeeded, both workers completed steps, the killed step was sent
  again and completed on the survivor; `status --workers` listed both workers mid-run.
- The lake is byte-identical to the same backfill run in process (no broker), run at the same time
  against an unlimited replay of the same market, with no temporary or staged file left.

And, while the workers boot: a local lake, or a broker that does not answer, is refused in one
line before anything is written; the Definitions send asset jobs to Celery only with a broker, and
stream jobs never; a step whose workers keep dying is resent, then fails naming them.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import IO

import dagster as dg
import psycopg
import pytest

from market_platform import calendar
from market_platform.replay import ReplayServers, SimProvider
from market_platform_tests.fixtures import HISTORY_START
from market_platform_tests.fixtures.replay import fixed_clock

CLI = [str(Path(sys.executable).parent / "market-platform")]
FIRST, LAST = date(2024, 11, 18), date(2024, 11, 25)   # 6 sessions
RATE = 60
N_TICKERS = 6
BACKFILL = ["backfill", "--from", FIRST.isoformat(), "--to", LAST.isoformat(), "--timeframes", "1m,5m",
            "--source", "polygon_rest", "--stage-every", "1"]


def clean_env() -> dict[str, str]:
    """This process's environment without any platform, vendor, Dagster or AWS variable."""
    prefixes = ("ALPACA_", "POLYGON_", "MARKET_", "DAGSTER_", "AWS_")
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)} | {
        "PYTHONUNBUFFERED": "1", "MARKET_HISTORY_START": HISTORY_START}


def s3_lake_env(s3_server, bucket: str) -> dict[str, str]:
    return {"MARKET_LAKE_URL": f"s3://{bucket}/lake", "MARKET_LAKE_S3_ENDPOINT": s3_server.endpoint,
            "AWS_ACCESS_KEY_ID": s3_server.key, "AWS_SECRET_ACCESS_KEY": s3_server.secret,
            "AWS_DEFAULT_REGION": s3_server.region}


def checksums(s3_server, bucket: str) -> dict[str, str]:
    """sha256 of every object under the bucket's lake/, by key."""
    client = s3_server.client()
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="lake/"):
        for obj in page.get("Contents", []):
            body = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            out[obj["Key"]] = hashlib.sha256(body).hexdigest()
    return out


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip() and "Warning" not in line
             and not line.startswith("  ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@dataclass
class Worker:
    process: subprocess.Popen
    cwd: Path
    log: IO[str]

    @property
    def name(self) -> str:
        return f"market-platform-{self.process.pid}@{socket.gethostname()}"

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()


class Command:
    """A command line started in its own process group, its output in files (no pipe to fill)."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.out, self.err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        self.process = subprocess.Popen(args, cwd=cwd, env=env, text=True, stdout=self.out, stderr=self.err,
                                        start_new_session=True)

    def end(self, timeout: float = 0) -> subprocess.CompletedProcess:
        """The finished command (waiting up to `timeout` seconds, then killing it)."""
        try:
            self.process.wait(timeout=timeout or None)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        texts = []
        for stream in (self.out, self.err):
            stream.seek(0)
            texts.append(stream.read())
        return subprocess.CompletedProcess(self.process.args, self.process.returncode, *texts)


@dataclass
class Cluster:
    env: dict[str, str]              # what every process shares: broker, queue, database, lake, vendor
    root: Path
    bucket: str
    workers: list[Worker]

    def launcher_env(self) -> dict[str, str]:
        return {**self.env, "MARKET_PLATFORM_HOME": str(self.root / "launcher" / "home")}


@dataclass
class Outcome:
    backfill: subprocess.CompletedProcess
    reference: subprocess.CompletedProcess
    reference_bucket: str
    victim: Worker | None = None
    status_workers: str = ""
    steps: dict[str, str] = field(default_factory=dict)         # step -> the worker that completed it
    lost: list[dg.EventLogEntry] = field(default_factory=list)  # "step sent again" engine events


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tickers(sim) -> list[str]:
    listed = set.intersection(*(set(sim.stock_symbols(d)) for d in calendar.sessions(FIRST, LAST)))
    return sorted(listed)[:N_TICKERS]


@pytest.fixture(scope="module")
def limited_replay(sim):
    with ReplayServers(SimProvider(sim), rate_limit=RATE, rate_window=60.0, clock=fixed_clock,
                        bucket=f"flatfiles-{uuid.uuid4().hex[:8]}") as servers:
        yield servers


@pytest.fixture(scope="module")
def unlimited_replay(sim):
    with ReplayServers(SimProvider(sim), clock=fixed_clock, bucket=f"flatfiles-{uuid.uuid4().hex[:8]}") as servers:
        yield servers


@pytest.fixture(scope="module")
def booting(tmp_path_factory, redis_url, s3_server, make_database, limited_replay):
    """The two workers, started (not waited for: the tests that need no worker run meanwhile)."""
    root = tmp_path_factory.mktemp("scaleout")
    bucket = s3_server.new_bucket()
    env = {**clean_env(), **limited_replay.env(rates=True), **s3_lake_env(s3_server, bucket),
           "MARKET_DB_URL": make_database("postgres"), "MARKET_CELERY_BROKER_URL": redis_url,
           "MARKET_CELERY_QUEUE": f"test-{uuid.uuid4().hex[:8]}"}
    workers = []
    try:
        for name in ("worker_a", "worker_b"):
            cwd = root / name
            cwd.mkdir()
            log = open(root / f"{name}.log", "w")
            process = subprocess.Popen([*CLI, "worker"], cwd=cwd, env={**env, "MARKET_PLATFORM_HOME": str(cwd / "home")},
                                       stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            workers.append(Worker(process, cwd, log))
        (root / "launcher").mkdir()
        yield Cluster(env, root, bucket, workers)
    finally:
        for worker in workers:
            if worker.process.poll() is None:
                os.killpg(worker.process.pid, signal.SIGTERM)
        for worker in workers:
            try:
                worker.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(worker.process.pid, signal.SIGKILL)
                worker.process.wait()
            worker.log.close()


@pytest.fixture(scope="module")
def cluster(booting, redis_url) -> Cluster:
    """The two workers, once both answer over the broker."""
    import celery

    app = celery.Celery(broker=redis_url)
    try:
        deadline = time.monotonic() + 180
        while True:
            for worker in booting.workers:
                assert worker.process.poll() is None, f"{worker.name} exited:\n{worker.output()}"
            answered = {name for reply in app.control.ping(timeout=1.0) for name in reply}
            if {w.name for w in booting.workers} <= answered:
                return booting
            assert time.monotonic() < deadline, "workers did not come up:\n" + "\n".join(
                w.output() for w in booting.workers)
    finally:
        app.close()


def _kill_second_step(client, backfill: subprocess.Popen, workers: list[Worker], status: list,
                      env: dict[str, str], cwd: Path) -> Worker | None:
    """Follow the steps' heartbeats in Redis until the backfill ends. Once both workers run a step
    at once, ask `status --workers` (appended to `status`). SIGKILL the process group
    of the first worker seen running a step after it completed another, and return it."""
    by_name = {w.name: w for w in workers}
    seen: dict[str, str] = {}   # task id -> worker name
    done: set[str] = set()
    victim = None
    deadline = time.monotonic() + 300
    while backfill.poll() is None and time.monotonic() < deadline:
        for key in client.scan_iter("market_platform:step:*", count=1000):
            task = key.decode().rsplit(":", 1)[1]
            if task not in seen and (value := client.get(key)) is not None:
                seen[task] = json.loads(value)["worker"]
        done |= {task for task in seen.keys() - done if client.exists(f"celery-task-meta-{task}")}
        running = {task: name for task, name in seen.items() if task not in done}
        if not status and len(set(running.values())) == 2:
            status.append(Command([*CLI, "status", "--workers"], cwd, env))
        finished_by = {seen[task] for task in done}
        if victim is None:
            for task, name in running.items():
                if name in finished_by and name in by_name:
                    victim = by_name[name]
                    os.killpg(victim.process.pid, signal.SIGKILL)
                    victim.process.wait()
                    break
        time.sleep(0.1)
    return victim


@pytest.fixture(scope="module")
def outcome(cluster, tickers, s3_server, make_database, unlimited_replay, limited_replay, redis_url) -> Outcome:
    import redis

    # The same backfill in process (no broker), at the same time, against an unlimited replay.
    reference_bucket = s3_server.new_bucket()
    reference_home = cluster.root / "reference"
    reference_home.mkdir()
    reference_env = {**clean_env(), **unlimited_replay.env(rates=True), **s3_lake_env(s3_server, reference_bucket),
                     "MARKET_DB_URL": make_database("postgres"), "MARKET_PLATFORM_HOME": str(reference_home / "home")}
    args = [*BACKFILL, "--tickers", ",".join(tickers)]
    reference = Command([*CLI, *args], reference_home, reference_env)

    env = cluster.launcher_env()
    limited_replay.reset()
    backfill = Command([*CLI, *args], cluster.root / "launcher", env)
    status: list[Command] = []
    try:
        victim = _kill_second_step(redis.Redis.from_url(redis_url), backfill.process, cluster.workers, status, env,
                                   cluster.root / "launcher")
    finally:
        backfill.end(timeout=300)
    result = Outcome(backfill=backfill.end(), reference=reference.end(timeout=300), reference_bucket=reference_bucket,
                     victim=victim, status_workers=status[0].end(timeout=60).stdout if status else "")
    _read_event_log(result, env)
    return result


def _read_event_log(result: Outcome, env: dict[str, str]) -> None:
    """Which worker completed each step, and the resent-step events."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MARKET_DB_URL", env["MARKET_DB_URL"])
        mp.setenv("MARKET_PLATFORM_HOME", env["MARKET_PLATFORM_HOME"])
        instance = dg.DagsterInstance.from_config(str(Path(env["MARKET_PLATFORM_HOME"]) / "dagster"))
        try:
            for run in instance.get_runs():
                records = instance.all_logs(run.run_id)
                ran_by: dict[tuple[str, int], str] = {}
                for record in records:
                    event = record.dagster_event
                    if event is None or event.event_type != dg.DagsterEventType.ENGINE_EVENT:
                        continue
                    metadata = event.engine_event_data.metadata
                    if "celery worker" in metadata:
                        ran_by[(event.step_key, metadata["worker pid"].value)] = metadata["celery worker"].value
                    if "lost worker" in metadata:
                        result.lost.append(record)
                for record in records:
                    event = record.dagster_event
                    if event is not None and event.event_type == dg.DagsterEventType.STEP_SUCCESS:
                        result.steps[event.step_key] = ran_by.get((event.step_key, event.pid), "not a worker")
        finally:
            instance.dispose()


# --------------------------------------------------------------------------- wiring (in process)


@pytest.mark.usefixtures("booting")  # the workers of the tests below boot meanwhile
def test_asset_jobs_go_to_workers_only_with_a_broker_and_streams_never(monkeypatch):
    from market_platform.definitions import defs

    def executors(definitions) -> dict[str, str]:
        jobs = {name: definitions.resolve_job_def(name) for name in
                ("bars_job", "metrics_job", "quotes_daily_job", "stock_stream_job", "crypto_stream_job")}
        jobs["backfill"] = definitions.resolve_implicit_job_def_def_for_assets([dg.AssetKey("minute_bars")])
        return {name: job.executor_def.name for name, job in jobs.items()}

    monkeypatch.delenv("MARKET_CELERY_BROKER_URL", raising=False)
    assert set(executors(defs()).values()) == {"multi_or_in_process_executor"}  # unchanged without a broker
    monkeypatch.setenv("MARKET_CELERY_BROKER_URL", "redis://broker.example:6379/0")
    wired = executors(defs())
    assert wired.pop("stock_stream_job") == wired.pop("crypto_stream_job") == "multi_or_in_process_executor"
    assert set(wired.values()) == {"celery"}


class LostTask:
    """A step's task whose worker died: it never becomes ready."""

    def __init__(self, number: int) -> None:
        self.id = f"task-{number}"

    def ready(self) -> bool:
        return False


def test_a_step_whose_workers_keep_dying_is_resent_then_fails_naming_them():
    from market_platform.workers import MAX_SUBMISSIONS, WatchedResult
    from market_platform.errors import WorkerLostError

    sent: list[LostTask] = []
    beating: dict[str, dict] = {}
    reports: list[str] = []

    def send() -> LostTask:
        sent.append(LostTask(len(sent)))
        return sent[-1]

    result = WatchedResult(send, "minute_bars", beating.get, lambda message, worker: reports.append(message))
    for attempt in range(MAX_SUBMISSIONS):
        assert not result.ready()                   # queued: no worker has it yet, however long it waits
        beating[sent[-1].id] = {"host": "box", "pid": 100 + attempt, "worker": f"w{attempt}@box"}
        assert not result.ready()                   # running
        del beating[sent[-1].id]                    # the worker died: its heartbeat lapsed
        assert result.ready() == (attempt == MAX_SUBMISSIONS - 1)
    assert len(sent) == MAX_SUBMISSIONS and len(reports) == MAX_SUBMISSIONS - 1
    assert "stopped for 15s: step sent again (2 of 3)" in reports[0]
    with pytest.raises(WorkerLostError, match=r"minute_bars: its worker died 3 times \(box pid 100, box pid 101, box pid 102\)"):
        result.get()


# --------------------------------------------------------------------------- refusals (no workers)


def test_a_local_lake_or_an_unreachable_broker_is_refused_in_one_line(tmp_path, redis_url, make_database,
                                                                      limited_replay, tickers):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    base = {**clean_env(), **limited_replay.env(rates=True), "MARKET_DB_URL": make_database("postgres"),
            "MARKET_PLATFORM_HOME": str(tmp_path / "home")}
    cases = {
        "local lake": ({**base, "MARKET_CELERY_BROKER_URL": redis_url}, BACKFILL),
        "worker on a local lake": ({**base, "MARKET_CELERY_BROKER_URL": redis_url}, ["worker"]),
        "no broker": ({**base, "MARKET_CELERY_BROKER_URL": f"redis://127.0.0.1:{closed}/0",
                       "MARKET_LAKE_URL": "s3://bucket/lake"}, BACKFILL),
    }
    running = {name: subprocess.Popen([*CLI, *args, *(["--tickers", tickers[0]] if args is BACKFILL else [])],
                                      cwd=tmp_path, env=env, text=True, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE)
               for name, (env, args) in cases.items()}
    lines = {}
    for name, process in running.items():
        out, err = process.communicate(timeout=120)  # a broker that does not answer: seconds, not a hang
        lines[name] = one_error_line(subprocess.CompletedProcess(process.args, process.returncode, out, err))
    for name in ("local lake", "worker on a local lake"):
        assert "MARKET_LAKE_URL=s3://" in lines[name] and "MARKET_CELERY_SINGLE_HOST=1" in lines[name]
    assert f"redis://127.0.0.1:{closed}/0 (MARKET_CELERY_BROKER_URL) cannot be reached" in lines["no broker"]
    assert not (tmp_path / "home" / "lake").exists()
    assert limited_replay.polygon.log.count() == 0  # refused before any vendor call
    with psycopg.connect(base["MARKET_DB_URL"]) as conn:  # no tick store schema, no Dagster run storage
        assert conn.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
                            ).fetchone()[0] == 0


# --------------------------------------------------------------------------- the distributed backfill


def test_the_backfill_completes_on_the_workers_despite_a_killed_one(outcome, cluster):
    assert outcome.backfill.returncode == 0, outcome.backfill.stderr[-3000:]
    assert "1 runs (celery)" in outcome.backfill.stdout
    assert outcome.victim is not None, "no worker started a second step: nothing was killed"
    survivor = next(w for w in cluster.workers if w is not outcome.victim)
    names = {w.name for w in cluster.workers}
    # Every step ran on a worker, and both workers completed steps.
    assert outcome.steps and set(outcome.steps.values()) == names, outcome.steps
    # The killed worker's step was sent again, once, and completed on the survivor.
    assert len(outcome.lost) == 1, [r.dagster_event.message for r in outcome.lost]
    lost = outcome.lost[0].dagster_event
    assert lost.engine_event_data.metadata["lost worker"].value == outcome.victim.name
    assert "step sent again (2 of 3)" in lost.message
    assert outcome.steps[lost.step_key] == survivor.name


def test_rest_calls_of_both_workers_never_exceed_the_plan(outcome, limited_replay):
    log = limited_replay.polygon.log
    entries = log.entries()
    # The two REST steps ran at once, one on each worker.
    assert outcome.steps["minute_bars"] != outcome.steps["vendor_bars_5m"]
    assert len(entries) == 6 + 2 * 6 * N_TICKERS  # ticker checks, then one call per ticker and session
    assert entries[-1].at - entries[0].at > 60.0  # the limit was crossed: the window was waited for
    assert log.count(statuses={429}) == 0
    assert log.max_in_window(60.0) == RATE


def test_status_lists_the_live_workers(outcome, cluster):
    lines = outcome.status_workers.splitlines()
    assert lines and lines[0].startswith("2 workers at redis://"), outcome.status_workers
    for worker in cluster.workers:
        line = next(line for line in lines if worker.name in line)
        assert f"pid {worker.process.pid}" in line and cluster.env["MARKET_CELERY_QUEUE"] in line
        assert "running 1 of 1" in line


def test_the_lake_is_byte_identical_to_an_in_process_backfill(outcome, cluster, s3_server):
    assert outcome.reference.returncode == 0, outcome.reference.stderr[-3000:]
    assert "runs (in-process)" in outcome.reference.stdout
    ours, reference = checksums(s3_server, cluster.bucket), checksums(s3_server, outcome.reference_bucket)
    datasets = {key.split("/")[1] for key in ours}
    assert datasets == {"minute_bars", "vendor_bars_5m", "bars_5m", "bars_15m", "bars_1h", "bars_1d"}
    assert ours == reference
    assert all(key.endswith("/data.parquet") and "_staging" not in key for key in ours)  # nothing temporary
    assert not s3_server.client().list_multipart_uploads(Bucket=cluster.bucket).get("Uploads")
    assert not (cluster.root / "launcher" / "home" / "dagster" / "storage").exists()  # steps logged where they ran
