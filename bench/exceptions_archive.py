"""The exceptions archive end to end over HTTP: N records paged from the simulator.

The MyPreferences simulator runs in its own process (``--delay D`` on every answer) and
serves one finished import with N generated exception records (e-mail, phone, names,
eight reasons with a skew). Each scenario runs in its own process, so its peak RSS
growth (peak RSS during the run minus RSS before it) is its own:

- ``baseline``: the floor, a bare sequential loop that GETs every page with httpx and
  decodes its JSON, nothing else: the pages per second the API's latency allows here;
- ``archive``: the real thing, ``fetch_exceptions`` (``ExceptionPager`` with its
  one-page lookahead, ``SummaryBuilder``, ``CsvArchiveWriter``), redacted, the pace
  opened wide so the API and the bot are what is measured;
- ``archive+upload (sdk)``: the same, then the file uploaded to the Slack emulator (in a
  third process) with slack-sdk's ``files_upload_v2``, which reads the whole file into
  memory: how the bot uploaded before (kept to compare, in the same run);
- ``archive+upload``: the same with the bot's ``upload_file`` (the same three steps,
  the bytes streamed from disk), as the archive posts it into a thread.

    .venv/bin/python -m bench.exceptions_archive                # N=200,000, D=0.05 s
    .venv/bin/python -m bench.exceptions_archive -n 1000000     # the issue's size
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from slack_sdk.web.async_client import AsyncWebClient

from bench.common import CLIENT_ID, SimulatorProcess, free_port, print_machine, table, write_json
from bot.archive.fetch import ArchiveOptions, fetch_exceptions
from bot.config import Secret, Settings
from bot.domain.exceptions import ExceptionsFile
from bot.mypreferences.client import MyPreferencesClient
from bot.mypreferences.pace import Pace
from bot.sandbox.mypreferences_simulator import DEFAULT_AUTHORIZATION, expected_reasons
from bot.slack.uploads import upload_file

TOKEN = 900_001
CHANNEL = "C0BENCH"


def memory_kib(field: str) -> int:
    """VmRSS (now) or VmHWM (peak so far) of this process, from /proc (Linux), in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak() -> bool:
    """Start VmHWM afresh (Linux >= 4.0), so the peak is this run's; False if refused."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


async def run_baseline(api_url: str, count: int, page_size: int) -> dict[str, Any]:
    url = f"{api_url}Async/{CLIENT_ID}/Import/{TOKEN}/Exceptions"
    headers = {"Authorization": DEFAULT_AUTHORIZATION}
    pages = records = 0
    async with httpx.AsyncClient(timeout=60) as http:
        offset = 1
        while True:
            answer = await http.get(
                url, params={"limit": page_size, "offset": offset}, headers=headers
            )
            body = answer.json()
            pages += 1
            records += len(body["Records"])
            if not body["HasMore"]:
                break
            offset += len(body["Records"])
    return {"pages": pages, "records": records, "size": 0, "top": ""}


async def run_archive(
    api_url: str, count: int, page_size: int, slack_url: str | None, sdk: bool = False
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="isb-bench-") as scratch:
        settings = Settings(
            api_url=api_url,
            client_id=CLIENT_ID,
            authorization=Secret(DEFAULT_AUTHORIZATION),
            exceptions_dir=scratch,
            exceptions_page_size=page_size,
            http_timeout_seconds=60,
        )
        options = ArchiveOptions.from_settings(settings)
        async with MyPreferencesClient(settings) as client:
            result = await fetch_exceptions(
                client, TOKEN, [ExceptionsFile.REDACTED], options, Pace(1e6)
            )
        archive = result.files[ExceptionsFile.REDACTED]
        upload_seconds = 0.0
        if slack_url is not None:
            slack = AsyncWebClient(token="xoxb-emulator-token", base_url=slack_url)
            started = time.perf_counter()
            if sdk:
                await slack.files_upload_v2(
                    channel=CHANNEL,
                    file=str(archive.path),
                    filename=archive.filename,
                    title="bench",
                    initial_comment="bench",
                )
            else:
                await upload_file(
                    slack,
                    channel=CHANNEL,
                    thread_ts=None,
                    archive=archive,
                    title="bench",
                    comment="bench",
                )
            upload_seconds = time.perf_counter() - started
            await slack.session.close() if slack.session else None
        top = result.reports[ExceptionsFile.REDACTED].top_reasons[0]
        figures = {
            "pages": result.pages,
            "records": result.records,
            "size": archive.size_bytes,
            "gzipped": archive.gzipped,
            "top": f"{top.reason} {top.count:,}",
            "upload_seconds": upload_seconds,
        }
        result.discard()
        return figures


def child(args: argparse.Namespace) -> None:
    """One scenario in this process; prints its figures as one JSON line.

    Every module is imported before the first measure (at the top of this file), so the
    growth is the run's own memory, not code being loaded.
    """
    peak_reset = reset_peak()
    rss_before = memory_kib("VmRSS")
    started = time.perf_counter()
    if args.child == "baseline":
        figures = asyncio.run(run_baseline(args.api_url, args.n, args.page_size))
    else:
        slack = args.slack_url if args.child.startswith("archive+upload") else None
        sdk = args.child == "archive+upload (sdk)"
        figures = asyncio.run(run_archive(args.api_url, args.n, args.page_size, slack, sdk))
    seconds = time.perf_counter() - started
    growth = memory_kib("VmHWM") - rss_before
    print(
        json.dumps(
            {**figures, "seconds": seconds, "rss_growth_kib": growth, "peak_reset": peak_reset}
        )
    )


def serve_emulator(port: int) -> None:
    """The Slack emulator in this process (it keeps the uploaded bytes, not the bench)."""
    import uvicorn

    from bot.sandbox.slack_emulator import SlackEmulator

    emulator = SlackEmulator()
    emulator.invite_bot(CHANNEL)  # the bot shares files only where it was invited
    emulator.set_url(f"http://127.0.0.1:{port}/")
    uvicorn.run(emulator.app, host="127.0.0.1", port=port, log_level="warning")


class EmulatorProcess:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/api/"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.exceptions_archive", "--serve-emulator", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.post(self.url + "auth.test", timeout=2)
                return
            except httpx.HTTPError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError("the emulator did not start") from None
                time.sleep(0.1)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=200_000, help="records (default 200,000)")
    parser.add_argument("--delay", type=float, default=0.05, help="API latency D per page")
    parser.add_argument("--page-size", type=int, default=1000)
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--api-url", help=argparse.SUPPRESS)
    parser.add_argument("--slack-url", help=argparse.SUPPRESS)
    parser.add_argument("--serve-emulator", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_emulator:
        serve_emulator(args.serve_emulator)
        return
    if args.child:
        child(args)
        return
    info = print_machine()
    print(f"records: {args.n:,}, page size {args.page_size:,}, API latency D = {args.delay} s")
    results: dict[str, dict[str, Any]] = {}
    with SimulatorProcess(0, args.delay) as sim:
        created = sim.http.post(
            "_sim/imports",
            json={
                "AccessToken": TOKEN,
                "Status": "Completed",
                "Exceptions": args.n,
                "exception_count": args.n,
            },
        )
        created.raise_for_status()
        emulator = EmulatorProcess()
        try:
            for scenario in ("baseline", "archive", "archive+upload (sdk)", "archive+upload"):
                cpu_before = sim.cpu_seconds()
                command = [
                    sys.executable,
                    "-m",
                    "bench.exceptions_archive",
                    "-n",
                    str(args.n),
                    "--page-size",
                    str(args.page_size),
                    "--child",
                    scenario,
                    "--api-url",
                    sim.api_url,
                    "--slack-url",
                    emulator.url,
                ]
                output = subprocess.run(
                    command, check=True, capture_output=True, text=True, env=os.environ
                ).stdout
                results[scenario] = json.loads(output.strip().splitlines()[-1])
                results[scenario]["sim_cpu"] = sim.cpu_seconds() - cpu_before
        finally:
            emulator.stop()
    bound = 1.0 / args.delay if args.delay > 0 else float("inf")
    base_rate = results["baseline"]["pages"] / results["baseline"]["seconds"]
    rows = []
    for scenario, result in results.items():
        seconds = float(result["seconds"])
        rate = result["pages"] / seconds
        rows.append(
            [
                scenario,
                result["pages"],
                f"{result['records']:,}",
                round(seconds, 1),
                round(rate, 1),
                round(result["records"] / seconds),
                round(rate / bound, 2),
                round(rate / base_rate, 2),
                round(result["rss_growth_kib"] / 1024, 1),
                round(result["size"] / 1e6, 1) if result["size"] else "",
                round(result.get("upload_seconds", 0.0), 2) or "",
                round(result["sim_cpu"], 1),
            ]
        )
    print(
        table(
            [
                "scenario",
                "pages",
                "records",
                "seconds",
                "pages/s",
                "records/s",
                "of 1/D",
                "of baseline",
                "RSS growth MiB",
                "file MB",
                "upload s",
                "sim CPU s",
            ],
            rows,
        )
    )
    top, _count = max(expected_reasons(min(args.n, 100_000)).items(), key=lambda i: i[1])
    print(
        f"1/D = {bound:.1f} pages/s (the API's latency alone); top reason found: "
        f"{results['archive']['top']} (the simulator serves {top!r} for 40% of records)"
    )
    load_after = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    print(f"load average before {info['load_before']}, after {load_after} (2 cores)")
    if not all(r.get("peak_reset", True) for r in results.values()):
        print("note: /proc/self/clear_refs was refused; growth is from the process's start")
    write_json(
        args.json,
        {"machine": info, "load_after": load_after, "args": vars(args), "results": results},
    )


if __name__ == "__main__":
    main()
