"""``udiff serve``: trained runs over HTTP. ``schema`` (request, limits, errors) -> ``runs``
(loading, one base for LoRA runs, request checks) -> ``jobs`` (job, queue, store) -> ``worker``
(batches, a step at a time) -> ``service`` (the state behind the routes, drain) -> ``app``
(FastAPI routes, auth) -> ``server`` (uvicorn, signals). ``page.html`` is the page at ``/``."""
