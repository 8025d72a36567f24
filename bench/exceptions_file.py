"""The exceptions archive's CPU and memory, without the network: summary + CSV file.

N realistic exception records (e-mail, phone, names, a reason out of eight with a
skewed spread, a date, a nested object) go through what an archive does with each
record: ``SummaryBuilder.add`` and ``CsvArchiveWriter.add``, then ``finish``. Each
scenario runs in its own process so its peak RSS growth (peak RSS after the run minus
RSS before it) is its own:

- ``baseline``: the floor, a hand-written loop writing the raw records straight into a
  gzipped CSV with a known header (no masking, no summary, no spool, no second pass);
- ``full``: the real code with ``EXCEPTIONS_FILE=full`` (no masking);
- ``redacted``: the real code with the default, masking.

    .venv/bin/python -m bench.exceptions_file              # N=200,000
    .venv/bin/python -m bench.exceptions_file -n 1000000   # the issue's size
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bench.common import print_machine, table, write_json
from bot.archive.csvfile import CsvArchiveWriter
from bot.domain.exceptions import ExceptionsFile, Masker, SummaryBuilder

REASONS = [
    ("Invalid email address", 40),
    ("Phone number is not valid", 25),
    ("Missing consent date", 15),
    ("Unknown purpose code", 8),
    ("Duplicate record in batch", 5),
    ("Profile locked", 4),
    ("Invalid postal code", 2),
    ("Field too long: FirstName", 1),
]
_WHEEL = [reason for reason, weight in REASONS for _ in range(weight)]


def records(count: int) -> Iterator[dict[str, object]]:
    """Exception records shaped like profiles that failed (personal data included)."""
    for i in range(count):
        yield {
            "RecordNumber": i + 1,
            "ProfileId": f"P{i:09d}",
            "EmailAddress": f"person.{i}@example.com",
            "FirstName": "Jane",
            "LastName": f"Doe{i % 977}",
            "Phone": f"+1 555 {i % 1000:03d} {i % 10000:04d}",
            "PostalCode": f"{10000 + i % 89999}",
            "ErrorMessage": _WHEEL[i % len(_WHEEL)],
            "ErrorCode": f"E{100 + i % 8}",
            "ConsentDate": "2024-01-15T10:30:00Z",
            "Purpose": "Newsletter",
            "Preferences": {"Topic": "News", "OptIn": i % 2 == 0},
        }


def run_baseline(count: int, folder: Path) -> dict[str, object]:
    path = folder / "baseline.csv.gz"
    header = list(next(records(1)))
    with gzip.open(path, "wb", compresslevel=6) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", newline="")
        writer = csv.writer(text)
        writer.writerow(header)
        for record in records(count):
            writer.writerow(
                [
                    value if isinstance(value, str) else json.dumps(value)
                    for value in record.values()
                ]
            )
        text.flush()
        text.detach()
    return {"size": path.stat().st_size, "gzipped": True, "top": ""}


def run_archive(count: int, folder: Path, mode: ExceptionsFile) -> dict[str, object]:
    masker = Masker(mode)
    summary = SummaryBuilder(masker)
    with CsvArchiveWriter(folder, 12345, masker) as writer:
        for record in records(count):
            summary.add(record)
            writer.add(record)
        archive = writer.finish()
    report = summary.report()
    top = report.top_reasons[0]
    archive.discard()
    return {
        "size": archive.size_bytes,
        "gzipped": archive.gzipped,
        "top": f"{top.reason} {top.share:.0%}",
    }


def memory_kib(field: str) -> int:
    """A memory figure of this process from /proc/self/status (Linux), in KiB.

    ``VmRSS`` is the resident memory now, ``VmHWM`` its peak so far; both come from the
    same accounting, so their difference is a fair peak growth.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(scenario: str, count: int) -> None:
    """One scenario in this process; prints its figures as one JSON line."""
    rss_before = memory_kib("VmRSS")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        if scenario == "baseline":
            result = run_baseline(count, folder)
        else:
            result = run_archive(count, folder, ExceptionsFile(scenario))
    seconds = time.perf_counter() - started
    growth_kib = memory_kib("VmHWM") - rss_before
    print(json.dumps({**result, "seconds": seconds, "rss_growth_kib": growth_kib}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=200_000, help="records (default 200,000)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.n)
        return
    info = print_machine()
    print(f"records: {args.n:,}")
    results: dict[str, dict[str, object]] = {}
    for scenario in ("baseline", "full", "redacted"):
        output = subprocess.run(
            [sys.executable, "-m", "bench.exceptions_file", "-n", str(args.n), "--child", scenario],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        results[scenario] = json.loads(output.strip().splitlines()[-1])
    base = float(results["baseline"]["seconds"])  # type: ignore[arg-type]
    rows = []
    for scenario, result in results.items():
        seconds = float(result["seconds"])  # type: ignore[arg-type]
        rows.append(
            [
                scenario,
                seconds,
                round(args.n / seconds),
                seconds / args.n * 1e6,
                seconds / base,
                int(result["rss_growth_kib"]) / 1024,  # type: ignore[call-overload]
                int(result["size"]) / 1e6,  # type: ignore[call-overload]
                "gzip" if result["gzipped"] else "plain",
                str(result["top"]),
            ]
        )
    print(
        table(
            [
                "scenario",
                "seconds",
                "records/s",
                "us/record",
                "x baseline",
                "RSS growth MiB",
                "file MB",
                "file",
                "top reason",
            ],
            rows,
        )
    )
    write_json(args.json, {"machine": info, "records": args.n, "results": results})


if __name__ == "__main__":
    main()
