#!/usr/bin/env python3
"""kill -9 harness: does a SIGKILL at any moment lose or corrupt anything?

The shipped pipelines/thumbnails.toml on a local bucket, as a user runs it. A clean
run makes the reference outputs. Then each trial, in a fresh directory: start
`weir run`, copy the photos into the running inbox, SIGKILL weir at a random moment
of the burst, start it again, wait for it to settle, stop it with SIGTERM, and
compare with the clean run:

  lost        outputs of the clean run that are missing
  mismatched  outputs whose bytes differ from the clean run's
  extra       files under the output prefixes the clean run does not have
  dead        dead letters written (none are expected: every photo is good)
  redone      photos whose run was cut by the kill and ran again (at-least-once,
              by design; outputs are overwritten under the same keys)

Usage: benches/kill9.py --photos DIR [--trials 20] [--weir target/debug/weir]
(the photos are any JPEGs, e.g. ../shared/corpus/photos; they are not in the repo).
"""

import argparse
import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = ROOT / "pipelines" / "thumbnails.toml"
OUTPUT_DIRS = ("thumb", "medium", "large")


def outputs(work):
    """Relative path -> sha256 of every output under data/processed."""
    found = {}
    base = work / "data" / "processed"
    for path in base.rglob("*") if base.exists() else []:
        if path.is_file():
            found[str(path.relative_to(base))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def dead_letters(work):
    base = work / "data" / "dead-letter"
    return sum(1 for p in base.rglob("*.json")) if base.exists() else 0


def start(weir, work):
    log = open(work / "weir.log", "ab")
    return subprocess.Popen([weir, "run", "--grace", "60s", str(PIPELINE)], cwd=work,
                            stdout=subprocess.DEVNULL, stderr=log)


def copy_in(photos, work, pause=0.0):
    inbox = work / "data" / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    for photo in photos:
        # As a careful uploader does: a hidden temp name, then a rename into place.
        tmp = inbox / f".{photo.name}.part"
        shutil.copyfile(photo, tmp)
        os.rename(tmp, inbox / photo.name)
        if pause:
            time.sleep(pause)


def settle(work, expected, limit=300):
    """Waits until the outputs number `expected` and stop changing; returns them and
    when the count was first reached."""
    deadline = time.time() + limit
    last, stable_since, reached = None, time.time(), None
    while time.time() < deadline:
        now = outputs(work)
        if reached is None and len(now) >= expected:
            reached = time.time()
        if now != last:
            last, stable_since = now, time.time()
        elif len(now) >= expected and time.time() - stable_since > 1.0:
            return now, reached
        time.sleep(0.05)
    return last or {}, reached


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=120)


def runs(weir, work):
    """Per source: how many runs ended done, and how many were cut by the kill."""
    out = subprocess.run([weir, "runs", "--limit", "100000"], cwd=work, capture_output=True, text=True).stdout
    done, cut = {}, {}
    for line in out.splitlines()[1:]:
        words = line.split()
        source = next((w for w in words if w.startswith("inbox/")), None)
        if source is None:
            continue
        if " done " in line:
            done[source] = done.get(source, 0) + 1
        elif " crashed" in line or " running " in line:
            cut[source] = cut.get(source, 0) + 1
    return done, cut


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", required=True, type=Path)
    parser.add_argument("--trials", type=int, default=20)
    default_weir = ROOT / "target" / "release" / "weir"
    if not default_weir.exists():
        default_weir = ROOT / "target" / "debug" / "weir"
    parser.add_argument("--weir", type=Path, default=default_weir)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    photos = sorted(p for p in args.photos.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    if not photos:
        sys.exit(f"no JPEGs in {args.photos}")
    rng = random.Random(args.seed)
    weir = str(args.weir.resolve())

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clean_dir = tmp / "clean"
        clean_dir.mkdir()
        proc = start(weir, clean_dir)
        began = time.time()
        copy_in(photos, clean_dir)
        clean, reached = settle(clean_dir, 3 * len(photos))
        burst = (reached or time.time()) - began
        stop(proc)
        print(f"clean run: {len(photos)} photos -> {len(clean)} outputs in {burst:.1f}s, "
              f"{dead_letters(clean_dir)} dead letters")
        print("| trial | killed after | outputs before restart | lost | mismatched | extra | dead | redone |")
        print("|---|---|---|---|---|---|---|---|")
        totals = dict(lost=0, mismatched=0, extra=0, dead=0, redone=0)
        for trial in range(1, args.trials + 1):
            work = tmp / f"trial-{trial}"
            work.mkdir()
            proc = start(weir, work)
            # Most of the burst, not its very end (when everything may be written).
            kill_at = rng.uniform(0.0, burst * 0.75)
            began = time.time()
            # Photos arrive over the first half of the burst, so kills land both while
            # they arrive and while they are processed.
            pause = burst / 2 / len(photos)
            deadline = began + kill_at
            for photo in photos:
                copy_in([photo], work)
                if time.time() >= deadline:
                    break
                time.sleep(pause)
            time.sleep(max(0.0, deadline - time.time()))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            before = len(outputs(work))
            copy_in([p for p in photos if not (work / "data" / "inbox" / p.name).exists()], work)
            proc = start(weir, work)
            final, _ = settle(work, len(clean))
            stop(proc)
            lost = [k for k in clean if k not in final]
            mismatched = [k for k in clean if k in final and final[k] != clean[k]]
            extra = [k for k in final if k not in clean]
            dead = dead_letters(work)
            done, cut = runs(weir, work)
            redone = sum(1 for s in cut if done.get(s, 0) >= 1)
            row = dict(lost=len(lost), mismatched=len(mismatched), extra=len(extra), dead=dead, redone=redone)
            for key, value in row.items():
                totals[key] += value
            print(f"| {trial} | {kill_at:.2f}s | {before} | "
                  f"{row['lost']} | {row['mismatched']} | {row['extra']} | {row['dead']} | {row['redone']} |")
            if lost or mismatched or extra:
                print(f"   lost={lost[:5]} mismatched={mismatched[:5]} extra={extra[:5]}")
        print(f"total over {args.trials} trials: " + ", ".join(f"{k} {v}" for k, v in totals.items()))
        return 1 if totals["lost"] or totals["mismatched"] or totals["extra"] or totals["dead"] else 0


if __name__ == "__main__":
    sys.exit(main())
