"""The benchmarks' own instruments: what they claim to measure, they do measure.

* ``server_work --variant``: each variant's text is still in the scripts (a script
  change must not turn a variant into today's library, which would weigh nothing).
* The heartbeat's spread limit: one C client process per batch, and every batch of
  the working set is really renewed by them, not one batch over and over.
"""

import pytest

from lessor.benchmarks import heartbeat, server_work
from lessor.errors import ConfigError
from lessor.leasing.backend import open_backend
from lessor.leasing.scripts import library

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("name", sorted(server_work.VARIANTS))
def test_each_server_work_variant_changes_the_library(name):
    patches = server_work.VARIANTS[name][1]
    assert library(patches=patches).code != library().code   # raises if a patch's text is gone


def test_a_variant_is_refused_without_the_phases_it_is_measured_by():
    with pytest.raises(SystemExit, match="--variant needs --phases"):
        server_work.main(["--variant", "no_xadd"])


async def test_the_spread_limit_renews_every_batch_of_the_working_set(flushed):
    try:
        heartbeat.find_c_client()
    except ConfigError as exc:
        pytest.skip(f"no C benchmark client here: {exc}")
    async with open_backend(flushed) as backend:
        leases = await heartbeat.setup_leases(backend, 120)
        function = await heartbeat.load_renew_script(backend)
        groups = heartbeat.spread_groups(leases, 10)
        assert len(groups) >= 8 and all(len(g) == 10 for g in groups)

        async def deadline(lease) -> int:
            return int(await backend.redis.hget(backend.keys(lease.partition).prefix + "a:" + lease.ref,
                                                "deadline_ms"))

        load = await heartbeat.c_client_limit(backend, flushed, function, leases, 10, 0.5, spread=True)
        seconds, micros = await backend.redis.time()
        ended_ms = seconds * 1000 + micros // 1000
        after = {lease.ref: await deadline(lease) for g in groups for lease in g}
    assert load.calls > len(groups) and load.units == load.calls * 10 and load.cpu_s > 0
    # c_client_limit renews each group once itself first (its check), about a second before it returns;
    # only the C clients, renewing until they are stopped, leave every deadline within 0.5 s of ttl from now.
    ttl = heartbeat.BENCH_LEASE.ttl_ms
    late = {ref: ended_ms + ttl - ms for ref, ms in after.items() if ms < ended_ms + ttl - 500}
    assert not late, f"leases the C clients did not renew (ms short of a fresh ttl): {late}"
