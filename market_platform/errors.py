"""Exceptions raised by market_platform.

    MarketPlatformError
    ├── ConfigError                  a setting or URL is wrong (names the variable, never a secret)
    ├── InvalidInputError            a user asked for something that cannot exist
    │   ├── NotASessionError         a date that is not a trading session
    │   ├── UnknownDatasetError      a lake dataset that is not defined
    │   ├── UnknownSymbolError       a ticker the vendor does not list
    │   └── NotEnoughHistoryError    a model asked to learn from sessions that are not stored
    ├── BrokerUnavailableError       the Celery broker (Redis) of the workers cannot be reached
    ├── WorkerLostError              a Celery worker died while running a step, every time it was sent
    ├── StorageError
    │   ├── DatabaseUnavailableError the tick store cannot be reached
    │   ├── LakeError                a lake read or write failed
    │   │   └── PartitionNotFoundError   the lake has no such partition
    │   └── QueueUnavailableError    the snapshot queue's service (SQS, S3) failed a call
    └── VendorError                  a market data vendor refused or failed a request
        ├── VendorAuthError          401/403 from REST, 402/409 on a stream: fix the key or plan
        ├── VendorNotFoundError      the vendor has no such object (a flat file not published yet)
        ├── VendorUnavailableError   retries exhausted on 429/5xx or a network failure
        └── MalformedResponseError   a response (or a queued copy of one) that is not the documented shape

Every message names the offending value and what was expected; none carries a secret.
"""


class MarketPlatformError(Exception):
    """Base class of every error the platform raises on purpose."""


class ConfigError(MarketPlatformError):
    """A configuration value (environment variable, URL, option) is invalid."""


class InvalidInputError(MarketPlatformError, ValueError):
    """A user-supplied value is impossible: a bad date range, an unknown name."""


class NotASessionError(InvalidInputError):
    """The date is not a trading session of the exchange calendar."""


class UnknownDatasetError(InvalidInputError):
    """The lake has no dataset of that name."""


class UnknownSymbolError(InvalidInputError):
    """A ticker the vendor does not list (on the day asked about)."""


class NotEnoughHistoryError(InvalidInputError):
    """Too few earlier sessions are stored to fit a model for the session asked for."""


class BrokerUnavailableError(MarketPlatformError):
    """The Redis of the Celery workers (broker, results, shared rate limits) cannot be reached."""


class WorkerLostError(MarketPlatformError):
    """A step's Celery worker stopped (killed, its machine lost) before the step ended."""


class StorageError(MarketPlatformError):
    """A storage operation failed."""


class DatabaseUnavailableError(StorageError):
    """The tick store database cannot be reached."""


class LakeError(StorageError):
    """A Parquet lake read or write failed."""


class PartitionNotFoundError(LakeError):
    """A lake partition that was asked for has not been written (or was deleted)."""


class QueueUnavailableError(StorageError):
    """The snapshot queue's service (Amazon SQS, or S3 for large bodies) could not be reached or refused a call."""


class VendorError(MarketPlatformError):
    """A market data vendor refused or failed a request."""


class VendorAuthError(VendorError):
    """The vendor rejected the credentials or the plan does not include the data."""


class VendorNotFoundError(VendorError):
    """The vendor has no such object, e.g. a flat file that is not published (yet)."""


class VendorUnavailableError(VendorError):
    """The vendor kept failing (rate limit, server errors, network) after retries."""


class MalformedResponseError(VendorError):
    """A vendor's response that does not have the documented shape (kept in dead_letters)."""
