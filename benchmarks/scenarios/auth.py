"""Auth: what verifying the bearer token costs per request. `TokenVerifier.verify_header`
on the same token, in a subprocess of its own (`refwork.py`), without the token cache
(`cache_size=0`: an RS256 verify each time) and with it (jwt). Figure 7, reported.
"""

from __future__ import annotations

from benchmarks.figure import Figure, Reading
from benchmarks.refwork import run_refwork
from benchmarks.scenario import Bench, Measurement, Scenario
from benchmarks.summary import Summaries


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


def cached_vs_uncached(s: Summaries) -> Reading:
    extra = s["jwt"].runs[0].extra
    cached, uncached = extra["cached"]["us_per_request"], extra["uncached"]["us_per_request"]
    return Reading(
        f"7. auth cost per request (same token, {extra['count']}x):"
        " with the token cache / without (cache_size=0)",
        cached,
        uncached,
        "µs",
        note=f"the cache makes a repeat token {uncached / cached:.0f}x cheaper",
        chart="auth µs per request\ncached / uncached",
    )


FIGURES = (Figure("auth.us_per_request.cached_vs_uncached", ("jwt",), cached_vs_uncached),)
