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
