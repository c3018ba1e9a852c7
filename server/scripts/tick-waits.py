#!/usr/bin/env python3
"""What ran on the tick's CPU while the tick waited for it.

Reads the scheduler events of a `perf sched record` on stdin and, for each
run of the tick thread from its wake-up to its next sleep (one tick),
adds up the time every other task ran on that CPU in between. Prints the
totals per task, per tick, and the ticks that waited longest.

    perf sched record -k CLOCK_MONOTONIC -C 0 -o sched.data -- sleep 8
    perf script -i sched.data -F time,event,trace \\
        | server/scripts/tick-waits.py <tick thread id>

Record while `capacity.sh` runs (the server is pinned to core 0, so `-C 0`);
the tick thread's id is the server's process id (the main thread ticks).
"""

import collections
import re
import signal
import sys

SWITCH = re.compile(
    r"\s*([\d.]+):\s+sched:sched_switch: prev_comm=(.*?) prev_pid=(\d+) "
    r"prev_prio=\d+ prev_state=(\S+) ==> next_comm=(.*?) next_pid=(\d+)"
)
WAKING = re.compile(r"\s*([\d.]+):\s+sched:sched_waking: comm=.*? pid=(\d+)")


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    # Piped into head: stop quietly.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    tick = sys.argv[1]
    running, since = None, None  # the task on the CPU, and since when
    woke = None  # when the tick thread woke, while its tick is open
    waited = collections.Counter()  # this tick: seconds each task ran
    totals = collections.Counter()
    ticks = []  # (woke, wall seconds, {task: seconds})
    for line in sys.stdin:
        switch = SWITCH.match(line)
        if switch:
            at = float(switch.group(1))
            if woke is not None and running is not None and running[1] != tick:
                waited[running[0]] += at - max(since, woke)
            prev, state = switch.group(3), switch.group(4)
            if prev == tick and state.startswith("S") and woke is not None:
                ticks.append((woke, at - woke, dict(waited)))
                totals.update(waited)
                waited.clear()
                woke = None
            running, since = (switch.group(5), switch.group(6)), at
            continue
        waking = WAKING.match(line)
        if waking and waking.group(2) == tick and woke is None:
            woke = float(waking.group(1))
    if not ticks:
        sys.exit(f"no tick of thread {tick} in the input")
    print(f"{len(ticks)} ticks; time other tasks ran while the tick waited:")
    for task, seconds in totals.most_common(10):
        print(f"  {task:20} {seconds * 1e3:9.1f} ms, {seconds * 1e3 / len(ticks):6.3f} ms a tick")
    print("longest ticks (wall ms: who ran meanwhile, ms):")
    for woke, wall, tasks in sorted(ticks, key=lambda t: -t[1])[:10]:
        others = ", ".join(
            f"{task} {seconds * 1e3:.2f}"
            for task, seconds in sorted(tasks.items(), key=lambda t: -t[1])
        )
        print(f"  {woke:.4f}: {wall * 1e3:5.1f}: {others or '-'}")


if __name__ == "__main__":
    main()
