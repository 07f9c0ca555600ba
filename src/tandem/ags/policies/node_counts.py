"""Node-scope rate-limit counts shared by the worker processes of one gateway.

With `Workers` > 1 a gateway serves from N processes, and a client's
connections land on any of them (SO_REUSEPORT), so a node-scope limit counted
in each process's memory would let N x `limit` requests through. Instead the
parent creates one table in shared memory (`memfd_create`, never a file on
disk) before it starts its workers, passes its descriptor to every worker
(a restarted worker gets the same table), and each node-scope rate-limit
counts there: one budget per gateway, whatever the number of workers.

The table is `SLOTS` slots of 16 bytes, `(tag, end, count)`: `tag` is a 64-bit
keyed hash of the subject (consumer or client IP) under the policy (the same
in every worker: the policy's project, document and scope), `end` the epoch
second its window ends, `count` the requests counted in that window. A slot
whose window has ended is free. A subject lives at the first slot of its
probe run (`PROBES` slots from `tag % SLOTS`) that holds it or, when none
does, the first free one. Each slot is read and written under a POSIX record
lock on its 16 bytes (`lockf`): the increment is atomic across processes, a
worker killed while holding a lock releases it by dying, and workers that
count different subjects never wait for each other.

When every slot of a subject's run holds a live window of other subjects
(more than about `SLOTS` subjects counted in one window), the subject is
counted in the worker's own memory for that window and a warning is logged:
the limit is then per worker for it, never refused wrongly. With one serving
process the table is not used: the rate-limit step counts in its own dict.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import mmap
import os
import struct
import time
from typing import Any

log = logging.getLogger("tandem.ags.policies.node_counts")

SLOT = struct.Struct("<QII")  # tag, window end (epoch seconds), count
SLOTS = 1 << 16  # 1 MiB
PROBES = 8
WARN_EVERY = 60.0
ENV_FD = "TANDEM_AGS_NODE_COUNTS_FD"  # the table's descriptor in a worker process


def create_table() -> int:
    """The parent: a zeroed table in shared memory; its descriptor is passed to each worker."""
    fd = os.memfd_create("tandem-node-counts", 0)
    os.ftruncate(fd, SLOTS * SLOT.size)
    return fd


class SharedTable:
    """One process's mapping of the table."""

    def __init__(self, fd: int) -> None:
        size = os.fstat(fd).st_size
        if size != SLOTS * SLOT.size:
            raise ValueError(f"node counts table: {size} bytes, expected {SLOTS * SLOT.size}")
        self.fd = fd
        self.mm = mmap.mmap(fd, size)
        self.full_since = 0.0

    def __repr__(self) -> str:
        return f"<SharedTable fd={self.fd} slots={SLOTS}>"

    def add(self, tag: int, end: int, now: int) -> int | None:
        """Count one request of `tag` in the window ending at `end`: the count in that window
        (this one included), or None when the subject's probe run has no room."""
        fd, mm, lockf, unpack, pack = self.fd, self.mm, fcntl.lockf, SLOT.unpack_from, SLOT.pack_into
        ex, un = fcntl.LOCK_EX, fcntl.LOCK_UN
        home = tag % SLOTS
        t: int
        e: int
        n: int
        for _ in range(3):  # a claimed slot taken by another subject meanwhile: look again
            free = -1
            for i in range(PROBES):
                off = ((home + i) % SLOTS) * 16
                lockf(fd, ex, 16, off)
                try:
                    t, e, n = unpack(mm, off)
                    if t == tag and e == end:
                        pack(mm, off, tag, end, n + 1)
                        return n + 1
                finally:
                    lockf(fd, un, 16, off)
                if free < 0 and (e <= now or t == 0):
                    free = off
            if free < 0:
                return None
            lockf(fd, ex, 16, free)
            try:
                t, e, n = unpack(mm, free)
                if t == tag and e == end:  # another worker claimed it for this subject meanwhile
                    pack(mm, free, tag, end, n + 1)
                    return n + 1
                if e <= now or t == 0:
                    pack(mm, free, tag, end, 1)
                    return 1
            finally:
                lockf(fd, un, 16, free)
        return None

    def close(self) -> None:
        self.mm.close()


class SharedWindow:
    """One node-scope rate-limit's counts in the shared table (a worker's view)."""

    __slots__ = ("table", "seed", "tags", "tags_end", "local", "local_end")

    def __init__(self, table: SharedTable, key: tuple[Any, ...]) -> None:
        self.table = table
        self.seed = hashlib.blake2b(json.dumps(list(key)).encode(), digest_size=16).digest()
        self.tags: dict[Any, int] = {}  # subject -> tag, for the current window only
        self.tags_end = 0
        self.local: dict[Any, int] = {}  # subjects the table had no room for, this window
        self.local_end = 0

    def __repr__(self) -> str:
        return f"<SharedWindow {self.table!r} subjects={len(self.tags)} local={len(self.local)}>"

    def hit(self, subject: Any, end: int, now: int) -> int:
        """Count one request of `subject` (a consumer name or an IP address as bytes) in the window
        ending at `end`; the count across every worker of this gateway."""
        if end != self.tags_end:
            self.tags, self.tags_end = {}, end
        tag = self.tags.get(subject)
        if tag is None:
            raw = b"c" + subject.encode() if type(subject) is str else b"i" + subject
            tag = int.from_bytes(hashlib.blake2b(raw, digest_size=8, key=self.seed).digest(), "little") or 1
            self.tags[subject] = tag
        n = self.table.add(tag, end, now)
        if n is not None:
            return n
        return self._local(subject, end)

    def _local(self, subject: Any, end: int) -> int:
        if end != self.local_end:
            self.local, self.local_end = {}, end
        n = self.local[subject] = self.local.get(subject, 0) + 1
        table = self.table
        mono = time.monotonic()
        if mono - table.full_since > WARN_EVERY:
            table.full_since = mono
            log.warning("node rate-limit table full (%d subjects in live windows): some subjects are "
                        "counted per worker process until their window ends", SLOTS)
        return n


def from_environment() -> SharedTable | None:
    """A worker: the table its parent passed, if any."""
    fd = os.environ.get(ENV_FD)
    return SharedTable(int(fd)) if fd else None
