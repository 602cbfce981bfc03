"""Garbage collection tuned for a long-running server."""

import gc

# Allocations before a young collection, and collections before an older one.
GC_THRESHOLDS = (50_000, 20, 20)


def tune_garbage_collection() -> None:
    """Freeze what start-up built and collect less often; call once, after start-up.

    What exists by then (modules, the app, its routes and schemas) lives as long as the
    process: frozen, collections no longer scan it again and again. And with hundreds
    of requests in flight each collection scans all of their objects, so collecting
    after 50,000 allocations instead of 700 costs less CPU per request.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
