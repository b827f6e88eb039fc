#!/usr/bin/env python3
"""The shipped pipelines/csv-to-parquet.toml, run as a user runs it, its output read
back by pyarrow as a Hive-partitioned dataset.

    python3 engine/tests/e2e/parquet_pyarrow.py --weir target/debug/weir

In a temporary directory: `weir run <repo>/pipelines/csv-to-parquet.toml`, a CSV with
quoted commas and newlines, nulls, timestamps and two bad rows dropped into
data/landing/, then pyarrow must find every good row under data/lake/ with the right
types, nulls and sums, the partition columns from the paths, and the bad rows listed
with their lines in data/dead-letter/rows/. Exits non-zero on any difference.
"""
import argparse, json, os, signal, sqlite3, subprocess, sys, tempfile, time
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.dataset as ds

ROOT = Path(__file__).resolve().parents[3]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--weir", default=str(ROOT / "target" / "debug" / "weir"))
    args = ap.parse_args()
    weir = str(Path(args.weir).resolve())
    with tempfile.TemporaryDirectory(prefix="weir-parquet-e2e-") as tmp:
        tmp = Path(tmp)
        lines = ["year,month,day,dep_delay,carrier,distance,time_hour"]
        expected_rows, delay_sum, nulls = 0, 0, 0
        for i in range(5000):
            year, month = 2013 + i % 2, 1 + (i // 2) % 12
            delay = "NA" if i % 7 == 0 else str(i % 90 - 5)
            nulls += delay == "NA"
            delay_sum += 0 if delay == "NA" else int(delay)
            carrier = ['UA', '"Delta, Inc."', '"Jet\nBlue"'][i % 3]
            lines.append(f"{year},{month},{1 + i % 28},{delay},{carrier},{100 + i},{year}-{month:02}-01 {i % 24:02}:00:00")
            expected_rows += 1
        # After the 1,000 rows types are inferred from: dep_delay is an int column there.
        lines.insert(2000, "2013,1,1,oops,UA,100,2013-01-01 00:00:00")  # not an int
        lines.insert(20, "2013,1,1,ragged")                              # 4 fields of 7
        text = "\n".join(lines) + "\n"
        # Quoted newlines count: the line a record starts on, as an editor shows it.
        bad_lines = sorted(text[:text.index(row)].count("\n") + 1 for row in ("2013,1,1,oops", "2013,1,1,ragged"))
        (tmp / "data" / "landing").mkdir(parents=True)
        proc = subprocess.Popen([weir, "run", str(ROOT / "pipelines" / "csv-to-parquet.toml"), "--listen", "127.0.0.1:0"],
                                cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            time.sleep(1)
            part = tmp / "data" / "landing" / ".flights.csv.part"
            part.write_text(text)
            part.rename(tmp / "data" / "landing" / "flights.csv")
            ledger = tmp / "data" / ".weir" / "ledger.db"
            deadline = time.monotonic() + 120
            while True:
                if ledger.exists():
                    try:
                        with sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=0.1) as db:
                            if db.execute("select count(*) from objects where status = 'done'").fetchone()[0] >= 1:
                                break
                    except sqlite3.Error:
                        pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    sys.exit("weir did not convert the file in 120 s")
                time.sleep(0.1)
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=60)
        lake = tmp / "data" / "lake" / "flights"
        table = ds.dataset(lake, format="parquet", partitioning="hive").to_table()
        problems = []
        if table.num_rows != expected_rows:
            problems.append(f"{table.num_rows} rows, expected {expected_rows}")
        types = {f.name: str(f.type) for f in table.schema}
        want = {"day": "int64", "dep_delay": "int64", "carrier": "string", "distance": "int64",
                "time_hour": "timestamp[ms]", "year": "int32", "month": "int32"}
        if types != want:
            problems.append(f"types {types}, expected {want}")
        if table["dep_delay"].null_count != nulls:
            problems.append(f"{table['dep_delay'].null_count} null delays, expected {nulls}")
        if pc.sum(table["dep_delay"]).as_py() != delay_sum:
            problems.append(f"delay sum {pc.sum(table['dep_delay']).as_py()}, expected {delay_sum}")
        if set(table["carrier"].to_pylist()) != {"UA", "Delta, Inc.", "Jet\nBlue"}:
            problems.append(f"carriers {set(table['carrier'].to_pylist())}")
        files = sorted(p.relative_to(lake).as_posix() for p in lake.rglob("*.parquet"))
        if len(files) != 24 or files[0] != "year=2013/month=1/part-0.parquet":
            problems.append(f"files {files[:3]}… ({len(files)})")
        listed = tmp / "data" / "dead-letter" / "rows" / "landing" / "flights.csv.jsonl"
        bad = [json.loads(line) for line in listed.read_text().splitlines()] if listed.exists() else []
        if [b["line"] for b in bad] != bad_lines:
            problems.append(f"bad rows {bad}")
        if problems:
            print("\n".join(problems), file=sys.stderr)
            print(err.decode(errors="replace")[-2000:], file=sys.stderr)
            sys.exit(1)
        print(f"ok: {table.num_rows} rows in {len(files)} Hive partitions read back by pyarrow "
              f"{__import__('pyarrow').__version__}; bad rows listed at lines {[b['line'] for b in bad]}")


if __name__ == "__main__":
    main()
