"""The sweep curves' mean and band over seeds: a seed stopped early holds its last value, so the
mean does not jump when it stops; a run still going counts only where it has values."""

import pytest

from tinyinduct.sweep_plots import seed_band


def test_a_finished_seed_holds_its_last_value_after_it_stops():
    early = {100: 0.2, 200: 0.9}  # formed, stopped early: finished
    late = {100: 0.1, 200: 0.3, 300: 0.5, 400: 0.8}
    xs, mean, low, high = seed_band([early, late], [True, False])
    assert xs == [100, 200, 300, 400]
    assert mean == pytest.approx([0.15, 0.6, 0.7, 0.85])  # (0.9 + 0.5) / 2 ...: no jump
    assert low == [0.1, 0.3, 0.5, 0.8] and high == [0.2, 0.9, 0.9, 0.9]


def test_a_run_still_going_or_failed_counts_only_where_it_has_values():
    going = {100: 0.2, 200: 0.4}
    other = {100: 0.0, 200: 0.2, 300: 0.6}
    for finished in (None, [False, False]):
        xs, mean, low, high = seed_band([going, other], finished)
        assert xs == [100, 200, 300] and mean == pytest.approx([0.1, 0.3, 0.6])
        assert low[-1] == high[-1] == 0.6
