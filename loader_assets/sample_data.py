"""Realistic sample landing files for the configured tables (``python -m loader_assets.sample_data``).

Writes, for each table of a config whose name it knows, a few days of files with modification times spread over
the last days, so the day partitions fill: an append table as ``transactions`` rows (parquet) or ``page_views``
rows (csv with a header), an scd2 table as ``customers`` (csv): a first snapshot, then files in which about 10% of
the customers change name or email (a new version each), some change only their tier (no new version), and new
customers arrive, so the table's history builds up run after run.
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


FIRST_NAMES = ["Ana", "Ben", "Chloe", "Dev", "Eva", "Femi", "Gus", "Hana", "Ivan", "Jo", "Kai", "Lena"]
TIERS = ["free", "pro", "enterprise"]


class _Customers:
    """The evolving customer base behind the scd2 sample files."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.rows: dict[int, dict[str, object]] = {}

    def _new(self, customer_id: int) -> dict[str, object]:
        name = f"{self.rng.choice(FIRST_NAMES)} {customer_id}"
        return {"customer_id": customer_id, "name": name,
                "email": f"{name.split()[0].lower()}.{customer_id}@example.com", "tier": self.rng.choice(TIERS)}

    def next_file(self, size: int, first: bool) -> list[dict[str, object]]:
        if first:
            for customer_id in range(1, size + 1):
                self.rows[customer_id] = self._new(customer_id)
            return list(self.rows.values())
        changed = []
        for customer_id in self.rng.sample(sorted(self.rows), max(1, len(self.rows) // 10)):
            row = dict(self.rows[customer_id])
            roll = self.rng.random()
            if roll < 0.4:
                row["email"] = f"{row['name'].split()[0].lower()}.{self.rng.randint(100, 999)}@example.org"
            elif roll < 0.7:
                row["name"] = f"{self.rng.choice(FIRST_NAMES)} {customer_id}"
            else:
                row["tier"] = self.rng.choice(TIERS)  # not a tracking column: no new version
            self.rows[customer_id] = row
            changed.append(row)
        start = max(self.rows) + 1
        for customer_id in range(start, start + max(1, size // 50)):
            self.rows[customer_id] = self._new(customer_id)
            changed.append(self.rows[customer_id])
        return changed


def _write_customers(path: Path, rows: list[dict[str, object]], updated_at: datetime) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["customer_id", "name", "email", "tier", "updated_at"])
        for row in rows:
            writer.writerow([row["customer_id"], row["name"], row["email"], row["tier"], updated_at.isoformat()])


def generate(table: TableSettings, days: int, files_per_day: int, rows_per_file: int, seed: int,
             force: bool = False) -> list[Path]:
    """Write the sample files of one table; returns the paths written."""
    rng = random.Random(f"{seed}:{table.table_name}")
    root = Path(table.source_path)
    root.mkdir(parents=True, exist_ok=True)
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    written = []
    customers = _Customers(rng) if table.is_scd2 else None
    for back in range(days, 0, -1):
        day = today - timedelta(days=back)
        for file_no in range(files_per_day):
            landed = day + timedelta(hours=1 + file_no)
            if customers is not None:  # the content depends on every earlier file: generate even if it exists
                path = root / f"{table.table_name}_{day:%Y%m%d}_{file_no:02d}.csv"
                rows = customers.next_file(rows_per_file // 5, first=(back == days and file_no == 0))
                if not path.exists() or force:
                    _write_customers(path, rows, landed)
                    os.utime(path, (landed.timestamp(), landed.timestamp()))
                    written.append(path)
                continue
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
            os.utime(path, (landed.timestamp(), landed.timestamp()))
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
