"""`market-platform worker`: a Celery worker that runs the steps of the platform's runs."""

from __future__ import annotations

import logging
import os
import socket

import click

from market_platform.cli.base import dagster_env, fail_cleanly, main, redact


@main.command()
@click.option("--queues", default=None,
              help="Comma-separated queues to take steps from (default: MARKET_CELERY_QUEUE, else dagster).")
@click.option("--concurrency", type=int, default=1, show_default=True,
              help="Steps run at once, each in its own process.")
@fail_cleanly
def worker(queues: str | None, concurrency: int) -> None:
    """Run the steps that launchers send to MARKET_CELERY_BROKER_URL's Redis, until stopped
    (Ctrl-C finishes the running steps first). Needs the same MARKET_DB_URL and s3:// lake as the
    launcher (or MARKET_CELERY_SINGLE_HOST=1)."""
    from market_platform import settings
    from market_platform.errors import ConfigError, InvalidInputError

    if concurrency < 1:
        raise InvalidInputError(f"--concurrency {concurrency}: expected a positive number of steps")
    if settings.celery_broker_url() is None:
        raise ConfigError(f"{settings.CELERY_BROKER_URL_VAR} is not set: expected the Redis URL the launchers "
                          "use, e.g. redis://host:6379/0")
    settings.check_shared_state()  # before the heavy imports: a refusal comes at once

    from market_platform.defs.executor import broker_url, check_broker, queue
    from market_platform.sources.vendor import redact_url
    from market_platform.storage.lake import Lake
    from market_platform.storage.timescale import TickStore, database_url
    from market_platform.workers import celery_app

    names = [q.strip() for q in (queues or queue()).split(",") if q.strip()]
    if not names:
        raise InvalidInputError(f"--queues {queues!r}: expected comma-separated queue names")
    url = broker_url()
    check_broker(url)
    os.environ.update(dagster_env())
    TickStore.from_settings().init_schema()  # reachable, and the schema is there before any step
    lake = Lake.from_settings()
    endpoint = os.environ.get("MARKET_LAKE_S3_ENDPOINT")
    name = f"market-platform-{os.getpid()}@{socket.gethostname()}"
    click.echo(f"worker {name}: steps from queue{'s' if len(names) > 1 else ''} {', '.join(names)} at "
               f"{redact_url(url)}, {concurrency} at a time")
    click.echo(f"database {redact(database_url())}; lake {lake.url}" + (f" (S3 endpoint {endpoint})" if endpoint else ""))
    if settings.CELERY_SINGLE_HOST_VAR in os.environ:
        click.echo(f"single-host mode ({settings.CELERY_SINGLE_HOST_VAR}={os.environ[settings.CELERY_SINGLE_HOST_VAR]})")
    # One line per step from the platform's task (celery.app.trace would print each step's events).
    for name_, level in (("celery.app.trace", logging.WARNING), ("alembic", logging.WARNING)):
        logging.getLogger(name_).setLevel(level)
    celery_app().worker_main([
        "worker", f"--hostname={name}", f"--queues={','.join(names)}", f"--concurrency={concurrency}",
        "--loglevel=INFO", "--without-gossip", "--without-mingle",
    ])


def print_workers() -> None:
    """`status --workers`: one line per live worker (Celery's inspect over the broker)."""
    from market_platform.defs.executor import broker_url, check_broker, live_workers
    from market_platform.sources.vendor import redact_url
    from market_platform.workers import celery_app

    url = broker_url()
    check_broker(url)
    found = live_workers(celery_app())
    click.echo(f"{len(found)} worker{'' if len(found) == 1 else 's'} at {redact_url(url)}")
    for name, info in found.items():
        click.echo(f"  {name}  pid {info['pid']}  queues {','.join(info['queues']) or '-'}  "
                   f"running {info['active']} of {info['concurrency']}")
