"""Per-key quotas: requests per minute (a sliding 60-s window) and images per UTC day. Over
either: 429 with ``Retry-After``. Counted by key name, so a SIGHUP reload keeps what was used."""

from __future__ import annotations

import math
import threading
import time
from collections import defaultdict, deque

from .keys import Key
from .schema import ApiError

WINDOW_S = 60.0
DAY_S = 86400


class Quotas:
    def __init__(self, clock=time.time) -> None:
        self.clock = clock
        self._requests: dict[str, deque[float]] = defaultdict(deque)
        self._images: dict[str, tuple[int, int]] = {}  # key -> (UTC day number, images)
        self._lock = threading.Lock()

    def take(self, key: Key, images: int) -> None:
        """Count one request of ``images`` images for ``key``, or raise 429 counting nothing."""
        if key.requests_per_minute is None and key.images_per_day is None:
            return
        now = self.clock()
        with self._lock:
            recent = self._requests[key.name]
            while recent and recent[0] <= now - WINDOW_S:
                recent.popleft()
            if key.requests_per_minute is not None and len(recent) >= key.requests_per_minute:
                wait = math.ceil(recent[0] + WINDOW_S - now)
                raise ApiError(429, "rate_limited", f"key {key.name!r} may make "
                               f"{key.requests_per_minute} requests per minute; retry in "
                               f"{wait} s", "Authorization", {"Retry-After": str(max(wait, 1))})
            day = int(now // DAY_S)
            used = self._images.get(key.name, (day, 0))
            used = used[1] if used[0] == day else 0
            if key.images_per_day is not None and used + images > key.images_per_day:
                wait = math.ceil((day + 1) * DAY_S - now)
                raise ApiError(429, "daily_quota", f"key {key.name!r} may generate "
                               f"{key.images_per_day} images per UTC day; {used} used today, "
                               f"this request asks for {images}", "Authorization",
                               {"Retry-After": str(max(wait, 1))})
            recent.append(now)
            self._images[key.name] = (day, used + images)
