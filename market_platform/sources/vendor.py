"""What the vendor adapters share: a rate limiter that never exceeds the plan, retries with
backoff and jitter, errors that name the problem but never a secret, and a thread pool that runs
tickers concurrently up to the rate limit.

Every HTTP request an adapter makes, first pages and continuation pages alike, goes through one
`VendorGate.call`: it takes a slot from the limiter, sends, and on 429, 5xx or a network failure
backs off and tries again (taking a new slot), so the limiter sees every request the vendor
sees. The client libraries' own retries are switched off so that nothing bypasses it.

A plan's limit covers every process that uses the key: with Celery workers (a Redis broker set),
the limiter is `SharedRateLimiter`, the same sliding log kept in Redis for all of them.
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TypeVar

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from market_platform.errors import (
    BrokerUnavailableError,
    ConfigError,
    InvalidInputError,
    VendorAuthError,
    VendorUnavailableError,
)

T = TypeVar("T")
R = TypeVar("R")


class RateLimiter:
    """At most `calls` calls in any `period` seconds, shared by every thread that holds it.

    A sliding log of the last `calls` grants: a call may start once the oldest of them is more
    than `period` (plus `margin`) ago. The margin absorbs the jitter between taking a slot and the
    request reaching the vendor, whose own clock is the one that counts; it defaults to 1% of the
    period and at least 50 ms.
    """

    def __init__(
        self,
        calls: int,
        period: float = 60.0,
        *,
        margin: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if isinstance(calls, bool) or not isinstance(calls, int) or calls < 1:
            raise ConfigError(f"rate limit calls={calls!r}: expected a positive integer")
        if not period > 0:
            raise ConfigError(f"rate limit period={period!r}: expected a positive number of seconds")
        self.calls, self.period = calls, float(period)
        self.margin = max(0.05, 0.01 * period) if margin is None else float(margin)
        self._clock, self._sleep = clock, sleep
        self._grants: deque[float] = deque()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"RateLimiter({self.calls} calls per {self.period:g}s)"

    def acquire(self) -> float:
        """Block until a call may start; returns the seconds waited."""
        waited = 0.0
        while True:
            with self._lock:
                now = self._clock()
                if len(self._grants) < self.calls:
                    self._grants.append(now)
                    return waited
                ready = self._grants[0] + self.period + self.margin
                if now >= ready:
                    self._grants.popleft()
                    self._grants.append(now)
                    return waited
                pause = ready - now
            self._sleep(pause)
            waited += pause


#: Grant a slot if fewer than ARGV[1] grants lie in the last ARGV[2] microseconds (the period plus
#: the margin), else answer how many microseconds until the oldest of them leaves the window. The
#: time is the Redis server's: one clock for every worker, whatever their machines' clocks say.
_ACQUIRE_LUA = """
local now = redis.call('TIME')
local t = tonumber(now[1]) * 1000000 + tonumber(now[2])
local calls, window = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', t - window)
if redis.call('ZCARD', KEYS[1]) < calls then
  redis.call('ZADD', KEYS[1], t, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000) + 1000)
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return math.max(1, math.ceil(tonumber(oldest[2]) + window - t))
"""


def redis_client(url: str, *, origin: str, timeout: float = 5.0):
    """A redis-py client of `url` (redis://, rediss:// or unix://) that fails within `timeout`
    seconds; ConfigError names a URL of another kind (`origin`: the variable it came from)."""
    import redis

    if url.split("://", 1)[0] not in ("redis", "rediss", "unix"):
        raise ConfigError(f"{origin}={redact_url(url)!r}: expected a Redis URL such as redis://host:6379/0")
    return redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)


def redact_url(url: str) -> str:
    """`url` without the password of its user info."""
    from urllib.parse import urlsplit

    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    return scrub(url, [password])


class SharedRateLimiter:
    """`RateLimiter` for many processes on many machines: the sliding log of grants is a sorted
    set in Redis at `url` under `key`, updated atomically by one Lua script, timed by the Redis
    server's clock. The processes sharing `key` together start at most `calls` calls in any
    `period` seconds (spaced by `margin` more, as `RateLimiter`)."""

    def __init__(self, calls: int, period: float = 60.0, *, url: str, key: str, margin: float | None = None,
                 origin: str = "the rate limiter's URL") -> None:
        self._local = RateLimiter(calls, period, margin=margin)  # validates; the same settings
        self.calls, self.period, self.margin = calls, float(period), self._local.margin
        self.key, self.url = key, redact_url(url)
        self._client = redis_client(url, origin=origin)
        self._script = self._client.register_script(_ACQUIRE_LUA)

    def __repr__(self) -> str:
        return f"SharedRateLimiter({self.calls} calls per {self.period:g}s at {self.url} {self.key})"

    def try_acquire(self) -> float:
        """Take a slot if one is free (returns 0.0), else the seconds until one may be."""
        import redis

        window_us = int(round((self.period + self.margin) * 1_000_000))
        try:
            wait_us = self._script(keys=[self.key], args=[self.calls, window_us, uuid.uuid4().hex])
        except redis.RedisError as exc:
            raise BrokerUnavailableError(
                f"the shared rate limiter at {self.url} failed ({type(exc).__name__}: {exc}): "
                "expected Redis to answer; check it is running") from None
        return int(wait_us) / 1_000_000

    def acquire(self) -> float:
        """Block until a call may start; returns the seconds waited."""
        waited = 0.0
        while pause := self.try_acquire():
            time.sleep(pause)
            waited += pause
        return waited


def rate_limiter(calls: int | None, period: float = 60.0, *, margin: float | None = None,
                 shared_url: str | None = None, vendor: str, api_key: str | None = None,
                 origin: str = "the rate limiter's URL") -> RateLimiter | SharedRateLimiter | None:
    """The limiter of a vendor's plan: none without `calls`; in this process without `shared_url`;
    else shared in Redis by every process using the same vendor and key (the key is hashed into
    the Redis key, never stored)."""
    if not calls:
        return None
    if not shared_url:
        return RateLimiter(calls, period, margin=margin)
    digest = hashlib.sha256((api_key or "").encode()).hexdigest()[:16]
    return SharedRateLimiter(calls, period, margin=margin, url=shared_url, origin=origin,
                             key=f"market_platform:rate:{vendor.lower()}:{digest}")


@dataclass(frozen=True)
class RetryPolicy:
    """Attempts per request and the exponential backoff (full jitter) between them."""

    attempts: int = 5
    backoff: float = 0.5  # seconds; the n-th wait is uniform in [0, backoff * 2**n], capped
    max_backoff: float = 30.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.backoff < 0 or self.max_backoff < 0:
            raise ConfigError(f"{self!r}: expected attempts >= 1 and non-negative backoffs")


def scrub(text: str, secrets: Iterable[str | None]) -> str:
    """`text` with every secret replaced by ***."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


class _Transient(Exception):
    """A failure worth retrying: 429, 5xx or a network error."""


@dataclass
class GateStats:
    requests: int = 0   # requests sent (each retry counts)
    throttled: int = 0  # 429 answers
    failed: int = 0     # 5xx answers and network errors


class VendorGate:
    """Rate limit, retries and error mapping around each HTTP request to one vendor.

    `auth_hint` ends the 401 message (which variable to fix); `plan_hint` ends the 403 one.
    """

    def __init__(
        self,
        vendor: str,
        *,
        limiter: RateLimiter | SharedRateLimiter | None,
        retry: RetryPolicy,
        secrets: Sequence[str | None],
        auth_hint: str,
        plan_hint: str,
    ) -> None:
        self.vendor, self.limiter, self.retry = vendor, limiter, retry
        self._secrets = tuple(s for s in secrets if s)
        self._auth_hint, self._plan_hint = auth_hint, plan_hint
        self.stats = GateStats()
        self._stats_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"VendorGate({self.vendor}, {self.limiter!r}, {self.retry!r})"

    def scrub(self, text: str) -> str:
        return scrub(text, self._secrets)

    def call(
        self,
        send: Callable[[], R],
        *,
        what: str,
        status: Callable[[R], int],
        body: Callable[[R], str],
        network_errors: tuple[type[BaseException], ...],
    ) -> R:
        """The response of `send()` once it is neither 429 nor 5xx; 401/403 raise VendorAuthError,
        and VendorUnavailableError comes when every attempt failed. Other statuses are returned
        for the client library to handle. `what` names the request in messages (no query string)."""
        retrying = Retrying(
            stop=stop_after_attempt(self.retry.attempts),
            wait=wait_random_exponential(multiplier=self.retry.backoff, max=self.retry.max_backoff),
            retry=retry_if_exception_type(_Transient),
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    return self._attempt(send, what, status, body, network_errors)
        except _Transient as exc:
            raise VendorUnavailableError(
                f"{self.vendor} kept failing on {what} after {self.retry.attempts} attempts "
                f"(last: {exc}); try again later or lower the rate limit"
            ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _attempt(self, send, what, status, body, network_errors):
        if self.limiter is not None:
            self.limiter.acquire()
        self._count("requests")
        try:
            response = send()
        except network_errors as exc:
            self._count("failed")
            raise _Transient(self.scrub(f"{type(exc).__name__}: {exc}")) from None
        code = status(response)
        if code == 429 or code >= 500:
            self._count("throttled" if code == 429 else "failed")
            raise _Transient(f"HTTP {code}: {self._excerpt(body(response))}")
        if code == 401:
            raise VendorAuthError(
                f"{self.vendor} rejected the credentials on {what} (HTTP 401: "
                f"{self._excerpt(body(response))}): {self._auth_hint}"
            )
        if code == 403:
            raise VendorAuthError(
                f"{self.vendor} refused {what} for this plan (HTTP 403: {self._excerpt(body(response))}): "
                f"{self._plan_hint}"
            )
        return response

    def _excerpt(self, text: str) -> str:
        text = " ".join(text.split())
        return self.scrub(text if len(text) <= 300 else text[:300] + "...")

    def _count(self, field: str) -> None:
        with self._stats_lock:
            setattr(self.stats, field, getattr(self.stats, field) + 1)


def run_concurrently(
    items: Sequence[T],
    fn: Callable[[T], R],
    *,
    workers: int,
    on_done: Callable[[T, R], None] | None = None,
) -> list[R]:
    """`[fn(item) for item in items]`, computed by up to `workers` threads.

    At most `workers` items are in flight. `on_done(item, result)` runs in the calling thread as
    each item completes (in completion order), so a caller can stage results one at a time
    without locks. The first exception stops new items from starting, waits for those running,
    and is raised.
    """
    if workers < 1:
        raise ConfigError(f"workers={workers!r}: expected a positive integer")
    results: list[R | None] = [None] * len(items)
    if not items:
        return []
    upcoming = iter(range(len(items)))
    with ThreadPoolExecutor(max_workers=min(workers, len(items)), thread_name_prefix="vendor") as pool:
        running: dict[Future, int] = {}

        def submit_next() -> None:
            i = next(upcoming, None)
            if i is not None:
                running[pool.submit(fn, items[i])] = i

        for _ in range(workers):
            submit_next()
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                i = running.pop(future)
                results[i] = future.result()  # raises the item's exception; the pool waits for the rest
                if on_done is not None:
                    on_done(items[i], results[i])
                submit_next()
    return results  # type: ignore[return-value]


def symbol_list(symbols: Sequence[str] | str) -> list[str]:
    """`symbols` sorted and deduplicated; InvalidInputError names any blank or padded one."""
    if isinstance(symbols, str):
        symbols = [symbols]
    names = sorted(set(symbols))
    bad = [s for s in names if not isinstance(s, str) or not s.strip() or s != s.strip()]
    if bad:
        raise InvalidInputError(f"symbols {bad!r}: expected non-empty tickers without spaces")
    return names


def rate_from_env(env: Mapping[str, str], name: str, default: int) -> int:
    """Calls per minute from variable `name` (default when unset); ConfigError names a bad value."""
    text = env.get(name)
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"{name}={text!r}: expected a positive number of calls per minute")
    return value
