"""sanlock's record checksum: CRC-32C seeded with 0xFFFFFFFE and no final xor.

Standard CRC-32C libraries start from 0xFFFFFFFF and complement the result.
Both steps cancel against a library "extend" call: passing the finalised value
1 makes the internal register start at ~1 == 0xFFFFFFFE, and complementing the
library's result undoes its final xor.  The compiled (SSE4.2 / table in C) path
of google-crc32c does the work; its pure-Python fallback is about 100x slower
and would make a 2000-host renewal miss its budget, so it is refused unless
``DISKPAXOS_ALLOW_SLOW_CRC=1`` is set, and then a warning is logged.
"""

from __future__ import annotations

import logging
import os

import google_crc32c
import numpy as np

log = logging.getLogger(__name__)

IMPLEMENTATION: str = google_crc32c.implementation

if IMPLEMENTATION != "c":
    if os.environ.get("DISKPAXOS_ALLOW_SLOW_CRC") != "1":
        raise ImportError(
            "google-crc32c has no compiled implementation on this machine "
            f"(implementation={IMPLEMENTATION!r}); reinstall it with its C extension, "
            "or set DISKPAXOS_ALLOW_SLOW_CRC=1 to accept the slow path"
        )
    log.warning("using the pure-Python CRC-32C fallback: lease I/O budgets may be missed")

_extend = google_crc32c.extend


def sanlock_checksum(data: bytes) -> int:
    """Checksum of ``data`` exactly as sanlock computes it (seed ~1, no final xor)."""
    return _extend(1, data) ^ 0xFFFFFFFF


def checksums(blob: bytes, record_len: int) -> np.ndarray:
    """Checksums of consecutive ``record_len``-byte records packed in ``blob``.

    One contiguous bytes object and a tight loop of C calls: the bulk-verify
    path of a 2000-host lockspace.
    """
    ext = _extend
    sums = [ext(1, blob[i: i + record_len]) for i in range(0, len(blob), record_len)]
    return np.array(sums, dtype=np.uint32) ^ np.uint32(0xFFFFFFFF)
