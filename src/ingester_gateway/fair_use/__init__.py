"""Fair use per user (`sub`) across gateway instances: uploads in flight, requests per
minute, bytes per window (README, "Fair use").

An endpoint that takes uploads (the raw and multipart routes; the tus endpoint the same
way) holds the gateway's `FairUseGate` and does, before its first `receive()`:

    slot = await fair_use.acquire_upload(principal)   # 429 ApiError with Retry-After
    try:
        body = RequestBody(receive, ..., meter=slot.meter)  # counts and paces the body
        ...                                                  # store the upload
        await slot.release()                                 # before answering
        ...answer...
    finally:
        await slot.release()                                 # idempotent

`slot.meter` is any `pipeline.body.BodyMeter`: an endpoint that reads its body some
other way calls `meter.count(n)` per piece and awaits `meter.settle()` before reading
more when it returned True. A tus PATCH is one upload: it takes a slot for as long as
it runs, its bytes count against the quota, and it is paced like any other body.

Modules: `limits` (pure: the policy per role and token, the window arithmetic),
`ports` (the Protocols), `gate` (admission, pacing, leases, the Redis fallback),
`local` (the ledger in this process), `redis_ledger` (the ledger in Redis: one Lua
script, one round trip per upload start and end).
"""
