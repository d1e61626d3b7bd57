"""The reference artStore Admin Module (`ingester-gateway admin-module`): tokens, the
file registry, its `file-events` announcements and the storage-elements document, as
BRIEF's Admin Module contract describes them, for `make run`, the tests and the
benchmarks. A real Admin Module must work in its place.

    validation.py  request fields checked into FastAPI's 422 shape (pure)
    records.py     the registry record and what registration and update may hold (pure)
    registry.py    the records in SQLite, on one worker thread
    tokens.py      service accounts and admin users, and the tokens they get
    access.py      who may read, register, update, delete
    events.py      file:created / file:updated / file:deleted on the `file-events` stream
    elements.py    SEs polled into `artstore:storage_elements`, changes announced
    app.py         the routes, as one raw ASGI app
"""
