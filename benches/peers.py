#!/usr/bin/env python3
"""Tributary side by side with the tools a user would pick instead, in one run, as one ratio table.

    python3 benches/peers.py                 # builds the release binary first (about 25 min cold)
    python3 benches/peers.py --bin PATH      # or measures a binary you built

Workloads (each peer runs only where it is installed; a missing one is a row saying so):
  W1  1M badge events as NDJSON → `WHERE score > 1000` → Parquet (zstd): `tributary run` with a
      `file` source vs DuckDB's `COPY (SELECT … FROM read_json(…)) TO … (FORMAT parquet)` vs
      PyArrow's `read_json` + `write_table`. Wall time, CPU seconds and peak RSS of each process:
      medians of `--rounds` (5) runs per side, alternating, after the input file was synced.
  H1  one JSON event per POST, `wrk -t2 -c64` (and `-c8`) → http_server → SQL → Parquet vs nginx
      answering the same POSTs with a fixed body (the machine's HTTP ceiling). Requests/s, p99.
  H2  1,000-event NDJSON bodies, `wrk -c8`: events/s.
  O1  OTLP/HTTP protobuf metrics (100 points per request), `wrk -c8` and `-c64`: rotel-agent
      (blackhole exporter) vs the otlp source as rotel runs (memory, a counting `console` sink) and
      durable (disk buffer, Parquet) on the same body. Points/s.
  EO  the cost of `delivery: exactly_once` against `at_least_once`, same binary, same pipelines:
      W1 (file → SQL → Parquet, `--rounds` alternating runs each) and one JSON event per POST
      (`wrk -c64` and `-c8`) into http_server with `buffer: {type: disk}` → SQL → Parquet.
  L1  a 1M-row lookup table (Parquet) enriching 1M events (Parquet) with a LEFT JOIN → Parquet:
      `tributary run` with a `parquet` source and a `tables:` file table vs DuckDB's hash join of
      the same two files (`COPY (SELECT … LEFT JOIN …) TO …`). Events/s, and the table's memory
      as the `table loaded` log line gives it. Medians of `--rounds` alternating runs.

Peers: `pip install duckdb pyarrow`, `apt-get install nginx-light wrk`. Measure on an idle machine:
client and server share its cores, as they would for the peer.
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GAMES = ["Breakout", "Labyrinth", "Asteroids", "Tappytime"]
EVENTS = ["high-score", "around-the-world", "challenge-check", "status"]
BADGE_SCHEMA = ("{ts: timestamp, channel: string, event: string, user_uuid: string, mac_address: string, "
                "game: string, score: int, duration: int}")
W1_SQL = "SELECT ts, user_uuid, game, score, duration FROM badges WHERE score > 1000"


def badge_line(i):
    ts = 1_764_000_000 + i // 1000
    hours, mins, secs = (ts // 3600) % 24, (ts // 60) % 60, ts % 60
    return (f'{{"ts":"2025-11-24T{hours:02}:{mins:02}:{secs:02}Z","channel":"high-score-processor",'
            f'"event":"{EVENTS[i % 4]}","user_uuid":"5f0c{i % 5000:04x}-badg-4e11-9c3a-0000{i % 5000:08x}",'
            f'"mac_address":"24:0a:c4:12:{i % 256:02x}:{(i // 256) % 256:02x}","game":"{GAMES[i % 4]}",'
            f'"score":{(i * 7919) % 3000},"duration":{5 + i % 300}}}\n')


def generate(path, n):
    with open(path, "w") as f:
        for start in range(0, n, 10_000):
            f.write("".join(badge_line(i) for i in range(start, min(n, start + 10_000))))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on port {port} after {timeout}s")


def timed(cmd, **kw):
    """Run `cmd` to completion: wall seconds, CPU seconds and peak RSS (MiB) of that process."""
    with tempfile.NamedTemporaryFile("r") as stats:
        subprocess.run(["/usr/bin/time", "-o", stats.name, "-f", "%e %U %S %M"] + cmd, check=True, **kw)
        wall, user, sys_, rss_kb = stats.read().split()[-4:]
    return float(wall), float(user) + float(sys_), int(rss_kb) / 1024


def have(module):
    try:
        __import__(module)
        return True
    except ImportError:
        return False


def parquet_rows(path):
    """Rows in a Parquet file, or in every Parquet file under a folder (None without DuckDB)."""
    if not have("duckdb"):
        return None
    import duckdb
    files = f"{path}/**/*.parquet" if Path(path).is_dir() else str(path)
    return duckdb.sql(f"SELECT count(*) FROM read_parquet('{files}')").fetchall()[0][0]


# ---------------------------------------------------------------------------------------- W1


def w1(bin_path, work, events, rounds):
    """Each side `rounds` times, alternating (so page cache and CPU frequency favour none), after the
    freshly written input was synced (its writeback would slow whichever side ran first)."""
    data = work / "w1.ndjson"
    generate(data, events)
    os.sync()
    size_mb = data.stat().st_size / 1e6
    out = work / "w1-tributary"
    pipeline = work / "w1.yaml"
    checkpoint = work / "w1.checkpoint.json"
    pipeline.write_text(f"""
admin: {{enabled: false}}
sources:
  badges:
    type: file
    path: {data}
    schema: {BADGE_SCHEMA}
    checkpoint_file: {checkpoint}
transforms:
  scores:
    inputs: [badges]
    sql: {W1_SQL}
sinks:
  lake:
    type: parquet
    inputs: [scores]
    path: {out}
""")
    sides = []

    def tributary():
        shutil.rmtree(out, ignore_errors=True)
        checkpoint.unlink(missing_ok=True)
        with open(work / "w1-tributary.log", "w") as log:
            return timed([bin_path, "run", str(pipeline)], stderr=log), out

    sides.append(["Tributary (file → SQL → parquet)", tributary])
    if have("duckdb"):
        import duckdb
        target = work / "w1-duckdb.parquet"
        script = (f"import duckdb; duckdb.sql(\"\"\"COPY (SELECT ts, user_uuid, game, score, duration FROM read_json('{data}', "
                  "format='newline_delimited', columns={ts: 'TIMESTAMPTZ', channel: 'VARCHAR', event: 'VARCHAR', "
                  "user_uuid: 'VARCHAR', mac_address: 'VARCHAR', game: 'VARCHAR', score: 'BIGINT', duration: 'BIGINT'}) "
                  f"WHERE score > 1000) TO '{target}' (FORMAT parquet, COMPRESSION zstd)\"\"\")")
        sides.append([f"DuckDB {duckdb.__version__} COPY … read_json", lambda: (timed([sys.executable, "-c", script]), target)])
    else:
        sides.append(["DuckDB (pip install duckdb)", None])
    if have("pyarrow"):
        import pyarrow
        target_pa = work / "w1-pyarrow.parquet"
        script_pa = ("import pyarrow as pa, pyarrow.json as pj, pyarrow.parquet as pq, pyarrow.compute as pc\n"
                     f"t = pj.read_json('{data}')\n"
                     "t = t.filter(pc.greater(t['score'], 1000)).select(['ts', 'user_uuid', 'game', 'score', 'duration'])\n"
                     f"pq.write_table(t, '{target_pa}', compression='zstd')\n")
        sides.append([f"PyArrow {pyarrow.__version__} read_json + write_table", lambda: (timed([sys.executable, "-c", script_pa]), target_pa)])
    else:
        sides.append(["PyArrow (pip install pyarrow)", None])
    runs = {name: [] for name, _ in sides}
    written = {}
    for _ in range(rounds):
        for name, run in sides:
            if run is not None:
                t, path = run()
                runs[name].append(t)
                written[name] = path
    rows = []
    for name, run in sides:
        if run is None:
            rows.append((name, None, None))
            continue
        rows.append((name, runs[name], parquet_rows(written[name])))
    expected = sum(1 for i in range(events) if (i * 7919) % 3000 > 1000)
    return size_mb, expected, rows


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2


# ---------------------------------------------------------------------------------------- L1

L1_SQL = "SELECT e.ts, e.target, e.ms, s.site, s.region FROM events e LEFT JOIN sites s ON e.target = s.target"


def l1_files(work, events, table_rows):
    """The events (ts, target, ms) and the table (target, site, region), as DuckDB writes them."""
    import duckdb
    events_dir = work / "l1-events"
    events_dir.mkdir(exist_ok=True)
    table = work / "l1-sites.parquet"
    duckdb.sql(f"COPY (SELECT 'target-' || i AS target, 'site-' || (i % 5000) AS site, "
               f"['emea', 'amer', 'apac', 'latam'][1 + i % 4] AS region FROM range({table_rows}) t(i)) "
               f"TO '{table}' (FORMAT parquet)")
    duckdb.sql(f"COPY (SELECT TIMESTAMPTZ '2026-12-07 00:00:00+00' + i * INTERVAL 1 MILLISECOND AS ts, "
               f"'target-' || ((i * 7919) % {table_rows + table_rows // 10}) AS target, (i % 997)::DOUBLE AS ms "
               f"FROM range({events}) t(i)) TO '{events_dir}/part-0.parquet' (FORMAT parquet)")
    return events_dir, table


def l1(bin_path, work, events, table_rows, rounds):
    if not have("duckdb"):
        return None
    import duckdb
    events_dir, table = l1_files(work, events, table_rows)
    os.sync()
    out = work / "l1-tributary"
    pipeline = work / "l1.yaml"
    pipeline.write_text(f"""
admin: {{enabled: false}}
tables:
  sites: {{type: file, path: {table}}}
sources:
  events:
    type: parquet
    path: {events_dir}
    schema: {{ts: timestamp, target: string, ms: float}}
transforms:
  enriched:
    inputs: [events]
    sql: {L1_SQL}
sinks:
  lake:
    type: parquet
    inputs: [enriched]
    path: {out}
""")
    log_path = work / "l1-tributary.log"

    def tributary():
        shutil.rmtree(out, ignore_errors=True)
        with open(log_path, "w") as log:
            return timed([bin_path, "run", str(pipeline)], stderr=log, stdout=log), out

    target = work / "l1-duckdb.parquet"
    duck_sql = (L1_SQL.replace("FROM events e", f"FROM read_parquet('{events_dir}/*.parquet') e")
                .replace("JOIN sites s", f"JOIN read_parquet('{table}') s"))
    script = f'import duckdb; duckdb.sql("""COPY ({duck_sql}) TO \'{target}\' (FORMAT parquet, COMPRESSION zstd)""")'
    sides = [["Tributary (parquet → SQL LEFT JOIN table → parquet)", tributary],
             [f"DuckDB {duckdb.__version__} COPY … LEFT JOIN", lambda: (timed([sys.executable, "-c", script]), target)]]
    runs = {name: [] for name, _ in sides}
    written = {}
    for _ in range(rounds):
        for name, run in sides:
            t, path = run()
            runs[name].append(t)
            written[name] = path
    loaded = re.search(r"table loaded.*?rows=(\d+).*?bytes=(\d+)", re.sub(r"\x1b\[[0-9;]*m", "", log_path.read_text()))
    memory = (int(loaded.group(1)), int(loaded.group(2))) if loaded else None
    def enriched(path):
        files = f"{path}/**/*.parquet" if Path(path).is_dir() else str(path)
        return duckdb.sql(f"SELECT count(*), count(site) FROM read_parquet('{files}')").fetchall()[0]

    return {"rows": [(name, runs[name], enriched(written[name])) for name, _ in sides], "table": memory,
            "events": events, "table_rows": table_rows}


def l1_table(args, l):
    print(f"\n## L1: {l['table_rows']:,}-row lookup table enriching {l['events']:,} events (Parquet → LEFT JOIN → Parquet)\n")
    if l["table"]:
        rows, size = l["table"]
        print(f"The table in memory: {rows:,} rows, {size / 2**20:.1f} MiB ({size / rows:.0f} bytes per row).\n")
    print("| side | wall s | events/s | CPU s | peak RSS MiB | rows (with a site) | wall vs DuckDB |")
    print("|---|---|---|---|---|---|---|")
    duck = next(runs for name, runs, _ in l["rows"] if name.startswith("DuckDB"))
    for name, runs, (n, matched) in l["rows"]:
        wall, cpu, rss = ([r[i] for r in runs] for i in range(3))
        print(f"| {name} | {median(wall):.2f} ({min(wall):.2f}–{max(wall):.2f}) | {l['events'] / median(wall):,.0f} | {median(cpu):.2f} "
              f"| {median(rss):.0f} | {n:,} ({matched:,}) | {median(wall) / median([r[0] for r in duck]):.2f}× |")
    counts = {counted for _, _, counted in l["rows"]}
    if len(counts) != 1:
        sys.exit(f"FAIL: the sides enriched different rows: {counts}")


# ---------------------------------------------------------------------------------------- HTTP

WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open(os.getenv("BODY_FILE"), "rb")
wrk.body = f:read("*a")
f:close()
"""


def to_ms(value):
    number, unit = re.match(r"([\d.]+)(us|ms|s)", value).groups()
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(port, body_file, connections, seconds, script, path="/"):
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script),
                          f"http://127.0.0.1:{port}{path}"], env={**os.environ, "BODY_FILE": str(body_file)},
                         check=True, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = to_ms(re.search(r"\s99%\s+([\d.]+(?:us|ms|s))", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    failed = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p99_ms": p99, "requests": total, "non_2xx": int(failed.group(1)) if failed else 0}


def http_pipeline(port, out, source_extra=""):
    """One JSON event per POST → http_server → `WHERE score > 1000` → Parquet."""
    return f"""
admin: {{enabled: false}}
sources:
  ingest:
    type: http_server
    address: "127.0.0.1:{port}"
    accept_timeout: 5s
    schema: {{ts: timestamp, user: string, game: string, score: int}}
    {source_extra}
transforms:
  scores:
    inputs: [ingest]
    sql: SELECT ts, user, game, score FROM ingest WHERE score > 1000
sinks:
  lake:
    type: parquet
    inputs: [scores]
    path: {out}
"""


def http(bin_path, work, seconds):
    one = work / "one.json"
    one.write_text('{"ts":"2025-11-24T10:00:00Z","user":"u1","game":"Breakout","score":2000}')
    thousand = work / "thousand.ndjson"
    thousand.write_text("".join(f'{{"ts":"2025-11-24T10:00:00Z","user":"u{i}","game":"Breakout","score":{1001 + i}}}\n'
                                for i in range(1000)))
    script = work / "post.lua"
    script.write_text(WRK_SCRIPT)
    results = {}
    if not shutil.which("wrk"):
        return results
    port = free_port()
    out = work / "http-tributary"
    pipeline = work / "http.yaml"
    pipeline.write_text(http_pipeline(port, out))
    server = subprocess.Popen([bin_path, "run", str(pipeline)], stderr=open(work / "http-tributary.log", "w"))
    try:
        wait_for_port(port)
        results["tributary c64"] = wrk(port, one, 64, seconds, script)
        results["tributary c8"] = wrk(port, one, 8, seconds, script)
        results["tributary ndjson c8"] = wrk(port, thousand, 8, seconds, script)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    sent = sum(r["requests"] - r["non_2xx"] for k, r in results.items() if "ndjson" not in k)
    sent += (results["tributary ndjson c8"]["requests"] - results["tributary ndjson c8"]["non_2xx"]) * 1000
    results["tributary rows"] = {"answered_200": sent, "written": parquet_rows(out)}
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if nginx:
        port = free_port()
        conf = work / "nginx.conf"
        conf.write_text(f"""
worker_processes 2;
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {work}/nginx-body;
  server {{
    listen 127.0.0.1:{port};
    location / {{ return 200 '{{"accepted":1}}'; }}
  }}
}}
""")
        server = subprocess.Popen([nginx, "-c", str(conf), "-p", str(work)])
        try:
            wait_for_port(port)
            results["nginx c64"] = wrk(port, one, 64, seconds, script)
            results["nginx c8"] = wrk(port, one, 8, seconds, script)
        finally:
            server.send_signal(signal.SIGQUIT)
            server.wait(timeout=30)
    return results


# ---------------------------------------------------------------------------------------- EO


def eo(bin_path, work, events, rounds, seconds):
    """The same pipelines with `delivery: at_least_once` and `exactly_once`, alternating."""
    # W1's input when W1 ran in this run (the same events), else written now.
    data = work / "w1.ndjson"
    if not data.exists():
        generate(data, events)
        os.sync()
    result = {"w1": {}, "http": {}}
    for delivery in ("at_least_once", "exactly_once"):
        result["w1"][delivery] = []
    for _ in range(rounds):
        for delivery in ("at_least_once", "exactly_once"):
            out, checkpoint = work / f"eo-w1-{delivery}", work / f"eo-w1-{delivery}.checkpoint.json"
            shutil.rmtree(out, ignore_errors=True)
            checkpoint.unlink(missing_ok=True)
            pipeline = work / f"eo-w1-{delivery}.yaml"
            pipeline.write_text(f"""
delivery: {delivery}
admin: {{enabled: false}}
sources:
  badges: {{type: file, path: {data}, schema: {BADGE_SCHEMA}, checkpoint_file: {checkpoint}}}
transforms:
  scores: {{inputs: [badges], sql: "{W1_SQL}"}}
sinks:
  lake: {{type: parquet, inputs: [scores], path: {out}}}
""")
            with open(work / f"eo-w1-{delivery}.log", "w") as log:
                t = timed([bin_path, "run", str(pipeline)], stderr=log)
            result["w1"][delivery].append((*t, parquet_rows(out)))
    if not shutil.which("wrk"):
        return result
    one = work / "one.json"
    one.write_text('{"ts":"2025-11-24T10:00:00Z","user":"u1","game":"Breakout","score":2000}')
    script = work / "post.lua"
    script.write_text(WRK_SCRIPT)
    for delivery in ("at_least_once", "exactly_once"):
        port = free_port()
        out, buffer = work / f"eo-http-{delivery}", work / f"eo-http-{delivery}-buffer"
        pipeline = work / f"eo-http-{delivery}.yaml"
        pipeline.write_text(f"delivery: {delivery}\n" + http_pipeline(port, out, f"buffer: {{type: disk, path: {buffer}}}"))
        server = subprocess.Popen([bin_path, "run", str(pipeline)], stderr=open(work / f"eo-http-{delivery}.log", "w"))
        runs = {}
        try:
            wait_for_port(port)
            runs["c64"] = wrk(port, one, 64, seconds, script)
            runs["c8"] = wrk(port, one, 8, seconds, script)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=120)
        runs["answered_200"] = sum(r["requests"] - r["non_2xx"] for r in (runs["c64"], runs["c8"]))
        runs["written"] = parquet_rows(out)
        result["http"][delivery] = runs
    return result


def eo_table(args, e):
    print(f"\n## EO: the cost of `delivery: exactly_once` (same binary, same pipelines)\n")
    print("| workload | at_least_once | exactly_once | exactly_once / at_least_once |")
    print("|---|---|---|---|")
    alo, exo = e["w1"]["at_least_once"], e["w1"]["exactly_once"]
    w_alo, w_exo = median([r[0] for r in alo]), median([r[0] for r in exo])
    print(f"| W1 {args.events:,} events, wall s (median of {args.rounds}) | {w_alo:.2f} | {w_exo:.2f} | {w_exo / w_alo:.2f}× time |")
    rows = {d: {r[3] for r in e["w1"][d]} for d in e["w1"]}
    for c in ("c64", "c8"):
        if not e["http"]:
            break
        a, x = e["http"]["at_least_once"][c], e["http"]["exactly_once"][c]
        print(f"| one event per POST, disk buffer, -{c}, req/s (p99 ms) | {a['rps']:,.0f} ({a['p99_ms']:.2f}) "
              f"| {x['rps']:,.0f} ({x['p99_ms']:.2f}) | {x['rps'] / a['rps'] * 100:.0f}% throughput |")
    print(f"\nW1 rows written per run: at_least_once {sorted(rows['at_least_once'])}, exactly_once {sorted(rows['exactly_once'])}")
    for d, runs in e["http"].items():
        print(f"HTTP {d}: rows answered 200 {runs['answered_200']:,}; rows in the Parquet output {runs['written']}")
        if runs["written"] is not None and runs["written"] < runs["answered_200"]:
            sys.exit(f"FAIL: {d}: fewer rows written than answered 200")
    if len(rows["exactly_once"]) != 1 or rows["exactly_once"] != rows["at_least_once"]:
        sys.exit("FAIL: W1 wrote different row counts")


# ---------------------------------------------------------------------------------------- O1

# The client's connections: each answer waits for the disk buffer's fsync, which one group commit
# shares among the requests waiting at once.
OTLP_CONNECTIONS = (8, 64)
OTLP_POINTS = 100


def otlp_body(path):
    """One OTLP/HTTP metrics request: a gauge of OTLP_POINTS points, two attributes each, under the
    resource an SDK sends (what a collector's exporter batches look like, small)."""
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
    request = ExportMetricsServiceRequest()
    rm = request.resource_metrics.add()
    for k, v in (("service.name", "door-controller"), ("telemetry.sdk.language", "python"), ("site", "hq")):
        rm.resource.attributes.append(KeyValue(key=k, value=AnyValue(string_value=v)))
    metric = rm.scope_metrics.add().metrics.add()
    metric.name = "room_temp"
    for i in range(OTLP_POINTS):
        p = metric.gauge.data_points.add()
        p.time_unix_nano = 1_764_000_000_000_000_000 + i
        p.as_double = 20.0 + i / 10
        p.attributes.append(KeyValue(key="room", value=AnyValue(string_value=f"r{i}")))
        p.attributes.append(KeyValue(key="floor", value=AnyValue(int_value=i % 5)))
    path.write_bytes(request.SerializeToString())


def rotel_agent():
    if os.environ.get("ROTEL_AGENT"):
        return os.environ["ROTEL_AGENT"]
    try:
        import rotel
        path = Path(rotel.__file__).parent / "rotel-agent"
        return str(path) if path.exists() else None
    except ImportError:
        return None


def otlp(bin_path, work, seconds):
    """O1: OTLP/HTTP protobuf metrics, the same body from the same client (wrk) into rotel-agent
    (answered once in its memory, to its blackhole exporter) and into the otlp source twice: as
    rotel runs (memory buffer, a `console` sink in `summary` format, which counts rows and drops
    them), and durable (answered once fsynced in its disk buffer, written to Parquet)."""
    results = {}
    if not shutil.which("wrk") or not have("opentelemetry.proto"):
        return results
    body = work / "otlp.pb"
    otlp_body(body)
    script = work / "otlp.lua"
    script.write_text(WRK_SCRIPT.replace("application/json", "application/x-protobuf"))
    out = work / "otlp-tributary"
    sides = {
        "memory": ("", "console", "format: summary, interval: 1s"),
        "durable": (f"buffer: {{type: disk, path: {work}/otlp-buffer}}", "parquet", f"path: {out}"),
    }
    for side, (buffer, sink, sink_options) in sides.items():
        port = free_port()
        pipeline = work / f"otlp-{side}.yaml"
        pipeline.write_text(f"""
admin: {{enabled: false}}
sources:
  otel:
    type: otlp
    http_address: "127.0.0.1:{port}"
    accept_timeout: 5s
    {buffer}
sinks:
  out:
    type: {sink}
    inputs: [otel.metrics]
    {sink_options.replace(", ", chr(10) + "    ")}
""")
        with open(work / f"otlp-{side}.out", "w") as stdout, open(work / f"otlp-{side}.log", "w") as stderr:
            results.update(otlp_load([bin_path, "run", str(pipeline)], port, f"tributary {side}", body, script, seconds,
                                     stdout=stdout, stderr=stderr))
        answered = sum(r["requests"] - r["non_2xx"] for k, r in results.items() if k.startswith(f"tributary {side} c"))
        if side == "durable":
            written = parquet_rows(out)
        else:
            totals = re.findall(r"\((\d+) total\)", (work / f"otlp-{side}.out").read_text())
            written = int(totals[-1]) if totals else 0
        results[f"tributary {side} rows"] = {"answered_200": answered * OTLP_POINTS, "written": written}
    agent = rotel_agent()
    if agent:
        http_port, grpc_port = free_port(), free_port()
        command = [agent, "start", "--otlp-http-endpoint", f"127.0.0.1:{http_port}",
                   "--otlp-grpc-endpoint", f"127.0.0.1:{grpc_port}", "--exporter", "blackhole"]
        with open(work / "rotel.log", "w") as stderr:
            results.update(otlp_load(command, http_port, "rotel", body, script, seconds,
                                     stdout=subprocess.DEVNULL, stderr=stderr))
    return results


def otlp_load(command, port, label, body, script, seconds, **popen):
    """Starts `command`, which serves OTLP/HTTP on `port`, runs wrk against it at each of
    OTLP_CONNECTIONS, then stops it: `{"<label> c<connections>": wrk's figures}`."""
    results = {}
    server = subprocess.Popen(command, **popen)
    try:
        wait_for_port(port)
        for c in OTLP_CONNECTIONS:
            results[f"{label} c{c}"] = wrk(port, body, c, seconds, script, "/v1/metrics")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    return results


# ---------------------------------------------------------------------------------------- main


def build():
    target = os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target"))
    subprocess.run(["cargo", "build", "--release", "--bin", "tributary"], cwd=ROOT, check=True,
                   env={**os.environ, "CARGO_TARGET_DIR": target})
    return str(Path(target) / "release" / "tributary")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin", help="a release build of tributary (default: build one)")
    parser.add_argument("--events", type=int, default=1_000_000, help="W1 events (default 1,000,000)")
    parser.add_argument("--seconds", type=int, default=10, help="seconds per wrk run (default 10)")
    parser.add_argument("--rounds", type=int, default=5, help="W1 runs per side, alternating (default 5)")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--table-rows", type=int, default=1_000_000, help="L1 lookup table rows (default 1,000,000)")
    parser.add_argument("--only", choices=["w1", "http", "otlp", "l1", "eo"], action="append",
                        help="run only these workloads (repeatable; default: all)")
    args = parser.parse_args()
    bin_path = args.bin or build()
    with tempfile.TemporaryDirectory(prefix="tributary-peers-") as tmp:
        work = Path(tmp)
        runs = lambda name: not args.only or name in args.only
        size_mb, expected, w1_rows = w1(bin_path, work, args.events, args.rounds) if runs("w1") else (0, 0, None)
        h = http(bin_path, work, args.seconds) if runs("http") else None
        o = otlp(bin_path, work, args.seconds) if runs("otlp") else None
        lk = l1(bin_path, work, args.events, args.table_rows, args.rounds) if runs("l1") else None
        e = eo(bin_path, work, args.events, args.rounds, args.seconds) if runs("eo") else None

    if w1_rows is not None:
        w1_table(args, size_mb, expected, w1_rows)
    if h is not None:
        http_table(h)
    if o is not None:
        otlp_table(o)
    if runs("l1"):
        if lk is None:
            print("\n## L1: DuckDB is not installed (pip install duckdb): it writes the files and is the peer")
        else:
            l1_table(args, lk)
    if e is not None:
        eo_table(args, e)
    if args.json:
        Path(args.json).write_text(json.dumps({"w1": w1_rows, "http": h, "otlp": o, "l1": lk, "eo": e}, indent=2, default=str))


def w1_table(args, size_mb, expected, w1_rows):
    print(f"\n## W1: {args.events:,} badge events NDJSON ({size_mb:.0f} MB) → WHERE score > 1000 → Parquet zstd"
          f" ({expected:,} rows expected)\n")
    print(f"Medians of {args.rounds} alternating runs per side (the range in brackets).\n")
    print("| side | wall s | CPU s | peak RSS MiB | rows | wall vs DuckDB |")
    print("|---|---|---|---|---|---|")
    duck = next((runs for name, runs, _ in w1_rows if name.startswith("DuckDB") and runs), None)
    for name, runs, n in w1_rows:
        if runs is None:
            print(f"| {name} | not installed | | | | |")
            continue
        wall, cpu, rss = ([r[i] for r in runs] for i in range(3))
        ratio = f"{median(wall) / median([r[0] for r in duck]):.2f}×" if duck else "—"
        print(f"| {name} | {median(wall):.2f} ({min(wall):.2f}–{max(wall):.2f}) | {median(cpu):.2f} | {median(rss):.0f} ({max(rss):.0f}) "
              f"| {n if n is not None else '?'} | {ratio} |")


def http_table(h):
    print("\n## HTTP → SQL → Parquet (wrk -t2)\n")
    if not h:
        print("wrk is not installed (apt-get install wrk)")
    else:
        print("| load | Tributary req/s | p99 ms | nginx req/s | p99 ms | Tributary / nginx |")
        print("|---|---|---|---|---|---|")
        for c in ("c64", "c8"):
            t, n = h[f"tributary {c}"], h.get(f"nginx {c}")
            ratio = f"{t['rps'] / n['rps'] * 100:.0f}%" if n else "nginx not installed"
            nrps, np99 = (f"{n['rps']:,.0f}", f"{n['p99_ms']:.2f}") if n else ("—", "—")
            print(f"| one event per POST, -{c} | {t['rps']:,.0f} | {t['p99_ms']:.2f} | {nrps} | {np99} | {ratio} |")
        t = h["tributary ndjson c8"]
        print(f"| 1,000-event NDJSON bodies, -c8 | {t['rps'] * 1000:,.0f} events/s | {t['p99_ms']:.2f} | — | — | — |")
        r = h["tributary rows"]
        print(f"\nrows answered 200: {r['answered_200']:,}; rows in the Parquet output: {r['written']}")
        if r["written"] is not None and r["written"] < r["answered_200"]:
            sys.exit("FAIL: fewer rows written than answered 200")


def otlp_table(o):
    print(f"\n## O1: OTLP/HTTP protobuf metrics, {OTLP_POINTS} points per request (wrk -t2)\n")
    if not o:
        print("wrk or the opentelemetry-proto Python package is not installed")
        return
    print("| load | rotel-agent → blackhole, points/s (p99 ms) | tributary otlp → memory → console summary (as rotel) | vs rotel "
          "| tributary otlp → disk buffer → Parquet (durable) | vs rotel |")
    print("|---|---|---|---|---|---|")
    for c in OTLP_CONNECTIONS:
        r = o.get(f"rotel c{c}")
        peer = f"{r['rps'] * OTLP_POINTS:,.0f} ({r['p99_ms']:.2f})" if r else "rotel not installed"
        cells = [f"-c{c}", peer]
        for side in ("memory", "durable"):
            t = o[f"tributary {side} c{c}"]
            cells.append(f"{t['rps'] * OTLP_POINTS:,.0f} ({t['p99_ms']:.2f}), {t['non_2xx']} non-2xx")
            cells.append(f"{t['rps'] / r['rps'] * 100:.0f}%" if r else "—")
        print("| " + " | ".join(cells) + " |")
    for side in ("memory", "durable"):
        rows = o[f"tributary {side} rows"]
        print(f"\n{side}: points answered 200: {rows['answered_200']:,}; rows the sink counted or wrote: {rows['written']}")
        if rows["written"] is not None and rows["written"] < rows["answered_200"]:
            sys.exit(f"FAIL ({side}): fewer OTLP points written than answered 200")


if __name__ == "__main__":
    main()
