"""``python -m bench.profile_worker OUT.prof``: ``acetrack worker`` under cProfile, timed in CPU seconds.

cProfile's default timer is the wall clock, which on a busy machine charges a process for the time it
waits to be scheduled; this one uses ``time.process_time``, so the figures are the worker's own CPU.
"""

from __future__ import annotations

import cProfile
import sys
import time

from worker.cli import main


def run() -> None:
    out = sys.argv[1]
    profile = cProfile.Profile(time.process_time)
    try:
        profile.runcall(main, ["worker"])
    except SystemExit:
        pass
    finally:
        profile.dump_stats(out)


if __name__ == "__main__":
    run()
