"""PyTorch peer of `kindling bench attention`. On the CPU, attention as PyTorch 1.13 users write it (it has no fused
attention there): scores = scale·QKᵀ, causal mask, softmax, ·V, with autograd for the backward. With `--device cuda`,
torch.nn.functional.scaled_dot_product_attention, restricted to its flash backend in bf16 (`--dtype bf16`), each timed
run waiting for the GPU to finish. Same shapes, threads and timing rule (one warm-up run, then --reps timed runs).
Prints the same JSON fields as the Kindling bench (naive_* and memory fields are null: the peer is one implementation
and does not count its bytes).
"""
import argparse
import contextlib
import math
import sys

import timing


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seq", type=int, default=4096)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--causal", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=3)
    timing.add_device_args(p)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    import torch
    device, dtype = timing.open_device(torch, p, a)
    timing.set_threads(torch, a.threads)
    g = torch.Generator().manual_seed(7)
    shape = (a.batch, a.heads, a.seq, a.head_dim)
    q, k, v, dout = ((torch.rand(shape, generator=g) * 2 - 1).to(device, dtype) for _ in range(4))
    q.requires_grad_(True)
    k.requires_grad_(True)
    v.requires_grad_(True)
    scale = 1.0 / math.sqrt(a.head_dim)
    if device.type == "cuda":
        from torch.nn.attention import SDPBackend, sdpa_kernel
        # Flash takes only 16-bit operands; in fp32 PyTorch picks its own backend.
        flash = dtype == torch.bfloat16
        backend = (lambda: sdpa_kernel(SDPBackend.FLASH_ATTENTION)) if flash else contextlib.nullcontext
        method = "SDPA flash" if flash else "SDPA"

        def forward():
            with backend():
                return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=a.causal, scale=scale)
    else:
        mask = torch.ones(a.seq, a.seq, dtype=torch.bool).triu(1) if a.causal else None
        method = "materialized scores, autograd"

        def forward():
            s = (q @ k.transpose(-2, -1)) * scale
            if mask is not None:
                s = s.masked_fill(mask, float("-inf"))
            return s.softmax(dim=-1) @ v

    def fwd():
        with torch.no_grad():
            forward()

    def fwd_bwd():
        forward().backward(dout)

    f_best, f_median, _ = timing.measure(1, a.reps, 0, timing.synced(torch, device, fwd))
    fb_best, fb_median, _ = timing.measure(1, a.reps, 0, timing.synced(torch, device, fwd_bwd))
    flops_fwd = 4.0 * a.batch * a.heads * a.seq * a.seq * a.head_dim / (2 if a.causal else 1)
    gflops = 3.5 * flops_fwd / fb_best / 1e9
    impl = timing.impl_name(torch, device, a.dtype)
    print(f"  {impl} ({method}): fwd {1e3 * f_best:.1f} ({1e3 * f_median:.1f}) ms, "
          f"fwd+bwd {1e3 * fb_best:.1f} ({1e3 * fb_median:.1f}) ms, {a.threads} threads", file=sys.stderr)
    timing.emit({"bench": "attention", "seq": a.seq, "heads": a.heads, "head_dim": a.head_dim, "causal": a.causal,
                 "fwd_ms": round(1e3 * f_best, 2), "fwd_bwd_ms": round(1e3 * fb_best, 2), "naive_fwd_ms": None,
                 "naive_fwd_bwd_ms": None, "gflops_fwd_bwd": round(gflops, 2), "extra_bytes": None,
                 "naive_extra_bytes": None, "fwd_median_ms": round(1e3 * f_median, 2),
                 "fwd_bwd_median_ms": round(1e3 * fb_median, 2), "naive_fwd_median_ms": None,
                 "naive_fwd_bwd_median_ms": None, "impl": impl}, a.json)


if __name__ == "__main__":
    main()
