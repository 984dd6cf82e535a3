"""The timing rule of Kindling's benches (org.kindling.cli.Timing), for the Python peers.

`warmup` untimed runs, then timed runs until there are at least `min_reps` of them and at least
`seconds` of timed work; the result is the best and the median run in seconds. Only a trial's
`run` is timed; its `before` (fresh state) and `after` (checks) are not. The warm-up may use
another trial than the timed runs (e.g. other input).
"""
import json
import time


class Trial:
    def __init__(self, run, before=None, after=None):
        self.run = run
        self.before = before or (lambda: None)
        self.after = after or (lambda: None)


def stats(samples):
    """(best, median, reps) of run times in seconds."""
    if not samples:
        raise ValueError("no timed runs")
    s = sorted(samples)
    mid = len(s) // 2
    median = s[mid] if len(s) % 2 == 1 else (s[mid - 1] + s[mid]) / 2
    return s[0], median, len(s)


def measure(warmup, min_reps, seconds, timed, warm=None):
    if not isinstance(timed, Trial):
        timed = Trial(timed)
    warm = warm or timed
    for _ in range(warmup):
        warm.before()
        warm.run()
        warm.after()
    samples = []
    total = 0.0
    while len(samples) < min_reps or total < seconds:
        timed.before()
        t0 = time.perf_counter()
        timed.run()
        s = time.perf_counter() - t0
        timed.after()
        samples.append(s)
        total += s
    return stats(samples)


def set_threads(torch, threads):
    """Intra-op threads as Kindling's --threads; one inter-op thread, as Kindling runs one op at a time."""
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)


def emit(row, as_json):
    """The result row: one JSON line on stdout with --json (human-readable lines go to stderr)."""
    if as_json:
        print(json.dumps(row), flush=True)


def add_device_args(parser):
    """--device cpu|cuda[:N] and --dtype fp32|bf16: where and in what precision a peer runs (CPU fp32 by default)."""
    parser.add_argument("--device", default="cpu", help="cpu, or cuda[:N] (default cpu)")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="operand precision (default fp32)")


def open_device(torch, parser, a):
    """The torch.device and dtype of --device/--dtype, checked; a usage error names a device this PyTorch cannot use."""
    try:
        device = torch.device(a.device)
    except RuntimeError as e:
        parser.error(f"--device {a.device}: {e}")
    if device.type not in ("cpu", "cuda"):
        parser.error(f"--device must be cpu or cuda[:N], got {a.device}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {a.device}: this PyTorch ({torch.__version__}) sees no CUDA device")
    return device, {"fp32": torch.float32, "bf16": torch.bfloat16}[a.dtype]


def synced(torch, device, fn):
    """fn, then a wait for the device's queued work: the timing rule reads a host clock, and CUDA runs asynchronously."""
    if device.type != "cuda":
        return fn

    def run():
        fn()
        torch.cuda.synchronize(device)
    return run


def impl_name(torch, device, dtype_name):
    """`torch VERSION`, plus the device and precision when not the CPU in fp32 (the CPU rows stay as they were)."""
    name = "torch " + torch.__version__
    return name if device.type == "cpu" and dtype_name == "fp32" else f"{name} {device.type} {dtype_name}"
