#!/usr/bin/env python3
"""The live local-bucket trigger (inotify) with a `flow.discard` step: how quickly an
idle `weir run` picks up one new file, and how fast it gets through a burst.

    python3 benches/local_burst.py [--weir target/release/weir] [--files 10000] [--singles 200]

1. Idle pick-up: `--singles` times, one file is moved into the watched inbox and the
   time until the ledger records it done is taken (pick-up, ledger write, the step,
   the ledger again: an upper bound on the pick-up itself); p50/p99/max.
2. Burst: `--files` files of 100 bytes, written beforehand next to the inbox, are
   renamed into it as fast as Python can; the time from the first rename until the
   ledger holds all of them, files/s, and how long after the last rename that was.
Peak RSS of the weir process is reported for the whole run.
"""
import argparse, os, signal, subprocess, sys, tempfile, threading, time
from pathlib import Path

from compare import free_port, wait_healthy
from measure import ledger_done, tree_rss_kb

ROOT = Path(__file__).resolve().parent.parent

PIPELINE = """
name = "burst"
[trigger]
kind = "object_store"
url = "file://{bucket}"
prefix = "inbox/"
settle = "0s"
[limits]
concurrency = 32
[[step]]
name = "nothing"
function = "flow.discard"
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weir", default=str(ROOT / "target" / "release" / "weir"))
    ap.add_argument("--files", type=int, default=10000)
    ap.add_argument("--singles", type=int, default=200)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="weir-burst-") as tmp:
        tmp = Path(tmp)
        inbox, staging = tmp / "bucket" / "inbox", tmp / "staging"
        inbox.mkdir(parents=True)
        staging.mkdir()
        (tmp / "burst.toml").write_text(PIPELINE.format(bucket=tmp / "bucket"))
        ledger = tmp / "state" / "ledger.db"
        port = free_port()
        proc = subprocess.Popen([args.weir, "run", str(tmp / "burst.toml"), "--state-dir", str(tmp / "state"),
                                 "--listen", f"127.0.0.1:{port}"], env=dict(os.environ, WEIR_LOG="warn"),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        peak = [0]
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], tree_rss_kb(proc.pid))
                time.sleep(0.02)

        threading.Thread(target=sample, daemon=True).start()
        try:
            wait_healthy(port, proc)
            latencies = []
            for i in range(args.singles):
                src = staging / f"single-{i:05}.bin"
                src.write_bytes(b"x" * 100)
                time.sleep(0.02)  # idle between files
                started = time.monotonic()
                os.rename(src, inbox / src.name)
                while ledger_done(ledger) < i + 1:
                    if time.monotonic() - started > 10:
                        sys.exit(f"file {i} not picked up within 10 s")
                    time.sleep(0.0002)
                latencies.append(time.monotonic() - started)
            latencies.sort()
            at = lambda q: latencies[int((len(latencies) - 1) * q)] * 1000
            print(f"idle pick-up → done in the ledger, {len(latencies)} files: "
                  f"p50 {at(0.5):.1f} ms, p99 {at(0.99):.1f} ms, max {at(1.0):.1f} ms")

            base = ledger_done(ledger)
            for i in range(args.files):
                with open(staging / f"burst-{i:06}.bin", "wb") as f:
                    f.write(b"x" * 100)
            started = time.monotonic()
            for i in range(args.files):
                os.rename(staging / f"burst-{i:06}.bin", inbox / f"burst-{i:06}.bin")
            written = time.monotonic() - started
            while ledger_done(ledger) < base + args.files:
                if proc.poll() is not None:
                    sys.exit("weir exited: " + proc.stderr.read().decode(errors="replace")[-2000:])
                time.sleep(0.005)
            took = time.monotonic() - started
            print(f"burst of {args.files} files: moved in within {written:.2f} s, all done {took:.2f} s after the first "
                  f"({took - written:.2f} s after the last) = {args.files / took:.0f} files/s; "
                  f"peak RSS {peak[0] / 1024:.0f} MiB")
        finally:
            stop.set()
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)


if __name__ == "__main__":
    main()
