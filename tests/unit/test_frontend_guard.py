"""bench.frontend: frontend programs run with the cyclic garbage collector paused, and collected afterwards."""

from __future__ import annotations

import gc

from sglang_focus.bench.frontend import programs_collected_safely


class Cycle:
    freed = 0

    def __init__(self):
        self.me = self

    def __del__(self):
        Cycle.freed += 1


def test_cycles_made_inside_are_freed_on_exit_not_during():
    assert gc.isenabled()
    Cycle.freed = 0
    with programs_collected_safely():
        assert not gc.isenabled()
        for _ in range(2000):  # enough allocations to trigger collections if the collector ran
            Cycle()
        assert Cycle.freed == 0, "nothing is collected while programs run"
        with programs_collected_safely():  # nested: the outer block still owns collection
            pass
        assert not gc.isenabled()
    assert gc.isenabled() and Cycle.freed == 2000


def test_a_disabled_collector_stays_disabled():
    gc.disable()
    try:
        with programs_collected_safely():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
