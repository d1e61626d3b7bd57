"""Auth: what verifying the bearer token costs per request. `TokenVerifier.verify_header`
on the same token, in a subprocess of its own (`refwork.py`), without the token cache
(`cache_size=0`: an RS256 verify each time) and with it (jwt). Figure 7, reported.
"""

from __future__ import annotations

from benchmarks.refwork import run_refwork
from benchmarks.scenario import Bench, Measurement, Scenario


def run_jwt(bench: Bench) -> Measurement:
    keys = bench.stack.workdir / "keys"
    count = 200 if bench.warm else bench.opts.jwt_count
    r = run_refwork(
        *("jwt", str(keys / "private.pem"), str(keys / "public.pem")),
        *("--count", str(count)),
    )
    wall = r["uncached"]["wall_s"] + r["cached"]["wall_s"]
    return Measurement("jwt", 0, wall, {}, extra=r)


SCENARIOS = (
    Scenario(
        "jwt",
        "TokenVerifier cost per request (subprocess)",
        run_jwt,
        servers=(),
        rounds="once",
        uses_payload=False,
        table="none",
    ),
)
