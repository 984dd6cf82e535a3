"""PyTorch peer of `kindling bench train`: the same GPT trained on random tokens, on the CPU or (`--device cuda`) a GPU.

The model is Kindling's layout: learned position embeddings, pre-LayerNorm blocks with biases
(causal multi-head attention, tanh-GELU MLP), final LayerNorm, head tied to the token embedding;
AdamW (decay 0.1 on matrices only), global-norm clipping at 1.0, lr 1e-4. Attention is written out
(scores, mask, softmax) because PyTorch 1.13 has no fused attention on CPU. One process on --threads
intra-op threads, B sequences of T tokens per step. Each step is one timed run of the shared timing
rule (--warmup untimed steps, then --steps timed); tokens/s and ms/step come from the median step,
the forward/backward/optimizer split is the mean over the timed steps. Prints the same JSON fields
as the Kindling bench. On a GPU it is PyTorch eager as its users train: attention by scaled_dot_product_attention,
and with `--dtype bf16` the forward pass under autocast to bf16 (fp32 weights and optimizer state); each split point
waits for the GPU, so the split adds up to the step.
"""
import argparse
import contextlib
import math
import sys
import time

import timing


def build(torch, vocab, d_model, layers, heads, max_seq, mlp_ratio, sdpa):
    nn = torch.nn
    F = torch.nn.functional

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1 = nn.LayerNorm(d_model, eps=1e-5)
            self.qkv = nn.Linear(d_model, 3 * d_model)
            self.proj = nn.Linear(d_model, d_model)
            self.ln2 = nn.LayerNorm(d_model, eps=1e-5)
            self.fc = nn.Linear(d_model, mlp_ratio * d_model)
            self.fc_proj = nn.Linear(mlp_ratio * d_model, d_model)

        def forward(self, x, mask):
            b, t, c = x.shape
            q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
            q, k, v = (z.view(b, t, heads, c // heads).transpose(1, 2) for z in (q, k, v))
            if sdpa:
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:
                att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(c // heads))
                att = att.masked_fill(mask[:t, :t], float("-inf")).softmax(dim=-1)
                y = att @ v
            y = y.transpose(1, 2).contiguous().view(b, t, c)
            x = x + self.proj(y)
            return x + self.fc_proj(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))

    class Gpt(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(vocab, d_model)
            self.wpe = nn.Embedding(max_seq, d_model)
            self.blocks = nn.ModuleList(Block() for _ in range(layers))
            self.ln_f = nn.LayerNorm(d_model, eps=1e-5)
            self.register_buffer("mask", torch.ones(max_seq, max_seq, dtype=torch.bool).triu(1), persistent=False)
            for p in self.parameters():
                if p.dim() > 1:
                    nn.init.normal_(p, std=0.02)

        def forward(self, idx, targets):
            t = idx.shape[1]
            x = self.wte(idx) + self.wpe(torch.arange(t, device=idx.device))
            for blk in self.blocks:
                x = blk(x, self.mask)
            logits = self.ln_f(x) @ self.wte.weight.t()
            return F.cross_entropy(logits.view(-1, vocab), targets.view(-1))

    return Gpt()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=256)
    p.add_argument("--max-seq", type=int, default=None, help="position embeddings (default: --seq)")
    p.add_argument("--mlp-ratio", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    timing.add_device_args(p)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    if a.d_model % a.heads != 0:
        p.error(f"--d-model {a.d_model} is not a multiple of --heads {a.heads}")
    max_seq = a.max_seq or a.seq
    if a.seq > max_seq:
        p.error(f"--seq {a.seq} exceeds --max-seq {max_seq}")
    import torch
    device, dtype = timing.open_device(torch, p, a)
    timing.set_threads(torch, a.threads)
    torch.manual_seed(1)
    model = build(torch, a.vocab, a.d_model, a.layers, a.heads, max_seq, a.mlp_ratio, sdpa=device.type == "cuda").to(device)
    # Entered only for bf16: PyTorch 1.13 refuses even a disabled CPU autocast with fp32.
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype != torch.float32 else contextlib.nullcontext
    sync = timing.synced(torch, device, lambda: None)
    params = sum(p.numel() for p in model.parameters())
    decay = [p for p in model.parameters() if p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.dim() <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-4, betas=(0.9, 0.95), eps=1e-8)
    gen = torch.Generator().manual_seed(7)
    batch = {}
    split = {"fwd": 0.0, "bwd": 0.0, "opt": 0.0}
    last = {}

    def fresh_batch():
        tokens = torch.randint(a.vocab, (a.batch, a.seq + 1), generator=gen)
        batch["x"], batch["y"] = tokens[:, :-1].contiguous().to(device), tokens[:, 1:].contiguous().to(device)

    def step():
        t0 = time.perf_counter()
        with autocast():
            loss = model(batch["x"], batch["y"])
        sync()
        t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sync()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sync()
        t3 = time.perf_counter()
        last.update(fwd=t1 - t0, bwd=t2 - t1, opt=t3 - t2, loss=loss.item())

    def count():
        for key in split:
            split[key] += last[key]

    best, median, steps = timing.measure(a.warmup, a.steps, 0, timing.Trial(step, before=fresh_batch, after=count),
                                         warm=timing.Trial(step, before=fresh_batch))
    tokens = a.batch * a.seq
    ms = {k: 1e3 * v / steps for k, v in split.items()}
    impl = timing.impl_name(torch, device, a.dtype)
    print(f"  {impl}: {params:,} params, {a.threads} thread(s): {tokens / median:.0f} tokens/s, {1e3 * median:.1f} ms/step "
          f"(forward {ms['fwd']:.1f}, backward {ms['bwd']:.1f}, optimizer {ms['opt']:.1f}); last loss {last['loss']:.3f}",
          file=sys.stderr)
    timing.emit({"bench": "train", "params": params, "seq": a.seq, "batch": a.batch,
                 "tokens_per_s": round(tokens / median, 2), "ms_per_step": round(1e3 * median, 2),
                 "fwd_ms": round(ms["fwd"], 2), "bwd_ms": round(ms["bwd"], 2), "opt_ms": round(ms["opt"], 2),
                 # A GPT-2-shaped model has no experts: a token uses every parameter.
                 "impl": impl, "active_params": params,
                 # PyTorch tracks the high-water mark of its allocator on a GPU only; on the CPU there is none to report.
                 "peak_mb": round(torch.cuda.max_memory_allocated(device) / 1e6, 2) if device.type == "cuda" else None}, a.json)


if __name__ == "__main__":
    main()
