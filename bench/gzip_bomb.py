"""Peak memory of the MyPreferences client under parallel gzip bombs.

A hostile server answers every Retrieve-status call with a valid gzip stream
of 1 GiB of zeros (about 1 MiB on the wire). Each scenario runs in a fresh
process (peak RSS is a high-water mark): it makes one ordinary lookup (the
idle baseline: imports, pools, one answer read), then K lookups in parallel
against the bomb, and reports its RSS before and its peak RSS after.

    .venv/bin/python -m bench.gzip_bomb            # K=8
    .venv/bin/python -m bench.gzip_bomb -k 16

Scenarios: ``capped`` is the client as it is (Accept-Encoding: identity, and
bodies decoded by ``bot.mypreferences.decoding`` under a hard cap);
``httpx-decoding`` reads the same answers the way the client did before
(httpx's own decoder, then the 1 MiB cap), for comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import time
from typing import Any

from bench.common import print_machine, table, write_json

MIB = 1024 * 1024


def _rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def _scenario(url: str, parallel: int, mode: str) -> dict[str, Any]:
    import httpx

    from bot.config import Settings
    from bot.mypreferences import errors
    from bot.mypreferences.client import MAX_BODY_BYTES, MyPreferencesClient, RetryPolicy

    settings = Settings(
        api_url=url,
        client_id="ACME",
        authorization="PNAUTHINFO3-SHA256 bench",  # type: ignore[arg-type]
        http_timeout_seconds=30.0,
    )
    one_try = RetryPolicy(attempts=1, budget_seconds=60)
    async with MyPreferencesClient(settings) as api:
        await api.get_status(1, retry=one_try)  # an ordinary answer: the idle baseline
        idle, idle_peak = _rss_mib(), _peak_mib()
        started = time.perf_counter()
        if mode == "capped":
            outcomes = await asyncio.gather(
                *(api.get_status(2, retry=one_try) for _ in range(parallel)),
                return_exceptions=True,
            )
            refused = sum(isinstance(o, errors.MalformedResponse) for o in outcomes)
        else:
            # The client before the fix: httpx decodes each chunk whole, then the cap.
            async def old_read() -> bool:
                async with httpx.AsyncClient() as http, http.stream("GET", url + "bomb") as r:
                    size = 0
                    async for chunk in r.aiter_bytes():
                        size += len(chunk)
                        if size > MAX_BODY_BYTES:
                            return True
                return False

            refused = sum(await asyncio.gather(*(old_read() for _ in range(parallel))))
        seconds = time.perf_counter() - started
    peak = _peak_mib()
    return {
        "mode": mode,
        "parallel": parallel,
        "idle_rss_mib": round(idle, 1),
        "idle_peak_mib": round(idle_peak, 1),
        "peak_rss_mib": round(peak, 1),
        "growth_mib": round(peak - max(idle, idle_peak), 1),
        "refused": refused,
        "seconds": round(seconds, 2),
    }


def _serve_bomb() -> None:
    """The hostile server: this process, until killed."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from bot.sandbox.devserver import ServerThread
    from tests.mypreferences.test_hostile_servers import STATUS, gzip_bomb

    bomb = gzip_bomb()

    async def status(request: Request) -> Response:
        if request.path_params.get("token") == "1":
            return Response(STATUS, media_type="application/json")
        return Response(bomb, media_type="application/json", headers={"Content-Encoding": "gzip"})

    async def raw_bomb(request: Request) -> Response:
        return Response(bomb, media_type="application/json", headers={"Content-Encoding": "gzip"})

    app = Starlette(
        routes=[
            Route("/Async/{client}/Import/{token}/Status", status),
            Route("/bomb", raw_bomb),
        ]
    )
    server = ServerThread(app).start()
    print(server.url, flush=True)
    while True:
        time.sleep(3600)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", "--parallel", type=int, default=8)
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--scenario", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        _serve_bomb()
        return
    if args.scenario:
        print(json.dumps(asyncio.run(_scenario(args.url, args.parallel, args.scenario))))
        return

    machine = print_machine()
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.gzip_bomb", "--serve"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        results = []
        for mode in ("capped", "httpx-decoding"):
            out = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "bench.gzip_bomb",
                    "--scenario",
                    mode,
                    "--url",
                    url,
                    "-k",
                    str(args.parallel),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    finally:
        server.kill()
        server.wait()
    headers = ["mode", "K", "idle RSS MiB", "peak RSS MiB", "growth MiB", "refused", "s"]
    rows = [
        [
            r["mode"],
            r["parallel"],
            r["idle_rss_mib"],
            r["peak_rss_mib"],
            r["growth_mib"],
            f"{r['refused']}/{r['parallel']}",
            r["seconds"],
        ]
        for r in results
    ]
    print(f"{args.parallel} parallel lookups, each answered with 1 GiB of zeros as gzip (~1 MiB)")
    print(table(headers, rows))
    write_json(args.json, {"machine": machine, "results": results})


if __name__ == "__main__":
    main()
