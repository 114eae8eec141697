"""``sessa bench --generate`` on the CPU at the tiny preset: every model and case timed, ratios to HF Llama,
a Llama of matching size, and clear errors for bad options."""

from __future__ import annotations

import json

import pytest

from sessa.bench.generate import build, llama_like
from sessa.bench.kernels import bench_main


def test_generate_bench_times_every_model_and_case(tmp_path, capsys):
    out = tmp_path / "gen.json"
    argv = [
        "--generate",
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "--contexts",
        "8",
        "12",
        "--new-tokens",
        "8",  # enough decode steps that their time stands above the timer's noise
        "--batch-sizes",
        "1",
        "2",
        "--models",
        "sessa",
        "mamba2-static",
        "llama",
        "--repeats",
        "2",
        "--out",
        str(out),
    ]
    assert bench_main(argv) == 0
    data = json.loads(out.read_text())
    assert data["preset"] == "tiny" and data["device"] == "cpu" and data["transformers"]
    cases = [(r["model"], r["context"], r["batch"]) for r in data["rows"]]
    assert cases == [
        (m, c, b) for m in ("sessa", "mamba2-static", "llama") for c, b in ((8, 1), (12, 1), (8, 2))
    ]
    for r in data["rows"]:
        assert r["prefill_s"] > 0 and r["decode_ms"] > 0 and r["tokens_per_s"] > 0, r
    llama = [r for r in data["rows"] if r["model"] == "llama"]
    assert all(r["decode_vs_llama"] == pytest.approx(1.0) for r in llama)
    sessa = next(r for r in data["rows"] if r["model"] == "sessa")
    assert abs(llama[0]["params"] / sessa["params"] - 1) < 0.15  # a Llama of about the same size
    assert "ms/token" in capsys.readouterr().out


def test_llama_like_matches_the_parameter_count():
    import torch

    for target, d, h in ((125_000_000, 768, 12), (2_400_000, 256, 4)):
        model = __import__("transformers").LlamaForCausalLM(llama_like(target, d, h, 259, 64))
        per_layer = sum(p.numel() for p in model.model.layers[0].parameters())
        assert abs(sum(p.numel() for p in model.parameters()) - target) <= per_layer / 2 + 1
        assert model.config.hidden_size == d and model.config.num_attention_heads == h
    model = build("attention", "tiny", 32, torch.device("cpu"), torch.float32)
    assert model.config.max_position_embeddings == 32 and not model.training


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--models", "gpt2"], "unknown or no model(s) ['gpt2']"),
        (["--preset", "tiny-mamba2"], "--preset takes a size"),
        (["--contexts", "0"], "must be positive ints"),
        (["--new-tokens", "0"], "must be positive ints"),
    ],
)
def test_generate_bench_rejects_bad_options(argv, message, capsys):
    assert bench_main(["--generate", "--device", "cpu", *argv]) == 2
    assert message in capsys.readouterr().err
