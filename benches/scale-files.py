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
  scale-files.py probe ROOT K DIR...
      In each ROOT/DIR (which holds however many entries it holds): K creates of new files, K
      lookups of names that do not exist, K stats of existing files not touched for over a
      second (so the kernel's 1 s attribute cache cannot answer), K removes, each operation
      alternating between the directories every 100 files; prints "DIR OP us_per_op U".
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


def probe(root, k, dirs):
    """Each operation alternates between the directories every CHUNK files, so that load from
    elsewhere, which moves by the minute on a shared machine, falls on all of them alike."""
    chunk = 100
    paths = [os.path.join(root, d) for d in dirs]
    picks = {}
    random.seed(1)
    for p in paths:
        existing = [e.name for e in os.scandir(p) if not e.name.startswith("probe")]
        picks[p] = random.sample(existing, min(k, len(existing)))
    # Past the kernel's 1 s entry and attribute cache (the scandir above may fill it): a
    # stat is a LOOKUP the daemon answers.
    time.sleep(2.5)
    names = ["probe%06d" % i for i in range(k)]

    def create(p, n):
        write_file(os.path.join(p, n))

    def lookup(p, n):
        try:
            os.stat(os.path.join(p, "missing-" + n))
        except FileNotFoundError:
            pass

    def remove(p, n):
        os.unlink(os.path.join(p, n))

    ops = [
        ("create", create, lambda p: names),
        ("lookup", lookup, lambda p: names),
        ("stat", lambda p, n: os.stat(os.path.join(p, n)), lambda p: picks[p]),
        ("remove", remove, lambda p: names),
    ]
    for op, call, items in ops:
        spent = {p: 0.0 for p in paths}
        done = {p: 0 for p in paths}
        for start in range(0, k, chunk):
            for p in paths:
                batch = items(p)[start : start + chunk]
                t = time.monotonic()
                for n in batch:
                    call(p, n)
                spent[p] += time.monotonic() - t
                done[p] += len(batch)
        for d, p in zip(dirs, paths):
            print("%s %s us_per_op %.0f" % (d, op, spent[p] * 1e6 / max(done[p], 1)))


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
        probe(a[0], int(a[1]), a[2:])
    elif cmd == "list":
        list_dir(a[0])
    elif cmd == "stat":
        stat_all(a[0], int(a[1]))
    else:
        sys.exit("unknown command " + cmd)


if __name__ == "__main__":
    main()
