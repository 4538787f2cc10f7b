"""The taskiq peer of `bench schedule` runs end to end (a smoke test: no figures are judged).

taskiq is the optional ``[peers]`` extra, which CI does not install: without
it, this test skips.
"""

import argparse

import pytest

from lessor.benchmarks import schedule

pytest.importorskip("taskiq_redis", reason="taskiq is the optional [peers] extra: pip install -e '.[peers]'")


def test_a_taskiq_round_runs_every_job_and_reports_its_cost(flushed):
    args = argparse.Namespace(actions=40, pipeline=16, concurrency=8)
    out = schedule.taskiq_round(flushed, args, round_no=0)
    assert out["queue"] == "taskiq" and out["actions"] == 40 and out["actions_per_s"] > 0
    assert out["server_cpu_us_per_action"] is not None
