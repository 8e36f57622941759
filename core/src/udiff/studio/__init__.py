"""``udiff studio``: train, watch, compare and serve from one page (FastAPI only in ``app``)."""
