#!/usr/bin/env python3
"""Side-by-side: weir's thumbnails job, run through the engine, against the peer
implementations in ../shared/peers, on the same photos, alternating, several rounds.

    python3 benches/compare.py [--photos DIR] [--rounds 3] [--workers 2] [--weir PATH]
                               [--arrival running] [--copies 30]

Per contender and round: wall time from process start until the last output is
written (for weir: until every event is acknowledged in the ledger), and the peak
RSS summed over the whole process tree (polled every 20 ms). `--arrival running`
starts weir on an empty inbox and copies the photos in once it answers
`/v1/health` (the README's flow; timed from the first copy); the default puts them
there first. `--copies N` feeds everyone each photo N times (a burst). Prints a markdown table
with the median images/s, the ratio of weir to each peer, and peak memory.

Peers are skipped (with a note) when their runtime is missing; see
../shared/peers/README.md for installing them (Pillow/pyvips in /tmp/peers-venv,
sharp under $PEERS_NODE_PREFIX).
"""
import argparse, os, shutil, signal, statistics, subprocess, sys, tempfile, time
from pathlib import Path

from measure import ledger_done, watch

ROOT = Path(__file__).resolve().parent.parent
PEERS = ROOT.parent / "shared" / "peers"

PIPELINE = """
name = "compare"
[trigger]
kind = "object_store"
url = "file://{bucket}"
prefix = "inbox/"
include = ["*.jpg", "*.jpeg", "*.png"]
settle = "0s"
[limits]
concurrency = {workers}
[[step]]
name = "variants"
function = "image.resize_and_watermark"
sizes = [{{ name = "1600", long_edge = 1600 }}, {{ name = "800", long_edge = 800 }}, {{ name = "200", long_edge = 200 }}]
watermark = {{ text = "MyStore", opacity = 0.5, position = "bottom-right" }}
quality = 80
[[step]]
name = "store"
after = "variants"
function = "object.put"
key = "processed/{{stem}}_{{variant}}.jpg"
"""




def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(port, proc):
    import urllib.request
    for _ in range(1000):
        if proc.poll() is not None:
            return
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/health", timeout=1).read()
            return
        except OSError:
            time.sleep(0.01)


def run_weir(weir, photos, workers, keep_outputs=None, running=False):
    with tempfile.TemporaryDirectory(prefix="weir-compare-") as tmp:
        tmp = Path(tmp)
        inbox = tmp / "bucket" / "inbox"
        inbox.mkdir(parents=True)
        if not running:
            for p in photos:
                shutil.copy(p, inbox / p.name)
        pipeline = tmp / "compare.toml"
        pipeline.write_text(PIPELINE.format(bucket=tmp / "bucket", workers=workers))
        ledger = tmp / "state" / "ledger.db"

        def done():
            return ledger_done(ledger) >= len(photos)

        env = dict(os.environ, WEIR_LOG="warn")
        port = free_port()
        proc = subprocess.Popen([weir, "run", str(pipeline), "--state-dir", str(tmp / "state"),
                                 "--listen", f"127.0.0.1:{port}"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if running:
            wait_healthy(port, proc)
            watched = {}
            import threading
            watcher = threading.Thread(target=lambda: watched.update(r=watch(proc, done)))
            watcher.start()
            for p in photos:
                shutil.copy(p, inbox / p.name)
            watcher.join()
            seconds, peak = watched["r"]
        else:
            seconds, peak = watch(proc, done)
        ok = done()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        outputs = len(list((tmp / "bucket" / "processed").glob("*.jpg")))
        if not ok or outputs != 3 * len(photos):
            sys.exit(f"weir did not finish: {outputs} outputs\n{err.decode(errors='replace')[-2000:]}")
        if keep_outputs is not None and not any(keep_outputs.iterdir()):
            for f in (tmp / "bucket" / "processed").glob("*.jpg"):
                shutil.copy(f, keep_outputs / f.name)
        return seconds, peak


def image_sizes(python, photos):
    """(width, height) of each photo, read with the peers' Pillow."""
    import json
    script = "import sys, json\nfrom PIL import Image\nprint(json.dumps([Image.open(p).size for p in sys.argv[1:]]))"
    return json.loads(subprocess.check_output([python, "-c", script, *map(str, photos)]))


def timed(cmd, **kw):
    start = time.monotonic()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
    return time.monotonic() - start


def run_floor(photos, workers, outputs_dir, python):
    """The decode+encode floor as ../shared/peers/RESULTS.md defines it: libjpeg-turbo's
    djpeg at the DCT scale the 1600 px variant allows, PNG decode (Pillow), and cjpeg q80
    of the 99 output-size images; no resize, no watermark. One process per file."""
    sizes = image_sizes(python, photos)
    with tempfile.TemporaryDirectory(prefix="floor-") as tmp:
        tmp = Path(tmp)
        decode_list, ppms = [], []
        for p, size in zip(photos, sizes):
            if p.suffix.lower() in (".jpg", ".jpeg"):
                long_edge, scale = max(size), "1/1"
                for d in (8, 4, 2):
                    if long_edge / d >= 1600:
                        scale = f"1/{d}"
                        break
                decode_list.append(f"-scale {scale} -outfile /dev/null {p}")
        for out in sorted(outputs_dir.glob("*.jpg")):
            ppm = tmp / (out.stem + ".ppm")
            subprocess.run(["djpeg", "-outfile", str(ppm), str(out)], check=True)
            ppms.append(str(ppm))
        (tmp / "decode.txt").write_text("\n".join(decode_list) + "\n")
        (tmp / "encode.txt").write_text("\n".join(ppms) + "\n")
        pngs = [str(p) for p in photos if p.suffix.lower() == ".png"]
        w = str(workers)
        t = timed(["bash", "-c", f"xargs -P {w} -L 1 djpeg < {tmp}/decode.txt"])
        if pngs:
            t += timed([python, "-c", "import sys\nfrom multiprocessing import Pool\nfrom PIL import Image\n"
                        "def f(p): Image.open(p).load()\n"
                        f"Pool({w}).map(f, sys.argv[1:])", *pngs])
        t += timed(["bash", "-c", f"xargs -P {w} -I{{}} cjpeg -quality 80 -outfile /dev/null {{}} < {tmp}/encode.txt"])
        return t, 0


def run_peer(cmd, photos_dir, count, env=None):
    with tempfile.TemporaryDirectory(prefix="peer-compare-") as out:
        proc = subprocess.Popen(cmd(photos_dir, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        seconds, peak = watch(proc, lambda: False)
        stdout, stderr = proc.communicate()
        outputs = len(list(Path(out).glob("*.jpg")))
        if proc.returncode != 0 or outputs != 3 * count:
            print(f"  peer failed ({outputs} outputs): {stderr.decode(errors='replace')[-500:]}", file=sys.stderr)
            return None
        return seconds, peak


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", default=str(ROOT.parent / "shared" / "corpus" / "photos"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--weir", default=str(ROOT / "target" / "release" / "weir"))
    ap.add_argument("--python", default="/tmp/peers-venv/bin/python")
    ap.add_argument("--arrival", choices=["prefilled", "running"], default="prefilled",
                    help="weir: photos in the inbox before it starts, or copied into the running inbox")
    ap.add_argument("--copies", type=int, default=1, help="each photo this many times (a burst)")
    args = ap.parse_args()

    photos_dir = Path(args.photos)
    photos = sorted(p for p in photos_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not photos:
        sys.exit(f"no photos in {photos_dir}")
    burst_dir = None
    if args.copies > 1:
        # Copies under new names: every contender reads N × the photos.
        burst_dir = Path(tempfile.mkdtemp(prefix="weir-burst-"))
        for n in range(args.copies):
            for p in photos:
                shutil.copy(p, burst_dir / f"{p.stem}-{n:03}{p.suffix}")
        photos_dir = burst_dir
        photos = sorted(burst_dir.iterdir())
    if not Path(args.weir).exists():
        sys.exit(f"{args.weir} missing: cargo build --release first")
    megapixels = None
    if Path(args.python).exists():
        megapixels = sum(w * h for w, h in image_sizes(args.python, photos)) / 1e6

    w = str(args.workers)
    node_env = dict(os.environ, PEERS_NODE_PREFIX=os.environ.get("PEERS_NODE_PREFIX", "/tmp/peers-node"))
    kept = Path(tempfile.mkdtemp(prefix="weir-outputs-"))
    running = args.arrival == "running"
    contenders = {"weir": lambda: run_weir(args.weir, photos, args.workers, kept, running)}
    have_python = Path(args.python).exists()
    if have_python and (PEERS / "pillow_peer.py").exists():
        contenders["pillow"] = lambda: run_peer(lambda i, o: [args.python, str(PEERS / "pillow_peer.py"), str(i), o, w], photos_dir, len(photos))
        contenders["pillow --draft"] = lambda: run_peer(lambda i, o: [args.python, str(PEERS / "pillow_peer.py"), str(i), o, w, "--draft"], photos_dir, len(photos))
        contenders["pyvips"] = lambda: run_peer(lambda i, o: [args.python, str(PEERS / "vips_peer.py"), str(i), o, w], photos_dir, len(photos))
    if shutil.which("node") and Path(node_env["PEERS_NODE_PREFIX"], "node_modules", "sharp").exists():
        contenders["sharp"] = lambda: run_peer(lambda i, o: ["node", str(PEERS / "sharp_peer.mjs"), str(i), o, w], photos_dir, len(photos), node_env)
    if have_python and shutil.which("djpeg") and shutil.which("cjpeg"):
        contenders["floor (decode+encode only)"] = lambda: run_floor(photos, args.workers, kept, args.python)
    missing = {"pillow", "pillow --draft", "pyvips", "sharp", "floor (decode+encode only)"} - contenders.keys()
    if missing:
        print(f"skipping (runtime not installed): {', '.join(sorted(missing))}", file=sys.stderr)

    results = {name: [] for name in contenders}
    for r in range(args.rounds):
        # weir first in round 1: the floor needs its outputs as encode inputs.
        order = list(contenders) if r % 2 == 0 else ["weir"] + [c for c in reversed(contenders) if c != "weir"]
        for name in order:
            res = contenders[name]()
            if res:
                results[name].append(res)
                print(f"round {r + 1}: {name:<15} {len(photos) / res[0]:6.2f} img/s  peak {res[1]:6.0f} MiB", file=sys.stderr)

    def median_rate(name):
        return statistics.median(len(photos) / s for s, _ in results[name])

    weir_rate = median_rate("weir")
    print(f"\n{len(photos)} images" + (f", {megapixels:.1f} MP" if megapixels else "") + f", {args.workers} workers, {args.rounds} rounds (median)\n")
    print("| contender | img/s median (min-max) | MP/s | weir ÷ this | peak RSS MiB (max) |")
    print("|---|---|---|---|---|")
    for name, runs in results.items():
        if not runs:
            continue
        rates = [len(photos) / s for s, _ in runs]
        rate = statistics.median(rates)
        mps = f"{megapixels * rate / len(photos):.1f}" if megapixels else "-"
        ratio = "1.00" if name == "weir" else f"{weir_rate / rate:.2f}"
        peak = max(p for _, p in runs)
        print(f"| {name} | {rate:.2f} ({min(rates):.2f}-{max(rates):.2f}) | {mps} | {ratio} | {peak:.0f} |" if peak else
              f"| {name} | {rate:.2f} ({min(rates):.2f}-{max(rates):.2f}) | {mps} | {ratio} | - |")
    shutil.rmtree(kept, ignore_errors=True)
    if burst_dir:
        shutil.rmtree(burst_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
