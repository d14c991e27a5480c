"""Sharding the suite by work: the tuned runs spread over the processes, every run once."""

import pytest

from vchain.errors import ConfigurationError
from vchain.suite import plan_runs, run_cost, shard
from vchain.variants import VARIANTS


def test_the_tuned_runs_spread_over_all_processes_and_every_run_is_taken_once(tmp_path):
    runs = plan_runs(tmp_path, range(20), list(VARIANTS))
    shares = shard(runs, 5)
    # Striding over cases x variants (runs[i::5]) would give process 4 all twenty vchain runs.
    assert [sum(r.variant == "vchain" for r in share) for share in shares] == [4, 4, 4, 4, 4]
    assert sorted(r.id for share in shares for r in share) == sorted(r.id for r in runs)
    loads = [sum(run_cost(r.variant) for r in share) for share in shares]
    assert max(loads) - min(loads) <= max(run_cost(v) for v in VARIANTS)
    assert all(share == sorted(share, key=runs.index) for share in shares)  # plan order within a process


def test_two_processes_and_two_variants_each_get_half_the_tuning(tmp_path):
    runs = plan_runs(tmp_path, [4, 13], ["vchain", "t2v"])
    assert [[(r.case, r.variant) for r in share] for share in shard(runs, 2)] == [
        [(4, "vchain"), (4, "t2v")],
        [(13, "vchain"), (13, "t2v")],
    ]
    assert run_cost("vchain") > run_cost("no-visual-thought") > run_cost("t2v") > run_cost("no-sparse-tuning")


def test_sharding_is_the_same_in_every_process_and_covers_more_processes_than_runs(tmp_path):
    runs = plan_runs(tmp_path, [0, 1], ["vchain"])
    assert shard(runs, 3) == shard(runs, 3) == [[runs[0]], [runs[1]], []]
    with pytest.raises(ConfigurationError, match="num_processes must be a positive number, got 0"):
        shard(runs, 0)
