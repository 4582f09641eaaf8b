"""Running SGLang frontend programs (`@sgl.function`) from a long-lived process without a threading deadlock.

SGLang's frontend gives every program state (and every `fork`) a worker thread, and its executor's `__del__`
joins that thread. An executor is part of a reference cycle, so the cyclic garbage collector frees it whenever an
allocation triggers a collection, including inside `threading` while it starts the next worker thread with
its shutdown-locks lock held; the `__del__` then waits on that same lock and the process hangs (seen in the test
suite: `Thread.start` waiting forever in `StreamExecutor.__init__`). `programs_collected_safely` pauses the cyclic
collector while programs run and collects once they are done, on the calling thread, outside `threading`.
"""

from __future__ import annotations

import contextlib
import gc
from typing import Iterator


@contextlib.contextmanager
def programs_collected_safely() -> Iterator[None]:
    """Pause cyclic garbage collection for the block (programs and their threads run in it), then collect.

    Restores the collector's previous state; nests (an inner block leaves collection to the outermost one).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.collect()
            gc.enable()
