"""The HTTP machinery the Polygon and Alpaca replay servers share: a threaded server on loopback,
JSON replies, a request log, a per-key rate limit and fault injection for tests.

A request goes: injected delay -> injected failure -> authentication (401/403) -> rate limit
(429) -> route. Every request, whatever its fate, lands in the log with the instant it arrived,
so a test can check the rate a client achieved (`RequestLog.max_in_window`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from market_platform.errors import InvalidInputError
from market_platform.replay.data import ReplayData

log = logging.getLogger(__name__)
Clock = Callable[[], datetime]


def system_clock() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # percent-decoded, without the query
    query: dict[str, str]  # the last value of each parameter
    headers: Mapping[str, str]


@dataclass
class Reply:
    status: int
    body: Any  # JSON-serialisable
    headers: dict[str, str] = field(default_factory=dict)


class HttpError(Exception):
    """Raised by a route to answer with `status` and `body`."""

    def __init__(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(status)
        self.status, self.body, self.headers = status, body, headers or {}


def key_label(secret: str) -> str:
    """A stable name for a key that does not reveal it (for logs and rate-limit buckets)."""
    return "key-" + hashlib.sha256(secret.encode()).hexdigest()[:8]


# --------------------------------------------------------------------------- request log


@dataclass(frozen=True)
class LoggedRequest:
    at: float  # time.monotonic() when the request arrived
    method: str
    path: str
    status: int
    client: str | None  # the key's label (key id, or a hash of an API key), never a secret


class RequestLog:
    """Every request a server answered, in arrival order. Thread-safe."""

    def __init__(self) -> None:
        self._entries: list[LoggedRequest] = []
        self._lock = threading.Lock()

    def add(self, entry: LoggedRequest) -> None:
        with self._lock:
            self._entries.append(entry)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def entries(self, prefix: str = "/", *, statuses: set[int] | None = None) -> list[LoggedRequest]:
        with self._lock:
            entries = list(self._entries)
        return [e for e in entries if e.path.startswith(prefix) and (statuses is None or e.status in statuses)]

    def count(self, prefix: str = "/", *, statuses: set[int] | None = None) -> int:
        return len(self.entries(prefix, statuses=statuses))

    def max_in_window(self, window: float, prefix: str = "/", *, statuses: set[int] | None = None) -> int:
        """The most requests (matching `prefix` and `statuses`) that arrived within any `window` seconds."""
        return max_in_window(sorted(e.at for e in self.entries(prefix, statuses=statuses)), window)


# --------------------------------------------------------------------------- faults


@dataclass
class _Failure:
    prefix: str
    status: int
    remaining: int
    skip: int
    body: Any


@dataclass
class _Delay:
    prefix: str
    seconds: float
    remaining: int | None


class Faults:
    """Failures and delays to inject into a server's replies. Thread-safe; `clear()` between tests.

    Rules apply to requests whose path starts with their prefix, in the order they were added.
    """

    def __init__(self) -> None:
        self._failures: list[_Failure] = []
        self._delays: list[_Delay] = []
        self._lock = threading.Lock()

    def fail(self, prefix: str, status: int, *, times: int = 1, skip: int = 0, body: Any = None) -> None:
        """Answer `status` to the next `times` requests under `prefix`, after letting `skip` through.

        `body` defaults to the vendor's own body for that status."""
        with self._lock:
            self._failures.append(_Failure(prefix, status, times, skip, body))

    def fail_page(self, prefix: str, page: int, status: int, *, times: int = 1) -> None:
        """Fail page `page` (1 = the first request) of the next paginated sequence under `prefix`,
        `times` times: retries of that page fail too until `times` is used up."""
        if page < 1:
            raise InvalidInputError(f"page={page!r}: expected 1 or more")
        self.fail(prefix, status, times=times, skip=page - 1)

    def delay(self, seconds: float, *, prefix: str = "/", times: int | None = None) -> None:
        """Hold replies to requests under `prefix` for `seconds` (the next `times`, or all)."""
        with self._lock:
            self._delays.append(_Delay(prefix, seconds, times))

    def clear(self) -> None:
        with self._lock:
            self._failures.clear()
            self._delays.clear()

    def take(self, path: str) -> tuple[float, _Failure | None]:
        """The delay and the failure (if any) for a request to `path`, consuming them."""
        with self._lock:
            seconds = 0.0
            for rule in self._delays:
                if path.startswith(rule.prefix) and rule.remaining != 0:
                    seconds += rule.seconds
                    if rule.remaining is not None:
                        rule.remaining -= 1
            self._delays = [r for r in self._delays if r.remaining != 0]
            for rule in self._failures:
                if not path.startswith(rule.prefix):
                    continue
                if rule.skip > 0:
                    rule.skip -= 1
                    continue
                rule.remaining -= 1
                self._failures = [r for r in self._failures if r.remaining > 0]
                return seconds, rule
            return seconds, None


# --------------------------------------------------------------------------- rate limit


class KeyRateLimit:
    """At most `calls` accepted requests per key in any `window` seconds (None: no limit).

    Requests answered 429 do not count, as with the vendors: a client that waits gets through."""

    def __init__(self, calls: int | None = None, window: float = 60.0) -> None:
        self._lock = threading.Lock()
        self._accepted: dict[str, deque[float]] = {}
        self.configure(calls, window)

    def configure(self, calls: int | None, window: float = 60.0) -> None:
        if calls is not None and (isinstance(calls, bool) or not isinstance(calls, int) or calls < 1):
            raise InvalidInputError(f"rate limit {calls!r}: expected a positive number of calls, or None")
        if not window > 0:
            raise InvalidInputError(f"rate limit window {window!r}: expected a positive number of seconds")
        with self._lock:
            self.calls, self.window = calls, float(window)
            self._accepted.clear()

    def admit(self, client: str | None, now: float) -> bool:
        with self._lock:
            if self.calls is None:
                return True
            accepted = self._accepted.setdefault(client or "", deque())
            while accepted and now - accepted[0] >= self.window:
                accepted.popleft()
            if len(accepted) >= self.calls:
                return False
            accepted.append(now)
            return True


# --------------------------------------------------------------------------- server


Route = Callable[..., Reply]


class Service:
    """Something with start() and stop() that is also a context manager."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class ReplayHTTPServer(Service):
    """A vendor's REST API on loopback. Subclasses set `vendor`, add routes with `route()` and
    implement `authenticate` and the vendor's error bodies."""

    vendor = "vendor"

    def __init__(self, data: ReplayData, *, host: str = "127.0.0.1", port: int = 0,
                 clock: Clock = system_clock, rate_limit: int | None = None, rate_window: float = 60.0) -> None:
        self.data = data
        self.clock = clock
        self.faults = Faults()
        self.log = RequestLog()
        self.rate_limit = KeyRateLimit(rate_limit, rate_window)
        #: Tracebacks of requests that failed with a 500 (a test can assert there are none).
        self.errors: list[str] = []
        self._routes: list[tuple[re.Pattern[str], Route]] = []
        self._host, self._port = host, port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url if self._server else 'not started'})"

    # ----------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        if self._server is not None:
            return
        self._server = _Server((self._host, self._port), _Handler)
        self._server.replay = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"{self.vendor}-replay",
                                        kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    def reset(self) -> None:
        """Forget injected faults, the request log, errors and the rate-limit windows."""
        self.faults.clear()
        self.log.clear()
        self.errors.clear()
        self.rate_limit.configure(self.rate_limit.calls, self.rate_limit.window)

    def now(self) -> datetime:
        return self.clock()

    # ----------------------------------------------------------------------- dispatch

    def route(self, pattern: str, handler: Route) -> None:
        """Serve GET requests whose path matches `pattern` (fully) with `handler(request, *groups)`."""
        self._routes.append((re.compile(pattern), handler))

    def dispatch(self, request: Request) -> Reply:
        arrived = time.monotonic()
        delay, failure = self.faults.take(request.path)
        if delay:
            time.sleep(delay)
        client = None
        try:
            if failure is not None:
                raise HttpError(failure.status, failure.body if failure.body is not None
                                else self.error_body(failure.status, "injected failure"))
            client = self.authenticate(request)
            if not self.rate_limit.admit(client, time.monotonic()):
                raise HttpError(429, self.error_body(429, ""), self.throttle_headers())
            reply = self._route(request)
        except HttpError as exc:
            reply = Reply(exc.status, exc.body, exc.headers)
        except InvalidInputError as exc:
            reply = Reply(400, self.error_body(400, str(exc)))
        except Exception:  # a bug in the replay: answer like a vendor's 500, keep the traceback
            self.errors.append(traceback.format_exc())
            log.exception("%s replay failed on %s", self.vendor, request.path)
            reply = Reply(500, self.error_body(500, "internal server error"))
        self.log.add(LoggedRequest(arrived, request.method, request.path, reply.status, client))
        return reply

    def _route(self, request: Request) -> Reply:
        for pattern, handler in self._routes:
            match = pattern.fullmatch(request.path)
            if match:
                return handler(request, *match.groups())
        raise HttpError(404, self.error_body(404, f"no route for {request.path}"))

    # ----------------------------------------------------------------------- vendor specifics

    def authenticate(self, request: Request) -> str | None:
        """The client's label, or HttpError 401/403."""
        raise NotImplementedError

    def error_body(self, status: int, message: str) -> Any:
        raise NotImplementedError

    def throttle_headers(self) -> dict[str, str]:
        return {}


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        # A client that gave up (a timeout in a test) closes its socket under our reply: not an error.
        log.debug("replay connection from %s dropped", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the clients reuse connections
    server_version = "market-platform-replay"

    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        replay: ReplayHTTPServer = self.server.replay  # type: ignore[attr-defined]
        url = urlsplit(self.path)
        request = Request("GET", unquote(url.path), dict(parse_qsl(url.query, keep_blank_values=True)),
                          self.headers)
        reply = replay.dispatch(request)
        payload = json.dumps(reply.body, separators=(",", ":"), allow_nan=False).encode()
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # the RequestLog keeps what matters; the stdlib's line per request is noise


def max_in_window(times: list[float], window: float) -> int:
    """The most of the sorted instants `times` that fall within any `window` seconds."""
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] >= window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best
