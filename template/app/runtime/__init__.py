"""Process-level tuning, kept apart from the business code.

Each module is one measured optimisation (docs/performance.md), installed by one line:
admission control and the GC settings in `create_app()` (app/main.py), the hashing
threads' priority where the hasher is made, the event loop by uvicorn's `--loop` option.
Deleting that line and the module removes the optimisation and nothing else.
"""
