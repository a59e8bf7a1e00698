"""The streamer's on-disk spool: what could not go to the database yet, kept in order until it can.

One file per entry, named by a sequence number that only grows (`000000000042.entry`), written
to a temporary name, fsync'd, renamed and the directory fsync'd: an entry on disk is complete
or absent. An entry holds a small JSON header and any number of named Arrow tables (each an
Arrow IPC stream). Entries are read back oldest first and deleted once written to the database.
The spool survives the process, so a stream killed while the database was away replays the
entries at its next start. An entry that cannot be read back raises `SpoolReadError` naming it,
so the reader can set it aside instead of stopping on it.
"""

from __future__ import annotations

import io
import json
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa

from market_platform.errors import StorageError
from market_platform.storage.lake import fsync_dir

_MAGIC = b"MPSPOOL1\n"
_NAME = re.compile(r"^(\d{12})\.entry$")
_FIRST = 10**11


class SpoolReadError(StorageError):
    """A spool entry that cannot be read back (not an entry, cut short, corrupt)."""

    def __init__(self, seq: int, message: str) -> None:
        super().__init__(message)
        self.seq = seq


@dataclass
class SpoolEntry:
    """A header (JSON-able) and named tables, as spooled."""

    header: dict[str, Any]
    tables: dict[str, pa.Table] = field(default_factory=dict)
    seq: int | None = None


class Spool:
    """An ordered, durable queue of entries in `directory` (created if missing)."""

    def __init__(self, directory: Path | str, *, fsync: bool = True) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._fsync = fsync
        self._lock = threading.Lock()
        for stale in self.directory.glob("*.tmp"):  # a write cut short by a crash
            stale.unlink(missing_ok=True)
        seqs = self._seqs()
        # Numbers start mid-range so that entries older than all others can be put in front.
        self._next = (seqs[-1] + 1) if seqs else _FIRST
        self.bytes_written = 0

    def _seqs(self) -> list[int]:
        return sorted(int(m.group(1)) for p in self.directory.iterdir() if (m := _NAME.match(p.name)))

    def __len__(self) -> int:
        return len(self._seqs())

    def count(self, accept: Callable[[dict[str, Any]], bool] | None = None) -> int:
        """Entries whose header `accept` takes (all of them when None; unreadable ones count)."""
        if accept is None:
            return len(self)
        return sum(1 for seq in self._seqs() if self._accepted(seq, accept))

    def path(self, seq: int) -> Path:
        return self.directory / f"{seq:012d}.entry"

    def _accepted(self, seq: int, accept: Callable[[dict[str, Any]], bool]) -> bool:
        try:
            return accept(self.header(seq))
        except SpoolReadError:
            return True  # unreadable: the reader sets it aside

    def empty(self) -> bool:
        return not any(_NAME.match(p.name) for p in self.directory.iterdir())

    def append(self, entry: SpoolEntry) -> int:
        """Write `entry` durably after all others; returns its sequence number."""
        with self._lock:
            seq = self._next
            self._next += 1
            self._write(seq, entry)
        return seq

    def prepend(self, entries: list[SpoolEntry]) -> None:
        """Write `entries` (oldest first) durably before all others."""
        with self._lock:
            seqs = self._seqs()
            first = (seqs[0] if seqs else self._next) - len(entries)
            if first < 0:
                raise StorageError(f"the stream spool {self.directory} cannot take {len(entries)} more entries in front")
            for offset, entry in enumerate(entries):
                self._write(first + offset, entry)

    def _write(self, seq: int, entry: SpoolEntry) -> None:
        blobs = []
        for name, table in entry.tables.items():
            sink = io.BytesIO()
            with pa.ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table)
            blobs.append((name, sink.getvalue()))
        header = json.dumps({"header": entry.header, "tables": [[n, len(b)] for n, b in blobs]}, default=str)
        path = self.directory / f"{seq:012d}.entry"
        tmp = path.with_suffix(".tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(_MAGIC)
                f.write(header.encode() + b"\n")
                for _, blob in blobs:
                    f.write(blob)
                f.flush()
                if self._fsync:
                    os.fsync(f.fileno())
            os.replace(tmp, path)
            if self._fsync:
                fsync_dir(self.directory)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StorageError(f"cannot write the stream spool {path}: {exc}") from None
        self.bytes_written += path.stat().st_size

    def oldest(self) -> SpoolEntry | None:
        """The oldest entry, read back (not removed), or None when the spool is empty."""
        seqs = self._seqs()
        if not seqs:
            return None
        return self.read(seqs[0])

    def oldest_run(self, max_rows: int, mergeable: "Callable[[SpoolEntry], bool]",
                   accept: Callable[[dict[str, Any]], bool] | None = None) -> list[SpoolEntry]:
        """The oldest entry and the mergeable ones right after it, up to about `max_rows` rows
        (a replay writes them as one batch instead of one transaction each); with `accept`,
        only entries whose header it takes (the others are left where they are)."""
        run: list[SpoolEntry] = []
        rows = 0
        for seq in self._seqs():
            if accept is not None and not self._accepted(seq, accept):
                continue
            entry = self.read(seq)
            if run and (not mergeable(entry) or not mergeable(run[0])):
                break
            run.append(entry)
            rows += sum(t.num_rows for t in entry.tables.values())
            if rows >= max_rows:
                break
        return run

    def header(self, seq: int) -> dict[str, Any]:
        """The header of entry `seq` alone (its tables are not read)."""
        path = self.path(seq)
        try:
            with open(path, "rb") as f:
                head = f.read(len(_MAGIC))
                line = f.readline(1 << 20)
        except OSError as exc:
            raise SpoolReadError(seq, f"cannot read the spool entry {path}: {exc}") from None
        return self._meta(seq, head + line)["header"]

    def _meta(self, seq: int, data: bytes) -> dict[str, Any]:
        path = self.path(seq)
        if not data.startswith(_MAGIC):
            raise SpoolReadError(seq, f"{path} is not a spool entry: it lacks the {_MAGIC!r} header")
        try:
            meta = json.loads(data[len(_MAGIC):data.index(b"\n", len(_MAGIC))])
            if not isinstance(meta.get("header"), dict):
                raise ValueError("no header")
            return meta
        except (ValueError, AttributeError) as exc:
            raise SpoolReadError(seq, f"{path} has no readable header: {exc}") from None

    def read(self, seq: int) -> SpoolEntry:
        path = self.path(seq)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise SpoolReadError(seq, f"cannot read the spool entry {path}: {exc}") from None
        meta = self._meta(seq, data)
        position = data.index(b"\n", len(_MAGIC)) + 1
        tables = {}
        try:
            for name, size in meta["tables"]:
                with pa.ipc.open_stream(pa.py_buffer(data[position:position + size])) as reader:
                    tables[name] = reader.read_all()
                position += size
        except (pa.ArrowException, ValueError, TypeError, KeyError) as exc:
            raise SpoolReadError(seq, f"{path} is cut short or corrupt: {exc}") from None
        return SpoolEntry(meta["header"], tables, seq)

    def remove(self, seq: int) -> None:
        (self.directory / f"{seq:012d}.entry").unlink(missing_ok=True)

