"""The benchmarks' own instruments: what they claim to measure, they do measure.

* ``server_work --variant``: each variant's text is still in the scripts (a script
  change must not turn a variant into today's library, which would weigh nothing).
* The heartbeat's spread limit: one C client process per batch, and every batch of
  the working set is really renewed by them, not one batch over and over.
"""

import pytest

from lessor.benchmarks import heartbeat, server_work
from lessor.benchmarks.cclient import c_clients_load
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

        async def deadlines() -> dict:
            return {lease.ref: int(await backend.redis.hget(backend.keys(lease.partition).prefix + "a:" + lease.ref,
                                                            "deadline_ms"))
                    for g in groups for lease in g}

        # The C clients alone renew (nothing else does here): every batch's deadlines must move on,
        # which one process repeating one batch would not do. No timing is judged: any renewal counts.
        before = await deadlines()
        commands = [heartbeat.renew_command(backend, function, g) for g in groups]
        load = await c_clients_load(backend.redis, flushed, commands, 10, 1.0, **heartbeat.SPREAD_C_CLIENT)
        after = await deadlines()
        assert load.calls > len(groups) and load.units == load.calls * 10 and load.cpu_s > 0
        stuck = sorted(ref for ref in before if after[ref] <= before[ref])
        assert not stuck, f"leases no C client renewed: {stuck}"
        # And the benchmark's own call of it: the whole working set, a call's leases counted as units.
        limit = await heartbeat.c_client_limit(backend, flushed, function, leases, 10, 0.5, spread=True)
        assert limit.calls > 0 and limit.units == limit.calls * 10
