"""The peer's load generator, a process of its own: defers jobs when told, from many threads."""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Sequence

from bench.peer_app import app, defer_kwargs, summarize

READY = "ready"
GO = "go"
DEFERRED = "deferred"


def defer_all(queue: str, jobs: int, threads: int) -> int:
    """Defer `jobs` jobs on `queue` from `threads` threads, each on a pooled connection."""
    task = summarize.configure(queue=queue)
    counts = [0] * threads

    def defer_share(thread: int) -> None:
        for index in range(thread, jobs, threads):
            task.defer(**defer_kwargs(index))
            counts[thread] += 1

    workers = [threading.Thread(target=defer_share, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(counts)


def main(argv: Sequence[str] | None = None) -> int:
    """Warm up, say `ready`, defer on `go`, say `deferred N`, exit when stdin closes."""
    parser = argparse.ArgumentParser(prog="python -m bench.peer_defer", description=__doc__)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--jobs", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--warm-up-queue", required=True)
    parser.add_argument("--warm-up-jobs", type=int, default=8)
    args = parser.parse_args(argv)
    with app.open():
        # The pool and the defer path are warm before the bench starts counting CPU.
        defer_all(args.warm_up_queue, args.warm_up_jobs, 1)
        print(READY, flush=True)
        if sys.stdin.readline().strip() != GO:
            return 1
        print(DEFERRED, defer_all(args.queue, args.jobs, args.threads), flush=True)
        # Still alive while the bench reads this process's CPU time.
        sys.stdin.read()
    return 0


if __name__ == "__main__":
    sys.exit(main())
