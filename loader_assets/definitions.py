"""Dagster entry point: settings -> Definitions, in one factory call and nothing else.

``dagster dev`` (via workspace.yaml) loads ``defs``; the config file is ``$LOADER_ASSETS_CONFIG``, by default
``configs/local.yaml`` in the working directory. Bad config fails here, with the message naming the field.
"""

from __future__ import annotations

import os

import dagster as dg

from loader_assets.assets import TABLE_TAG, build_table_asset, retry_tags
from loader_assets.checks import build_table_checks
from loader_assets.console import console_logger
from loader_assets.io_managers.table import DeltaAppendIOManager, DeltaScd2IOManager
from loader_assets.resources.lock import DeltaLockResource
from loader_assets.resources.spark import SparkSessionResource
from loader_assets.resources.tracker import DeltaTrackerResource
from loader_assets.sensors import build_table_sensor
from loader_assets.settings import LoaderSettings, load_settings

CONFIG_ENV = "LOADER_ASSETS_CONFIG"
DEFAULT_CONFIG = "configs/local.yaml"


def load_job_name(table_name: str) -> str:
    return f"{table_name}_load_job"


def checks_job_name(table_name: str) -> str:
    return f"{table_name}_checks_job"


def build_resources(settings: LoaderSettings) -> dict[str, object]:
    spark = SparkSessionResource.from_settings(settings)
    tracker = DeltaTrackerResource.from_settings(settings)
    lock = DeltaLockResource.from_settings(settings)
    return {
        "tracker": tracker,
        "lock": lock,
        "spark": spark,
        "append_io_manager": DeltaAppendIOManager(tracker=tracker, lock=lock, spark=spark),
        "scd2_io_manager": DeltaScd2IOManager(tracker=tracker, lock=lock, spark=spark),
    }


def build_definitions(settings: LoaderSettings, load_checks: bool = True) -> dg.Definitions:
    """Every table's asset, checks, load job, checks-only job and sensor, plus the shared resources. With
    ``load_checks`` false the load jobs leave the checks out (``loader-assets run --skip-checks``)."""
    assets, checks, jobs, sensors = [], [], [], []
    for table in settings.tables:
        asset = build_table_asset(table, settings)
        table_checks = build_table_checks(table, settings)
        assets.append(asset)
        checks.extend(table_checks)
        jobs.append(
            dg.define_asset_job(
                load_job_name(table.table_name),
                selection=(dg.AssetSelection.assets(asset.key) if load_checks
                           else dg.AssetSelection.assets(asset.key).without_checks()),
                # one run per table at a time (dagster.yaml's tag limit); a run that died is retried by the daemon
                # retry_attempts times (run_retries must be enabled in dagster.yaml, as it is here)
                tags={TABLE_TAG: table.table_name, **retry_tags(settings.retry_attempts)},
                description=f"Load new files of {table.table_name}"
                            + (" and run its checks." if load_checks else " (its checks are left out)."),
            )
        )
        jobs.append(
            dg.define_asset_job(
                checks_job_name(table.table_name),
                selection=dg.AssetSelection.checks(*table_checks),
                description=f"Run the consistency checks of {table.table_name} without loading anything.",
            )
        )
        sensors.append(build_table_sensor(table, settings, load_job_name(table.table_name)))
    return dg.Definitions(
        assets=assets,
        asset_checks=checks,
        jobs=jobs,
        sensors=sensors,
        resources=build_resources(settings),
        executor=dg.in_process_executor,
        loggers={"console": console_logger},
    )


def config_path_from_env() -> str:
    return os.environ.get(CONFIG_ENV, DEFAULT_CONFIG)


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions(load_settings(config_path_from_env()))
