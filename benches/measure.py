"""What every bench script measures the same way: the peak RSS of a whole process
tree, polled while it runs, and how many events weir's ledger has finished."""
import os, sqlite3, time


def tree_rss_kb(pid):
    """Summed VmRSS of pid and all its descendants, in KiB."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    stack += [int(x) for x in f.read().split()]
        except OSError:
            pass
    return total


def watch(proc, done):
    """Polls every 20 ms until done() or the process exits; returns (seconds, peak MiB)."""
    start, peak = time.monotonic(), 0
    while True:
        peak = max(peak, tree_rss_kb(proc.pid))
        if done() or proc.poll() is not None:
            return time.monotonic() - start, peak / 1024
        time.sleep(0.02)


def ledger_done(ledger):
    """Objects the ledger at `ledger` has finished (0 while it is not there yet or busy)."""
    if not ledger.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=0.1) as db:
            return db.execute("select count(*) from objects where status = 'done'").fetchone()[0]
    except sqlite3.Error:
        return 0
