"""Bucket side of benches/files.sh, with boto3 straight against the S3 endpoint.

  wait PREFIX MANIFEST LIMIT_SECS  -- returns once every file of MANIFEST ("path size" lines) is
                                      an object PREFIX/path of that size; exit 1 at LIMIT_SECS
  count PREFIX                     -- prints how many objects and bytes are under PREFIX

Endpoint, keys and bucket come from EP, AK, SK, BUCKET. One process polls, so interpreter
start-up is paid once, and every tool is checked by the same listing.
"""
import os
import sys
import time

import boto3
from botocore.config import Config

s3 = boto3.client(
    "s3",
    endpoint_url=os.environ["EP"],
    region_name="garage",
    aws_access_key_id=os.environ["AK"],
    aws_secret_access_key=os.environ["SK"],
    config=Config(s3={"addressing_style": "path"}),
)
bucket = os.environ["BUCKET"]


def listing(prefix):
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for o in page.get("Contents", []):
            out[o["Key"][len(prefix):]] = o["Size"]
    return out


def main():
    cmd, prefix = sys.argv[1], sys.argv[2].rstrip("/") + "/"
    if cmd == "count":
        have = listing(prefix)
        print(len(have), sum(have.values()))
        return 0
    want = {}
    with open(sys.argv[3]) as f:
        for line in f:
            path, size = line.split()
            want[path] = int(size)
    deadline = time.monotonic() + float(sys.argv[4])
    while True:
        have = listing(prefix)
        missing = [p for p, s in want.items() if have.get(p) != s]
        if not missing:
            return 0
        if time.monotonic() > deadline:
            print(f"{len(missing)} of {len(want)} objects missing or short under {prefix}, "
                  f"e.g. {missing[0]}", file=sys.stderr)
            return 1
        time.sleep(0.2)


sys.exit(main())
