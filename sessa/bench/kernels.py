"""Kernel benchmarks: the feedback solve (triton / chunked / reference) and a full SessaLayer against causal
SDPA attention with 16 heads of 64 at the same (B, T), all in one process.

Times are medians over repeats of CUDA-event-timed runs after warm-up, with a 256 MiB buffer rewritten
before each run so no input sits in L2 (METHOD.md); on CPU, wall-clock medians. Peak memory is
torch.cuda.max_memory_allocated during forward+backward minus what was allocated before (the inputs).
On CUDA the Triton solve and SDPA are also timed as one forward + backward captured in a CUDA graph and
replayed ("graph ms"): the GPU time of their launches without the host time of issuing them, which bounds
short sequences in eager mode (what ``torch.compile(mode="reduce-overhead")`` or a graphed training step
gets).

    sessa bench --T 1024 4096 16384 --dtype bfloat16 --out bench.json
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F

from sessa.ops.feedback import feedback_solve
from sessa.progress import Progress

GiB = 1024**3


class Timer:
    """Median time (ms) of fn() on the inputs' device, with warm-up and an L2 flush before each run."""

    def __init__(self, device: torch.device, warmup: int, repeats: int):
        self.device, self.warmup, self.repeats = device, warmup, repeats
        self.cuda = device.type == "cuda"
        self.flush = torch.empty(256 * 2**20, dtype=torch.uint8, device=device) if self.cuda else None

    def __call__(self, fn: Callable[[], object], before: Callable[[], object] | None = None) -> float:
        for _ in range(self.warmup):
            if before:
                before()
            fn()
        times = []
        for _ in range(self.repeats):
            if before:
                before()
            if self.cuda:
                self.flush.zero_()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)


def _peak_mib(device: torch.device, fn: Callable[[], object]) -> float | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def measure(timer: Timer, forward: Callable[[], torch.Tensor], leaves: list[torch.Tensor],
            graphed: bool = False) -> dict:
    """fwd / bwd / fwd+bwd median ms and peak MiB of a differentiable forward() over the given leaves;
    graphed (CUDA): also ``graph_ms``, fwd+bwd replayed from a CUDA graph (:func:`graph_ms`)."""
    grad = None

    def clear():
        for x in leaves:
            x.grad = None

    def fwd():
        with torch.no_grad():
            forward()

    def fwd_bwd():
        nonlocal grad
        out = forward()
        if grad is None:
            grad = torch.randn_like(out)
        out.backward(grad)

    fwd_bwd()
    clear()
    holder: dict = {}

    def make_graph():
        clear()
        holder["out"] = forward()

    def bwd():
        holder["out"].backward(grad)

    res = {"fwd_ms": timer(fwd), "fwdbwd_ms": timer(fwd_bwd, before=clear), "bwd_ms": timer(bwd, make_graph)}
    holder.clear()
    clear()
    res["peak_mib"] = _peak_mib(timer.device, fwd_bwd)
    clear()
    if graphed and timer.cuda:
        res["graph_ms"] = graph_ms(timer, fwd_bwd, clear)
    return res


def graph_ms(timer: Timer, fwd_bwd: Callable[[], object], clear: Callable[[], object]) -> float:
    """Median ms of fwd_bwd() captured once in a CUDA graph and replayed (:func:`capture_graph`); the
    leaves' gradients live in the graph's memory while it exists."""
    graph = capture_graph(fwd_bwd, warmup=2, before=clear)
    ms = timer(graph.replay)
    del graph
    clear()
    return ms


def capture_graph(fn: Callable[[], object], warmup: int = 2,
                  before: Callable[[], object] | None = None) -> torch.cuda.CUDAGraph:
    """fn() captured in a CUDA graph, after ``warmup`` eager runs on a side stream (as capture requires:
    lazy initialisation and compilation happen outside it); before() runs ahead of every run and of the
    capture."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            if before:
                before()
            fn()
    torch.cuda.current_stream().wait_stream(side)
    if before:
        before()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph


def _feedback_case(backend: str, B: int, T: int, D: int, dtype, device, chunk_size):
    g = torch.Generator(device=device).manual_seed(T)
    q, k, f = (torch.randn(B, T, D, device=device, generator=g).to(dtype) for _ in range(3))
    gamma = (0.999 * torch.tanh(2 + torch.rand(B, T, 1, device=device, generator=g))).to(dtype)
    leaves = [x.requires_grad_() for x in (q, k, gamma, f)]
    return (lambda: feedback_solve(*leaves, backend=backend, chunk_size=chunk_size)), leaves


def _sdpa_case(B: int, T: int, dtype, device, heads: int = 16, hd: int = 64):
    q, k, v = (torch.randn(B, heads, T, hd, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
    return (lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)), [q, k, v]


def _layer_case(backend: str, B: int, T: int, D: int, dtype, device):
    from sessa.layer import SessaLayer

    heads = D // 64 if D % 64 == 0 else 1  # 16 heads of 64 at D = 1024, like the SDPA baseline
    layer = SessaLayer(D, n_heads=heads, feedback_backend=backend).to(device=device, dtype=dtype)
    x = torch.randn(B, T, D, device=device, dtype=dtype, requires_grad=True)
    return (lambda: layer(x)), [x, *layer.parameters()]


GRAPHED = ("feedback/triton", "sdpa/16x64")  # cases also timed from a CUDA graph


def _run_case(timer, name, make, record, log=print, **meta) -> None:
    try:
        forward, leaves = make()
        res = measure(timer, forward, leaves, graphed=name in GRAPHED)
        del forward, leaves
    except torch.cuda.OutOfMemoryError:
        res = {"error": "oom"}
    if timer.cuda:
        torch.cuda.empty_cache()
    record.append({"name": name, **meta, **res})
    shown = " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in res.items())
    log(f"  {name:22s} B={meta['B']} T={meta['T']:6d}  {shown}")


def _ref_bytes(B: int, T: int) -> float:
    return 6.0 * B * T * T * 4  # logits, softmax, B_fb, I - B_fb, solve workspace, grads: ~6 fp32 T x T


def _cases_for(args, device, dtype, B: int, T: int) -> list[tuple[str, Callable]]:
    """(name, make) for every case measured at one (B, T); make() -> (forward, leaves)."""
    cases = []
    for backend in args.backends:
        if backend == "reference" and _ref_bytes(B, T) > args.ref_max_gib * GiB:
            continue
        if backend == "chunked" and T > args.chunked_max_t:
            continue
        if backend == "triton" and device.type != "cuda":
            continue
        make = partial(_feedback_case, backend, B, T, args.D, dtype, device, args.chunk_size)
        cases.append((f"feedback/{backend}", make))
    if device.type == "cuda" and args.D % 64 == 0:  # D / 64 heads of 64: 16 x 64 at D = 1024
        cases.append(("sdpa/16x64", partial(_sdpa_case, B, T, dtype, device, args.D // 64, 64)))
    if args.layer and T <= args.layer_max_t:
        layer_backend = "triton" if device.type == "cuda" else "chunked"
        make = partial(_layer_case, layer_backend, B, T, args.D, dtype, device)
        cases.append((f"layer/{layer_backend}", make))
    return cases


def run_sweep(args, device, dtype, timer) -> list[dict]:
    record: list[dict] = []
    shapes = [(args.B, T) for T in args.T]
    if args.tokens:  # fixed B * T = tokens
        extra = [(args.tokens // T, T) for T in args.T if T <= args.tokens]
        shapes += [bt for bt in extra if bt not in shapes]
    progress = Progress(len(shapes), "bench")
    for B, T in shapes:
        for name, make in _cases_for(args, device, dtype, B, T):
            _run_case(timer, name, make, record, log=progress.write, B=B, T=T, D=args.D)
        progress.update(1, f"B={B} T={T}")
    progress.close()
    return record


def ratio_table(record: list[dict]) -> list[dict]:
    """Per (B, T): each case's fwd+bwd time over SDPA's and over the dense reference's; where both were
    timed from CUDA graphs, also the graph-replay time over SDPA's."""
    rows = []
    for key in sorted({(r["B"], r["T"]) for r in record}):
        cases = {r["name"]: r for r in record if (r["B"], r["T"]) == key and "fwdbwd_ms" in r}
        sdpa, ref = cases.get("sdpa/16x64"), cases.get("feedback/reference")
        for name, r in cases.items():
            rows.append(
                {
                    "name": name,
                    "B": key[0],
                    "T": key[1],
                    "fwdbwd_ms": r["fwdbwd_ms"],
                    "peak_mib": r["peak_mib"],
                    "vs_sdpa": r["fwdbwd_ms"] / sdpa["fwdbwd_ms"] if sdpa else None,
                    "ref_speedup": ref["fwdbwd_ms"] / r["fwdbwd_ms"] if ref else None,
                    "graph_ms": r.get("graph_ms"),
                    "graph_vs_sdpa": _ratio(r.get("graph_ms"), sdpa.get("graph_ms") if sdpa else None),
                }
            )
    return rows


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def _fmt(v: float | None, width: int, digits: int) -> str:
    return f"{v:{width}.{digits}f}" if v is not None else "-".rjust(width)


@dataclass
class BenchConfig:
    """What ``sessa bench`` measures."""

    device: str = "auto"  # auto, cuda or cpu
    dtype: str = "bfloat16"  # bfloat16, float16 or float32
    B: int = 1  # batch size
    D: int | None = None  # model width (default 1024 on CUDA, 64 on CPU)
    T: list[int] | None = None  # sequence lengths (default 1K..64K on CUDA, 64 128 on CPU)
    tokens: int | None = None  # also B = tokens // T for every T (fixed B * T)
    backends: list[str] = field(default_factory=lambda: ["triton", "chunked", "reference"])  # solves to time
    chunk_size: int | None = None  # feedback solve chunk (default: the backend's)
    ref_max_gib: float = 8.0  # skip the dense reference above this much T x T memory
    chunked_max_t: int = 16384  # skip the chunked backend above this length
    layer: bool = True  # also time a full SessaLayer
    layer_max_t: int = 1 << 30  # skip the layer above this length
    warmup: int = 2  # untimed runs first
    repeats: int = 5  # timed runs (median)
    out: str | None = None  # write the JSON results here
    generate: bool = False  # time generate() instead of the kernels: prefill and decode of models vs HF Llama
    models: list[str] = field(  # --generate: "-static": static cache, graphed; "-compiled": also compiled
        default_factory=lambda: [
            *("sessa", "sessa-static", "sessa-compiled", "attention", "attention-compiled"),
            *("mamba2", "mamba2-compiled"),
            *("llama", "llama-static"),
        ]
    )
    preset: str | None = None  # --generate: model size (default 125m on CUDA, tiny on CPU)
    contexts: list[int] | None = None  # --generate: prompt lengths (default 1K 8K 32K; CPU: 32 64)
    new_tokens: int = 32  # --generate: decoded tokens per timed generate
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8, 64])  # --generate: at the first context

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        bad = [b for b in self.backends if b not in ("triton", "chunked", "reference")]
        if bad:
            raise ValueError(f"unknown backend(s) {bad}; valid: triton, chunked, reference")
        if any(t < 1 for t in self.T or [1]) or self.B < 1 or (self.D is not None and self.D < 1):
            raise ValueError(f"--T, --B and --D must be positive, got T={self.T} B={self.B} D={self.D}")
        if self.generate:
            self._check_generate()
        if self.warmup < 0 or self.repeats < 1:
            raise ValueError(f"need --warmup >= 0 and --repeats >= 1, got {self.warmup}, {self.repeats}")

    def _check_generate(self) -> None:
        from sessa.bench.generate import valid_models
        from sessa.models.presets import parse_preset_name

        valid = valid_models()
        bad = [m for m in self.models if m not in valid]
        if bad or not self.models:
            raise ValueError(f"--models: unknown or no model(s) {bad}; valid: {', '.join(valid)}")
        if self.preset is not None and parse_preset_name(self.preset)[1] is not None:
            raise ValueError(f"--preset takes a size (tiny, small, 125m, 350m), got {self.preset!r}")
        numbers = [*(self.contexts or [1]), *self.batch_sizes, self.new_tokens]
        if (
            any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in numbers)
            or not self.batch_sizes
        ):
            raise ValueError(
                f"--contexts, --batch-sizes and --new-tokens must be positive ints, got {self.contexts}, "
                f"{self.batch_sizes}, {self.new_tokens}"
            )


DTYPES = ("bfloat16", "float16", "float32")


def run_bench(cfg: BenchConfig) -> dict:
    """Run the benchmark, print the ratio table, write ``cfg.out``; returns the JSON record."""
    from sessa.train.distributed import resolve_device

    device = resolve_device(cfg.device)
    dtype = getattr(torch, cfg.dtype)
    args = dataclasses.replace(
        cfg,
        D=cfg.D or (1024 if device.type == "cuda" else 64),
        T=cfg.T or ([1024 * 2**i for i in range(7)] if device.type == "cuda" else [64, 128]),
    )
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    if cfg.generate:
        return _run_generate(cfg, device, dtype, name)
    print(f"device {name}  dtype {args.dtype}  D {args.D}  torch {torch.__version__}", flush=True)
    timer = Timer(device, args.warmup, args.repeats)
    record = run_sweep(args, device, dtype, timer)
    ratios = ratio_table(record)
    print(
        f"\n{'case':22s} {'B':>3s} {'T':>7s} {'fwd+bwd ms':>11s} {'peak MiB':>9s} "
        f"{'x SDPA':>7s} {'ref/x':>7s} {'graph ms':>9s} {'x SDPA':>7s}"
    )
    for r in ratios:
        print(
            f"{r['name']:22s} {r['B']:3d} {r['T']:7d} {r['fwdbwd_ms']:11.3f} {_fmt(r['peak_mib'], 9, 0)} "
            f"{_fmt(r['vs_sdpa'], 7, 2)} {_fmt(r['ref_speedup'], 7, 2)} {_fmt(r['graph_ms'], 9, 3)} "
            f"{_fmt(r['graph_vs_sdpa'], 7, 2)}"
        )
    result = {
        "device": name,
        "dtype": args.dtype,
        "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "config": dataclasses.asdict(args),
        "results": record,
        "ratios": ratios,
    }
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=1, default=str)
    return result


def _run_generate(cfg: BenchConfig, device: torch.device, dtype: torch.dtype, name: str) -> dict:
    import transformers

    from sessa.bench.generate import format_table, run_generate_bench

    versions = f"torch {torch.__version__}  transformers {transformers.__version__}"
    print(f"device {name}  dtype {cfg.dtype}  {versions}")
    record = run_generate_bench(cfg, device, dtype, log_rows=True)
    print("\nratios to llama (same context and batch):")
    print(format_table(record))
    result = {
        "device": name,
        "dtype": cfg.dtype,
        "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "config": dataclasses.asdict(cfg),
        **record,
    }
    if cfg.out:
        with open(cfg.out, "w") as fh:
            json.dump(result, fh, indent=1, default=str)
    return result


def bench_main(argv: list[str] | None = None) -> int:
    """``sessa bench`` with these arguments; returns its exit code."""
    from sessa.cli import main

    return main(["bench", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(bench_main())
