#!/usr/bin/env python3
"""The benchmark's direct S3 client (boto3): sets up the test objects, measures what a
plain client reaches (the reference for the FUSE clients), and tells when written data
is visible in the store.

  s3.py setup SRC_FILE LS_N        bucket, the big object (SRC_FILE), LS_N 100-byte objects
  s3.py direct SRC_FILE            multipart PUT and ranged GET throughput, medians of 3
  s3.py wait-size KEY BYTES T      seconds until KEY has BYTES bytes (T: give up)
  s3.py wait-count PREFIX N T      seconds until N keys start with PREFIX; prints "S COUNT"
  s3.py md5 KEY                    md5 of an object
  s3.py rm-prefix PREFIX           deletes every key under PREFIX

Env: ENDPOINT (http://127.0.0.1:9000), AK, SK, BUCKET (bench).
"""

import hashlib
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

MIB = 1 << 20
PART = 16 * MIB
THREADS = 8
BUCKET = os.environ.get("BUCKET", "bench")


def client():
    return boto3.client(
        "s3",
        endpoint_url=os.environ.get("ENDPOINT", "http://127.0.0.1:9000"),
        aws_access_key_id=os.environ.get("AK", "testkey"),
        aws_secret_access_key=os.environ.get("SK", "testsecret"),
        region_name="us-east-1",
        config=Config(max_pool_connections=32, s3={"addressing_style": "path"}, retries={"max_attempts": 5}),
    )


def big_key(src):
    return "big-%dm.bin" % (os.path.getsize(src) // MIB)


def setup(src, ls_n):
    s3 = client()
    try:
        s3.create_bucket(Bucket=BUCKET)
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
    except s3.exceptions.ClientError as e:
        if "BucketAlreadyExists" not in str(e):
            raise
    key = big_key(src)
    size = os.path.getsize(src)
    try:
        have = s3.head_object(Bucket=BUCKET, Key=key)["ContentLength"]
    except s3.exceptions.ClientError:
        have = -1
    if have != size:
        s3.upload_file(src, BUCKET, key, Config=TransferConfig(multipart_chunksize=PART, max_concurrency=THREADS))
    names = ["lsf%06d" % i for i in range(ls_n)]
    existing = set()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="lsf"):
        existing.update(o["Key"] for o in page.get("Contents", []))
    body = b"x" * 100
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(lambda n: s3.put_object(Bucket=BUCKET, Key=n, Body=body), [n for n in names if n not in existing]))
    print(key)


def direct(src):
    s3 = client()
    size = os.path.getsize(src)
    key = "direct-probe.bin"
    cfg = TransferConfig(multipart_threshold=PART, multipart_chunksize=PART, max_concurrency=THREADS)
    puts, gets = [], []
    for _ in range(3):
        t = time.perf_counter()
        s3.upload_file(src, BUCKET, key, Config=cfg)
        puts.append(size / MIB / (time.perf_counter() - t))

        def ranged(start):
            end = min(start + PART, size) - 1
            return len(s3.get_object(Bucket=BUCKET, Key=key, Range="bytes=%d-%d" % (start, end))["Body"].read())

        t = time.perf_counter()
        with ThreadPoolExecutor(THREADS) as pool:
            got = sum(pool.map(ranged, range(0, size, PART)))
        gets.append(got / MIB / (time.perf_counter() - t))
    s3.delete_object(Bucket=BUCKET, Key=key)
    print("PUT multipart (%d MiB parts, %d threads): median %.1f MiB/s" % (PART // MIB, THREADS, statistics.median(puts)))
    print("GET ranged (%d MiB ranges, %d threads): median %.1f MiB/s" % (PART // MIB, THREADS, statistics.median(gets)))


def wait_size(key, want, limit):
    s3, t = client(), time.perf_counter()
    while time.perf_counter() - t < limit:
        try:
            if s3.head_object(Bucket=BUCKET, Key=key)["ContentLength"] == want:
                break
        except s3.exceptions.ClientError:
            pass
        time.sleep(0.02)
    print("%.3f" % (time.perf_counter() - t))


def count(s3, prefix):
    n = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        n += len(page.get("Contents", []))
    return n


def wait_count(prefix, want, limit):
    s3, t = client(), time.perf_counter()
    n = count(s3, prefix)
    while n < want and time.perf_counter() - t < limit:
        time.sleep(0.05)
        n = count(s3, prefix)
    print("%.3f %d" % (time.perf_counter() - t, n))


def md5(key):
    h = hashlib.md5()
    for chunk in client().get_object(Bucket=BUCKET, Key=key)["Body"].iter_chunks(MIB):
        h.update(chunk)
    print(h.hexdigest())


def rm_prefix(prefix):
    s3 = client()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=BUCKET, Delete={"Objects": keys})


def main(argv):
    cmds = {
        "setup": lambda a: setup(a[0], int(a[1])),
        "direct": lambda a: direct(a[0]),
        "wait-size": lambda a: wait_size(a[0], int(a[1]), float(a[2])),
        "wait-count": lambda a: wait_count(a[0], int(a[1]), float(a[2])),
        "md5": lambda a: md5(a[0]),
        "rm-prefix": lambda a: rm_prefix(a[0]),
    }
    if len(argv) < 2 or argv[1] not in cmds:
        sys.exit(__doc__)
    cmds[argv[1]](argv[2:])


if __name__ == "__main__":
    main(sys.argv)
