#!/usr/bin/env python3
"""The share side of benches/scale.sh: POSIX calls on tidegate's FUSE mount (every one goes
through the gateway: the kernel's FUSE module forwards LOOKUP, CREATE, WRITE, FLUSH, GETATTR,
UNLINK, RENAME and READDIR to the daemon).

  scale-files.py create ROOT DIR COUNT WRITERS [START]
      COUNT files ROOT/DIR/fNNNNNNN (16 bytes each, written and closed: the close is a FUSE
      FLUSH, which tidegate treats as a COMMIT) by WRITERS processes in parallel; prints
      "seconds S" and, per tenth of the count, "tenth I entries N ms_per_file M".
  scale-files.py spread ROOT PREFIX DIRS COUNT WRITERS
      COUNT files spread evenly over DIRS directories ROOT/PREFIXdddd (created first).
  scale-files.py probe ROOT DIR K
      In ROOT/DIR (which holds however many entries it holds): K creates of new files, K
      lookups of names that do not exist, K stats of existing files not touched for over a
      second (so the kernel's 1 s attribute cache cannot answer), K removes; prints
      "OP us_per_op U" for each.
  scale-files.py list DIR
      Lists DIR with os.scandir (getdents through FUSE); prints "names N unique U".
  scale-files.py stat ROOT WRITERS
      Walks ROOT and stats every file, WRITERS processes in parallel over the top-level
      directories; prints "stats N".
"""
import os
import random
import sys
import time
from multiprocessing import Pool

DATA = b"tidegate scale\n\n"  # 16 bytes


def write_file(path):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, DATA)
    finally:
        os.close(fd)


def create_range(args):
    """Creates files [lo, hi) of DIR; returns the time each tenth of the range ended."""
    d, lo, hi = args
    for i in range(lo, hi):
        write_file(os.path.join(d, "f%07d" % i))
    return hi - lo


def create(root, d, count, writers, start=0):
    path = os.path.join(root, d)
    os.makedirs(path, exist_ok=True)
    tenth = max(1, count // 10)
    t0 = time.monotonic()
    done = 0
    with Pool(writers) as pool:
        # Each tenth is split among the writers; the tenth's time shows whether a create
        # costs more as the directory grows.
        while done < count:
            n = min(tenth, count - done)
            step = -(-n // writers)
            jobs = [
                (path, start + done + lo, start + done + min(n, lo + step))
                for lo in range(0, n, step)
            ]
            t = time.monotonic()
            pool.map(create_range, jobs)
            done += n
            ms = (time.monotonic() - t) * 1000 / n
            print("tenth %d entries %d ms_per_file %.3f" % (done // tenth, done, ms), flush=True)
    print("seconds %.2f" % (time.monotonic() - t0))


def spread(root, prefix, dirs, count, writers):
    per = count // dirs
    extra = count % dirs
    jobs = []
    for i in range(dirs):
        d = os.path.join(root, "%s%04d" % (prefix, i))
        os.makedirs(d, exist_ok=True)
        jobs.append((d, 0, per + (1 if i < extra else 0)))
    t0 = time.monotonic()
    with Pool(writers) as pool:
        made = sum(pool.imap_unordered(create_range, jobs))
    print("files %d seconds %.2f" % (made, time.monotonic() - t0))


def probe(root, d, k):
    path = os.path.join(root, d)
    existing = [e.name for e in os.scandir(path) if not e.name.startswith("probe")]
    # Past the kernel's 1 s entry and attribute cache (the scandir above may fill it): a
    # stat is a LOOKUP the daemon answers.
    time.sleep(2.5)
    random.seed(1)
    picks = random.sample(existing, min(k, len(existing)))
    names = ["probe%06d" % i for i in range(k)]
    out = []
    t = time.monotonic()
    for n in names:
        write_file(os.path.join(path, n))
    out.append(("create", time.monotonic() - t, k))
    t = time.monotonic()
    for n in names:
        try:
            os.stat(os.path.join(path, "missing-" + n))
        except FileNotFoundError:
            pass
    out.append(("lookup", time.monotonic() - t, k))
    t = time.monotonic()
    for n in picks:
        os.stat(os.path.join(path, n))
    out.append(("stat", time.monotonic() - t, len(picks)))
    t = time.monotonic()
    for n in names:
        os.unlink(os.path.join(path, n))
    out.append(("remove", time.monotonic() - t, k))
    for op, s, n in out:
        print("%s us_per_op %.0f" % (op, s * 1e6 / max(n, 1)))


def list_dir(d):
    names = [e.name for e in os.scandir(d)]
    print("names %d\nunique %d" % (len(names), len(set(names))))


def stat_dir(d):
    n = 0
    for e in os.scandir(d):
        os.stat(e.path)
        n += 1
    return n


def stat_all(root, writers):
    dirs = [e.path for e in os.scandir(root) if e.is_dir()]
    with Pool(writers) as pool:
        n = sum(pool.imap_unordered(stat_dir, dirs))
    print("stats %d" % n)


def main():
    cmd = sys.argv[1]
    a = sys.argv[2:]
    if cmd == "create":
        create(a[0], a[1], int(a[2]), int(a[3]), int(a[4]) if len(a) > 4 else 0)
    elif cmd == "spread":
        spread(a[0], a[1], int(a[2]), int(a[3]), int(a[4]))
    elif cmd == "probe":
        probe(a[0], a[1], int(a[2]))
    elif cmd == "list":
        list_dir(a[0])
    elif cmd == "stat":
        stat_all(a[0], int(a[1]))
    else:
        sys.exit("unknown command " + cmd)


if __name__ == "__main__":
    main()
