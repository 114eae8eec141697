"""Smoke test of ``sessa bench`` (sessa.bench.kernels.bench_main) at tiny CPU sizes."""

from __future__ import annotations

import json

import pytest

from sessa.bench.kernels import bench_main


def test_bench_main_writes_json_with_positive_times(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["--device", "cpu", "--dtype", "float32", "--T", "16", "24", "--D", "16", "--tokens", "48",
            "--backends", "chunked", "reference", "--warmup", "0", "--repeats", "1", "--out", str(out)]
    assert bench_main(argv) == 0
    data = json.loads(out.read_text())
    assert {"device", "dtype", "date", "config", "results", "ratios"} <= data.keys()
    assert data["device"] == "cpu" and data["dtype"] == "float32"
    names = {r["name"] for r in data["results"]}
    assert {"feedback/chunked", "feedback/reference", "layer/chunked"} <= names
    shapes = {(r["B"], r["T"]) for r in data["results"]}
    assert {(1, 16), (1, 24), (3, 16), (2, 24)} <= shapes  # the T sweep and the fixed-tokens sweep
    for r in data["results"]:
        for key in ("fwd_ms", "bwd_ms", "fwdbwd_ms"):
            assert r[key] > 0, (r["name"], key)
    ref_rows = [r for r in data["ratios"] if r["name"] == "feedback/reference"]
    assert ref_rows and all(r["ref_speedup"] == pytest.approx(1.0) for r in ref_rows)
    assert "fwd+bwd ms" in capsys.readouterr().out


def test_bench_main_rejects_bad_sizes(capsys):
    assert bench_main(["--device", "cpu", "--T", "0", "--D", "16", "--no-layer"]) == 2
    assert "--T, --B and --D must be positive" in capsys.readouterr().err


def test_ratio_table_divides_graph_replay_times_by_sdpa_s():
    """CUDA rows carry graph_ms (fwd+bwd replayed from a CUDA graph) for the solve and SDPA: the table
    divides like by like, and leaves the ratio empty where either side has no graph time."""
    from sessa.bench.kernels import ratio_table

    record = [
        {"name": "sdpa/16x64", "B": 1, "T": 8, "fwdbwd_ms": 2.0, "peak_mib": 1.0, "graph_ms": 1.0},
        {"name": "feedback/triton", "B": 1, "T": 8, "fwdbwd_ms": 6.0, "peak_mib": 2.0, "graph_ms": 1.5},
        {"name": "layer/triton", "B": 1, "T": 8, "fwdbwd_ms": 8.0, "peak_mib": 3.0},
    ]
    rows = {r["name"]: r for r in ratio_table(record)}
    assert rows["feedback/triton"]["vs_sdpa"] == pytest.approx(3.0)
    assert rows["feedback/triton"]["graph_ms"] == 1.5
    assert rows["feedback/triton"]["graph_vs_sdpa"] == pytest.approx(1.5)
    assert rows["layer/triton"]["graph_ms"] is None and rows["layer/triton"]["graph_vs_sdpa"] is None
