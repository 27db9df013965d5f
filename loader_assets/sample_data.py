"""Realistic sample landing files for the configured tables (``python -m loader_assets.sample_data``).

Writes, for each table of a config whose name it knows, a few days of files with modification times spread over
the last days, so the day partitions fill: ``transactions`` as parquet, ``page_views`` as csv with a header.
Deterministic for a given seed. Existing files are left alone unless ``--force``.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from loader_assets.settings import FileFormat, TableSettings, load_settings

COUNTRIES = ["DE", "FR", "GB", "NL", "US", "BR", "IN", "JP"]
PAGES = ["/", "/pricing", "/docs", "/docs/quickstart", "/blog", "/signup", "/login", "/checkout"]


def _transactions(rng: random.Random, day: datetime, file_no: int, rows: int) -> pa.Table:
    base = int(day.timestamp())
    ids = [f"tx-{day:%Y%m%d}-{file_no:02d}-{i:06d}" for i in range(rows)]
    return pa.table(
        {
            "transaction_id": ids,
            "customer_id": [rng.randint(1, 5000) for _ in range(rows)],
            "amount": [round(rng.lognormvariate(3.0, 1.0), 2) for _ in range(rows)],
            "currency": [rng.choice(["EUR", "USD", "GBP"]) for _ in range(rows)],
            "country": [rng.choice(COUNTRIES) for _ in range(rows)],
            "event_time": pa.array(
                [datetime.fromtimestamp(base + rng.randint(0, 86399), UTC) for _ in range(rows)],
                pa.timestamp("us", tz="UTC"),
            ),
        }
    )


def _write_page_views(path: Path, rng: random.Random, day: datetime, rows: int) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["view_id", "session_id", "page", "referrer", "duration_ms", "viewed_at"])
        for i in range(rows):
            moment = day + timedelta(seconds=rng.randint(0, 86399))
            writer.writerow([
                f"pv-{day:%Y%m%d}-{i:06d}-{rng.randint(0, 9999):04d}", f"s-{rng.randint(1, 20000)}",
                rng.choice(PAGES), rng.choice(["", "google", "newsletter", "twitter, ads"]),
                rng.randint(50, 120000), moment.isoformat(),
            ])


def generate(table: TableSettings, days: int, files_per_day: int, rows_per_file: int, seed: int,
             force: bool = False) -> list[Path]:
    """Write the sample files of one table; returns the paths written."""
    rng = random.Random(f"{seed}:{table.table_name}")
    root = Path(table.source_path)
    root.mkdir(parents=True, exist_ok=True)
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    written = []
    for back in range(days, 0, -1):
        day = today - timedelta(days=back)
        for file_no in range(files_per_day):
            if table.file_format is FileFormat.PARQUET:
                path = root / f"{day:%Y-%m-%d}" / f"{table.table_name}_{day:%Y%m%d}_{file_no:02d}.parquet"
            else:
                path = root / f"{table.table_name}_{day:%Y%m%d}_{file_no:02d}.{table.file_format.value}"
            if path.exists() and not force:
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            if table.file_format is FileFormat.PARQUET:
                pq.write_table(_transactions(rng, day, file_no, rows_per_file), path)
            elif table.file_format is FileFormat.CSV:
                _write_page_views(path, rng, day, rows_per_file)
            else:
                continue
            landed = (day + timedelta(hours=1 + file_no)).timestamp()
            os.utime(path, (landed, landed))
            written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description="Write sample landing files for the tables of a config.")
    parser.add_argument("--config", default="configs/local.yaml")
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--files-per-day", type=int, default=4)
    parser.add_argument("--rows-per-file", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--force", action="store_true", help="rewrite files that exist")
    args = parser.parse_args()
    settings = load_settings(args.config)
    started = time.monotonic()
    total = 0
    for table in settings.tables:
        paths = generate(table, args.days, args.files_per_day, args.rows_per_file, args.seed, args.force)
        total += len(paths)
        print(f"{table.table_name}: {len(paths)} new sample files in {table.source_path}")
    print(f"wrote {total} files in {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
