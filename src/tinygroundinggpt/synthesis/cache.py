"""On-disk cache of model calls keyed by a hash of everything that determines the reply.

One small JSON file per call, written to a temporary name and renamed, so a run killed at any moment
leaves either the whole entry or none: a rerun never repeats a call whose reply was stored.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def hash_inputs(inputs: Any) -> str:
    """sha256 of the canonical JSON of ``inputs`` (sorted keys, no whitespace)."""
    blob = json.dumps(inputs, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class DiskCache:
    """``get``/``put`` JSON values by input hash under ``root/ab/abcdef....json``; counts hits and misses."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> Any | None:
        path = self._path(key)
        try:
            value = json.loads(path.read_text(encoding="utf-8"))["value"]
        except FileNotFoundError:
            with self._lock:
                self.misses += 1
            return None
        except (ValueError, KeyError, TypeError):  # damaged on disk (e.g. a crash of the machine): ask again
            log.warning("cache entry %s is unreadable; the call is made again", path)
            with self._lock:
                self.misses += 1
            return None
        with self._lock:
            self.hits += 1
        return value

    def put(self, key: str, value: Any) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # A per-thread temp name: two workers storing the same key must not interleave their bytes.
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        with tmp.open("w", encoding="utf-8") as fh:
            fh.write(json.dumps({"value": value}, ensure_ascii=False))
            fh.flush()
            os.fsync(fh.fileno())  # the bytes reach the disk before the name does: a power cut leaves no empty entry
        tmp.replace(path)
