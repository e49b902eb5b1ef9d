#!/usr/bin/env python3
"""Training epochs over one dataset through s3vol: epoch 1 fills the read cache, epoch 2
should read from it. Compared with no cache (same mount, read_cache_size=0) and with the
same files read from local disk, with 1 and 4 readers at once; the page cache is dropped
before every epoch, so local disk and the cache's disk are read from disk alike.

  epochs.py             (bench/epochs.sh starts the store and builds s3vol first)

Env: ENDPOINT, AK, SK, S3VOL (the binary), BENCH_DIR (/tmp/s3vol-bench), RESULTS,
     DATASETS ("large small"), LARGE_N (32) x LARGE_MB (64), SMALL_N (20000) x SMALL_KB (100),
     READERS ("1 4"), CACHE_MB (8192), OPTS (extra s3vol -o options, e.g. for a dataset class)
Prints one row per dataset x readers x cache and writes $RESULTS/epochs.tsv.
"""

import concurrent.futures as cf
import os
import random
import shutil
import subprocess
import sys
import time

import boto3

E = os.environ
BENCH_DIR = E.get("BENCH_DIR", "/tmp/s3vol-bench")
RESULTS = E.get("RESULTS", os.path.join(BENCH_DIR, "results-epochs"))
BUCKET = "epochs"
SHAPES = {
    "large": (int(E.get("LARGE_N", "32")), int(E.get("LARGE_MB", "64")) << 20),
    "small": (int(E.get("SMALL_N", "20000")), int(E.get("SMALL_KB", "100")) << 10),
}
MIB = 1 << 20


def content(name, size):
    # Different in every file and reproducible, so a wrong byte is caught by comparing.
    return random.Random(name).randbytes(size)


def s3(endpoint):
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=E.get("AK", "testkey"), aws_secret_access_key=E.get("SK", "testsecret"))


def names(ds):
    n, _ = SHAPES[ds]
    return ["%s/f%05d" % (ds, i) for i in range(n)]


def prefix_of(ds):
    n, size = SHAPES[ds]
    return "%s-%dx%d" % (ds, n, size)


def setup(ds):
    """Uploads the dataset once (kept between runs) and writes its local-disk copy."""
    n, size = SHAPES[ds]
    client = s3(E["SETUP_ENDPOINT"])
    try:
        client.create_bucket(Bucket=BUCKET)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass
    prefix = prefix_of(ds)
    listed = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/"):
        listed += len(page.get("Contents", []))
    local = os.path.join(BENCH_DIR, "epochs-local", prefix)
    have_local = os.path.isdir(local) and len(os.listdir(local)) == n

    def one(name):
        data = content(name, size)
        base = name.split("/", 1)[1]
        if listed != n:
            client.put_object(Bucket=BUCKET, Key="%s/%s" % (prefix, base), Body=data)
        if not have_local:
            with open(os.path.join(local, base), "wb") as f:
                f.write(data)

    if listed != n or not have_local:
        os.makedirs(local, exist_ok=True)
        print("setup: %s: %d x %d bytes" % (prefix, n, size), file=sys.stderr)
        with cf.ThreadPoolExecutor(16) as pool:
            list(pool.map(one, names(ds)))
    return prefix, local


def drop_caches():
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def read_tree(root, readers, verify=None):
    """Reads every file under root with `readers` threads; returns (seconds, bytes).
    With verify=DATASET each file's bytes are compared with what setup wrote."""
    files = sorted(os.path.join(root, f) for f in os.listdir(root))
    t = time.perf_counter()

    def one(path):
        n = 0
        with open(path, "rb", buffering=0) as f:
            chunks = []
            while True:
                b = f.read(MIB)
                if not b:
                    break
                n += len(b)
                if verify:
                    chunks.append(b)
        if verify:
            want = content(verify + "/" + os.path.basename(path), n)
            if b"".join(chunks) != want:
                raise SystemExit("wrong bytes in %s" % path)
        return n

    with cf.ThreadPoolExecutor(readers) as pool:
        total = sum(pool.map(one, files))
    return time.perf_counter() - t, total


def peak_rss_mib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def mounted_epochs(ds, prefix, readers, cache_mb):
    mnt = os.path.join(BENCH_DIR, "epochs-mnt")
    cache_dir = os.path.join(BENCH_DIR, "epochs-cache")
    shutil.rmtree(cache_dir, ignore_errors=True)
    os.makedirs(mnt, exist_ok=True)
    opts = "read_cache_size=%d,read_cache_dir=%s" % (cache_mb, cache_dir)
    if E.get("OPTS"):
        opts += "," + E["OPTS"]
    env = dict(os.environ, AWS_ACCESS_KEY_ID=E.get("AK", "testkey"), AWS_SECRET_ACCESS_KEY=E.get("SK", "testsecret"))
    log = open(os.path.join(RESULTS, "s3vol-%s-%d-%d.log" % (prefix, readers, cache_mb)), "w")
    p = subprocess.Popen([E["S3VOL"], "mount", "s3://%s/%s" % (BUCKET, prefix), mnt, "--endpoint", E["ENDPOINT"],
                          "--foreground", "-o", opts], env=env, stdout=log, stderr=log)
    try:
        for _ in range(300):
            if os.path.ismount(mnt):
                break
            time.sleep(0.05)
        else:
            raise SystemExit("s3vol did not mount; see %s" % log.name)
        out = []
        for epoch in (1, 2):
            drop_caches()
            out.append(read_tree(mnt, readers))
        rss = peak_rss_mib(p.pid)
        if readers == 1:
            # Untimed: every byte of a third pass (from the cache when there is one) is right.
            drop_caches()
            read_tree(mnt, 4, verify=ds)
        stats = subprocess.run(["sh", "-c", "du -sb %s 2>/dev/null | cut -f1" % cache_dir], capture_output=True, text=True)
        print("  %s readers=%d cache=%dMiB: cache dir holds %s bytes" % (prefix, readers, cache_mb, stats.stdout.strip() or "0"),
              file=sys.stderr)
        return out, rss
    finally:
        subprocess.run(["umount", mnt], check=False)
        p.wait(timeout=60)


def main():
    os.makedirs(RESULTS, exist_ok=True)
    cache_mb = int(E.get("CACHE_MB", "8192"))
    rows = []
    header = ["dataset", "readers", "local_MBps", "nocache_e1_MBps", "nocache_e2_MBps", "cache_e1_MBps",
              "cache_e2_MBps", "e2_over_e1", "e2_over_local", "rss_nocache_MiB", "rss_cache_MiB"]
    print("\t".join(header))
    for ds in E.get("DATASETS", "large small").split():
        prefix, local = setup(ds)
        for readers in [int(r) for r in E.get("READERS", "1 4").split()]:
            drop_caches()
            secs, total = read_tree(local, readers)
            local_mbps = total / MIB / secs
            (n1, n2), rss0 = mounted_epochs(ds, prefix, readers, 0)
            (c1, c2), rss1 = mounted_epochs(ds, prefix, readers, cache_mb)
            mbps = lambda r: r[1] / MIB / r[0]
            row = [ds, readers, local_mbps, mbps(n1), mbps(n2), mbps(c1), mbps(c2),
                   mbps(c2) / mbps(c1), mbps(c2) / local_mbps, rss0, rss1]
            rows.append(row)
            print("\t".join(x if isinstance(x, str) else ("%.2f" % x if isinstance(x, float) else str(x)) for x in row),
                  flush=True)
    with open(os.path.join(RESULTS, "epochs.tsv"), "w") as f:
        f.write("\t".join(header) + "\n")
        for row in rows:
            f.write("\t".join(str(x) for x in row) + "\n")


if __name__ == "__main__":
    main()
