#!/usr/bin/env python3
"""The chart server against DuckDB over one Parquet lake, in the same run.

A 10-million-row lake (one day, 1,000 keys, laid out like the parquet sink's: `date=` folder,
1M-row zstd files, 131,072-row row groups) is written once with DuckDB. Then, for one view —
1-minute averages of `value` for 10 keys over the day (1,440 bins × 10 series) — it times:

  * `tributary serve`: GET /api/series over HTTP, the first request of a fresh process (cold) and
    the median of the next --repeat (warm), JSON parsed by the client;
  * DuckDB: the same aggregation (`time_bucket`, `avg`, the same filters) on a fresh connection,
    first query (cold) and the median of the next --repeat (warm), rows fetched into Python.

Both read files from the page cache (nothing here can drop it), so "cold" is a cold process.

    pip install duckdb
    CARGO_TARGET_DIR=/work/target-release cargo build --release
    python3 benches/serve.py --bin /work/target-release/release/tributary
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

KEYS = [f"key-{i:04d}" for i in range(10)]
FROM, TO = "2026-11-01T00:00:00Z", "2026-11-02T00:00:00Z"


def write_lake(root, rows):
    import duckdb

    out = os.path.join(root, "metrics", "date=2026-11-01")
    os.makedirs(out, exist_ok=True)
    con = duckdb.connect()
    per_file = 1_000_000
    step_us = 86_400_000_000 // rows
    for f in range(0, rows, per_file):
        con.execute(
            f"""COPY (SELECT TIMESTAMP '2026-11-01' + to_microseconds(i * {step_us}) AS ts,
                        'key-' || lpad((i % 1000)::VARCHAR, 4, '0') AS key,
                        (hash(i) % 100000) / 1000.0 AS value
                 FROM range({f}, {min(f + per_file, rows)}) t(i))
                TO '{out}/part-{f // per_file:04d}.parquet' (FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE 131072)"""
        )


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def peak_rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def time_serve(binary, data, repeat):
    port = free_port()
    proc = subprocess.Popen([binary, "serve", "--data", data, "--address", f"127.0.0.1:{port}"], stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.05)
        query = urllib.parse.urlencode(
            {"table": "metrics", "value": "value", "agg": "avg", "bin": "1m", "from": FROM, "to": TO, "group_by": "key",
             "where": "key IN (" + ", ".join(f"'{k}'" for k in KEYS) + ")"}
        )
        url = f"http://127.0.0.1:{port}/api/series?{query}"
        times, answer = [], None
        for _ in range(repeat + 1):
            t = time.perf_counter()
            with urllib.request.urlopen(url) as r:
                answer = json.loads(r.read())
            times.append(time.perf_counter() - t)
        series = answer["series"]
        points = sum(1 for s in series for p in s["points"] if p[1] is not None)
        return times[0], statistics.median(times[1:]), len(series), points, peak_rss_mib(proc.pid)
    finally:
        proc.terminate()
        proc.wait()


def time_duckdb(data, repeat):
    import duckdb

    keys = ", ".join(f"'{k}'" for k in KEYS)
    sql = f"""SELECT key, time_bucket(INTERVAL '1 minute', ts) AS bin, avg(value)
              FROM read_parquet('{data}/metrics/*/*.parquet', hive_partitioning = true)
              WHERE date >= '2026-11-01' AND date <= '2026-11-01'
                AND ts >= TIMESTAMP '2026-11-01 00:00:00' AND ts < TIMESTAMP '2026-11-02 00:00:00'
                AND key IN ({keys})
              GROUP BY ALL"""
    con = duckdb.connect()
    times, rows = [], None
    for _ in range(repeat + 1):
        t = time.perf_counter()
        rows = con.execute(sql).fetchall()
        times.append(time.perf_counter() - t)
    return times[0], statistics.median(times[1:]), len({r[0] for r in rows}), len(rows)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="/work/target-release/release/tributary")
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--data", help="reuse (or keep) the lake here")
    args = ap.parse_args()
    try:
        import duckdb
    except ImportError:
        sys.exit("benches/serve.py needs DuckDB for the lake and the comparison: pip install duckdb")
    tmp = None
    data = args.data
    if data is None:
        tmp = tempfile.TemporaryDirectory()
        data = tmp.name
    if not os.path.isdir(os.path.join(data, "metrics")):
        t = time.perf_counter()
        write_lake(data, args.rows)
        print(f"lake: {args.rows:,} rows written in {time.perf_counter() - t:.1f} s under {data}")
    cold, warm, series, points, rss = time_serve(args.bin, data, args.repeat)
    d_cold, d_warm, d_series, d_rows = time_duckdb(data, args.repeat)
    if (series, points) != (d_series, d_rows):
        sys.exit(f"the two answers differ: tributary {series} series / {points} bins with data, DuckDB {d_series} / {d_rows}")
    print(f"\n1-minute avg of one value, 10 of 1,000 keys, one day ({args.rows:,} rows): {series} series, {points:,} points")
    print(f"{'':<22}{'cold':>10}{'warm p50':>12}")
    print(f"{'tributary serve':<22}{cold * 1000:>8.0f}ms{warm * 1000:>10.0f}ms   peak RSS {rss:.0f} MiB")
    print(f"{'DuckDB ' + duckdb.__version__:<22}{d_cold * 1000:>8.0f}ms{d_warm * 1000:>10.0f}ms")
    print(f"{'ratio (÷ DuckDB)':<22}{cold / d_cold:>9.2f}×{warm / d_warm:>11.2f}×")


if __name__ == "__main__":
    main()
