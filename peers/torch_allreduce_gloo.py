"""PyTorch peer of `kindling bench allreduce`: torch.distributed all_reduce (SUM) with the Gloo backend between
--workers processes over loopback TCP (127.0.0.1), on the same fp32 inputs, with the same check of every sum
and the same timing rule (one warm-up, then --reps timed all-reduces: best and median; a run lasts from a
barrier until the slowest rank is done). Prints the same JSON fields as the Kindling bench (memcpy_gbps null).
"""
import argparse
import socket
import sys
import time

import timing


def inputs(torch, rank, n):
    return (torch.arange(n) % 7).float() + (rank + 1)


def expected(torch, world, n):
    return (torch.arange(n) % 7).float() * world + world * (world + 1) / 2


def worker(rank, world, port, n, reps, results):
    import torch
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=__import__("datetime").timedelta(seconds=120))
    x = torch.empty(n)
    want = expected(torch, world, n)
    spans = []

    def before():
        x.copy_(inputs(torch, rank, n))
        dist.barrier()

    def run():
        dist.all_reduce(x)
        # The run ends when every rank is done: the slowest rank's time is the all-reduce's.
        dist.barrier()

    def after():
        if not torch.equal(x, want):
            bad = (x != want).nonzero()[0].item()
            raise SystemExit(f"the Gloo all-reduce is wrong: rank {rank} holds {x[bad].item()} at element {bad}, "
                             f"the sum is {want[bad].item()}")

    best, median, count = timing.measure(1, reps, 0, timing.Trial(run, before, after))
    if rank == 0:
        results.put((best, median, count))
    dist.destroy_process_group()


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--mb", type=int, default=64)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    if a.workers < 2:
        p.error(f"--workers must be at least 2, got {a.workers}")
    import torch
    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    n = a.mb * (1 << 20) // 4
    ctx = mp.get_context("spawn")
    results = ctx.SimpleQueue()
    procs = [ctx.Process(target=worker, args=(r, a.workers, port, n, a.reps, results)) for r in range(a.workers)]
    for pr in procs:
        pr.start()
    deadline = time.monotonic() + 1800
    for pr in procs:
        pr.join(max(1.0, deadline - time.monotonic()))
    failed = [pr for pr in procs if pr.exitcode != 0]
    if failed:
        for pr in procs:
            if pr.is_alive():
                pr.kill()
        sys.exit(f"Gloo all-reduce failed: exit codes {[pr.exitcode for pr in procs]}")
    best, median, count = results.get()
    nbytes = n * 4
    gbps = nbytes / best / 1e9
    busbw = gbps * 2 * (a.workers - 1) / a.workers
    impl = "torch " + torch.__version__ + " gloo"
    print(f"  {impl}: all-reduce of {a.mb} MiB over {a.workers} processes, sums checked: best {best:.3f} s "
          f"(median {median:.3f}) of {count} runs: algbw {gbps:.2f} GB/s, busbw {busbw:.2f} GB/s", file=sys.stderr)
    timing.emit({"bench": "allreduce", "workers": a.workers, "mb": a.mb, "gbps": round(gbps, 2), "memcpy_gbps": None,
                 "busbw_gbps": round(busbw, 2), "median_gbps": round(nbytes / median / 1e9, 2), "impl": impl}, a.json)


if __name__ == "__main__":
    main()
