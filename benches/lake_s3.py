#!/usr/bin/env python3
"""W1 with the Parquet sink on local disk vs in an S3 bucket (moto in server mode), in one run.

    python3 benches/lake_s3.py --bin …/release/tributary [--events 1000000] [--rounds 3]

W1 is peers.py's workload: 1M badge events as NDJSON → `WHERE score > 1000` → Parquet (zstd),
`tributary run` with a `file` source. The two sides differ only in the sink's `path`: a folder, or
`s3://bench/w1` on a local moto server (`pip install 'moto[server]'`). Each side runs `--rounds`
times, alternating; the table gives medians of wall time, CPU seconds and peak RSS of the
tributary process, the objects written and their sizes, and the rows read back with
`tributary query --data s3://…`. moto is a Python server on the same two cores: the S3 side pays
for its CPU too, so the ratio is an upper bound of what a real bucket costs the pipeline.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers  # noqa: E402  (generate, timed, median, free_port, wait_for_port: the same W1)

BUCKET = "bench"
KEYS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret", "AWS_REGION": "us-east-1"}


def moto_server():
    found = shutil.which("moto_server")
    if not found:
        sys.exit("moto_server is not installed: python3 -m pip install 'moto[server]'")
    port = peers.free_port()
    proc = subprocess.Popen([found, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peers.wait_for_port(port)
    urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/{BUCKET}", method="PUT")).read()
    return proc, f"http://127.0.0.1:{port}"


def objects(endpoint, prefix):
    """(key, size) of every object under prefix (moto's ListObjectsV2, one page: W1 writes few)."""
    body = urllib.request.urlopen(f"{endpoint}/{BUCKET}?list-type=2&prefix={prefix}").read().decode()
    out = []
    for item in body.split("<Contents>")[1:]:
        key = item.split("<Key>")[1].split("</Key>")[0]
        size = int(item.split("<Size>")[1].split("</Size>")[0])
        out.append((key, size))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin", required=True, help="a release build of tributary")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    moto, endpoint = moto_server()
    try:
        with tempfile.TemporaryDirectory(prefix="tributary-lake-s3-") as tmp:
            work = Path(tmp)
            data = work / "w1.ndjson"
            peers.generate(data, args.events)
            # The input four times over, uncompressed output: a file of several 8 MiB parts, so
            # the multipart path is measured too.
            big = work / "w1x4.ndjson"
            with open(big, "wb") as out:
                for _ in range(4):
                    out.write(data.read_bytes())
            os.sync()
            checkpoint = work / "w1.checkpoint.json"
            local_out = work / "w1-local"

            def pipeline(name, sink_path, storage, extra="", source=data):
                path = work / f"{name}.yaml"
                path.write_text(f"""
admin: {{enabled: false}}
sources:
  badges:
    type: file
    path: {source}
    schema: {peers.BADGE_SCHEMA}
    checkpoint_file: {checkpoint}
transforms:
  scores:
    inputs: [badges]
    sql: {peers.W1_SQL}
sinks:
  lake:
    type: parquet
    inputs: [scores]
    path: {sink_path}
{extra}{storage}""")
                return path

            storage = f"    storage: {{endpoint: '{endpoint}', access_key_id: bench, secret_access_key: bench-secret}}\n"
            # Uncompressed, the file is several 8 MiB parts: the multipart path.
            plain = "    compression: none\n    max_rows: 4000000\n    max_bytes: 1GiB\n"
            sides = {}
            for label, extra, source in (("zstd", "", data), ("×4 uncompressed", plain, big)):
                key = label.replace("×4 ", "x4-")
                local = pipeline(f"local-{key}", local_out, "", extra, source)
                # Each S3 run writes under its own prefix (zstd0/w1, …): nothing to delete between runs.
                s3 = [(pipeline(f"s3-{key}-{k}", f"s3://{BUCKET}/{key}{k}/w1", storage, extra, source), f"{key}{k}") for k in range(args.rounds)]
                sides[label] = (local, s3)

            def run(pipeline_path):
                checkpoint.unlink(missing_ok=True)
                return peers.timed([args.bin, "run", str(pipeline_path)], stderr=subprocess.DEVNULL)

            runs, files = {}, {}
            for label, (local, s3) in sides.items():
                runs[f"local disk, {label}"], runs[f"S3 (moto), {label}"] = [], []
                for k in range(args.rounds):
                    shutil.rmtree(local_out, ignore_errors=True)
                    runs[f"local disk, {label}"].append(run(local))
                    runs[f"S3 (moto), {label}"].append(run(s3[k][0]))
                files[f"local disk, {label}"] = sorted(p.stat().st_size for p in local_out.rglob("*.parquet"))
                files[f"S3 (moto), {label}"] = sorted(size for _, size in objects(endpoint, f"{s3[-1][1]}/w1/"))
            last = sides["zstd"][1][-1][1]
            env = {**os.environ, **KEYS, "AWS_ENDPOINT_URL": endpoint, "AWS_ALLOW_HTTP": "true"}
            read_back = subprocess.run([args.bin, "query", "--data", f"s3://{BUCKET}/{last}", "--format", "csv", "SELECT count(*) AS n FROM w1"],
                                       env=env, check=True, capture_output=True, text=True).stdout.split()[-1]
            t0 = time.time()
            subprocess.run([args.bin, "query", "--data", f"s3://{BUCKET}/{last}", "--format", "csv",
                            "SELECT game, count(*), avg(score) FROM w1 GROUP BY game"], env=env, check=True, capture_output=True)
            query_s = time.time() - t0
    finally:
        moto.terminate()

    expected = sum(1 for i in range(args.events) if (i * 7919) % 3000 > 1000)
    print(f"\n## W1 ({args.events:,} events, {expected:,} rows out; ×4: the input four times over): Parquet sink on "
          f"local disk vs S3 (moto), medians of {args.rounds} alternating runs\n")
    print("| sink | wall s | CPU s | peak RSS MiB | files (MB) | wall vs local |")
    print("|---|---|---|---|---|---|")
    for name in runs:
        base = peers.median([r[0] for r in runs["local disk, " + name.split(", ")[1]]])
        wall, cpu, rss = ([r[i] for r in runs[name]] for i in range(3))
        sizes = ", ".join(f"{s / 1e6:.1f}" for s in files[name])
        print(f"| {name} | {peers.median(wall):.2f} ({min(wall):.2f}–{max(wall):.2f}) | {peers.median(cpu):.2f} | "
              f"{peers.median(rss):.0f} ({max(rss):.0f}) | {len(files[name])} ({sizes}) | {peers.median(wall) / base:.2f}× |")
    print(f"\nrows read back from the bucket with `tributary query --data s3://{BUCKET}/{last}`: {read_back} (expected {expected})")
    print(f"a GROUP BY over the bucket with `tributary query`: {query_s:.2f} s (process start included)")
    if int(read_back) != expected:
        sys.exit("FAIL: rows read back differ")


if __name__ == "__main__":
    main()
