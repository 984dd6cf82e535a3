"""PyTorch peer of `kindling bench gemm`: C[M,N] = A[M,K] @ B[K,N], same threads and timing rule.

fp32 on the CPU by default; `--device cuda --dtype bf16` is torch.matmul in bf16 (cuBLAS), each timed run waiting
for the GPU to finish.

Prints the same JSON fields as the Kindling bench (naive_* are null: the peer has no plain loop).
"""
import argparse
import sys

import timing


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--m", type=int, default=1024)
    p.add_argument("--n", type=int, default=1024)
    p.add_argument("--k", type=int, default=1024)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seconds", type=float, default=2.0)
    timing.add_device_args(p)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    import torch
    device, dtype = timing.open_device(torch, p, a)
    timing.set_threads(torch, a.threads)
    g = torch.Generator().manual_seed(42)
    x = (torch.rand(a.m, a.k, generator=g) * 2 - 1).to(device, dtype)
    y = (torch.rand(a.k, a.n, generator=g) * 2 - 1).to(device, dtype)
    out = torch.empty(a.m, a.n, device=device, dtype=dtype)
    best, median, reps = timing.measure(2, 3, a.seconds, timing.synced(torch, device, lambda: torch.matmul(x, y, out=out)))
    flops = 2.0 * a.m * a.n * a.k
    impl = timing.impl_name(torch, device, a.dtype)
    print(f"  {impl}: {flops / best / 1e9:.2f} ({flops / median / 1e9:.2f}) GFLOP/s over {reps} runs, {a.threads} threads",
          file=sys.stderr)
    timing.emit({"bench": "gemm", "m": a.m, "n": a.n, "k": a.k, "threads": a.threads,
                 "gflops": round(flops / best / 1e9, 2), "naive_gflops": None, "impl": impl,
                 "median_gflops": round(flops / median / 1e9, 2), "naive_median_gflops": None,
                 "max_rel_error": None}, a.json)


if __name__ == "__main__":
    main()
