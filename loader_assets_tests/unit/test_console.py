"""The project's console logger (loader_assets/console.py) with real Dagster runs: a run whose step failed only
for its files is told in a few lines without a stack trace; any other failure keeps Dagster's full output."""

import dagster as dg

from loader_assets.console import console_logger
from loader_assets.materialization import FAILED_FILES_KEY


def _run(failure: Exception, capfd) -> tuple[bool, str]:
    @dg.asset
    def table() -> None:
        raise failure

    @dg.asset_check(asset=table)
    def check() -> dg.AssetCheckResult:
        return dg.AssetCheckResult(passed=True)

    job = dg.define_asset_job("load", selection=dg.AssetSelection.assets(table))
    definitions = dg.Definitions(assets=[table], asset_checks=[check], jobs=[job], loggers={"console": console_logger})
    result = definitions.resolve_job_def("load").execute_in_process(
        raise_on_error=False, run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}})
    return result.success, capfd.readouterr().err


def test_a_run_failed_for_its_files_is_told_without_a_trace(capfd):
    failure = dg.Failure(description="table t: 1 file(s) failed in partition(s) d: /x/bad.parquet: not parquet",
                         metadata={FAILED_FILES_KEY: dg.MetadataValue.json([{"file": "/x/bad.parquet"}])})
    success, err = _run(failure, capfd)
    assert not success
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Stack Trace" not in err and "Traceback" not in err and "Dependencies for step" not in err, err
    (step,) = [line for line in lines if "STEP_FAILURE" in line]
    assert step.endswith("table t: 1 file(s) failed in partition(s) d: /x/bad.parquet: not parquet")
    assert [line for line in lines if "RUN_FAILURE" in line] and len(lines) == 2, err


def test_any_other_failure_keeps_dagsters_trace(capfd):
    success, err = _run(ValueError("the disk is on fire"), capfd)
    assert not success
    assert "ValueError: the disk is on fire" in err and "Stack Trace" in err and "Dependencies for step" in err, err
