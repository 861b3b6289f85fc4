"""The machinery of ``npusim bench gemm`` (:func:`npusim.benchmarks.bench_gemm`, testbench
``cosim/gemm_bench_tb.py``): the shape plan, and a short run on the 4x4 array with two shapes
(the same build as the benchmark's, so a benchmark run leaves it cached).
"""

import json

import pytest

from npusim.benchmarks import GEMM_ARRAYS, bench_gemm, gemm_shapes
from npusim.sw.isa.enums import DType


@pytest.mark.parametrize("label", list(GEMM_ARRAYS))
def test_gemm_shapes(label):
    """Dense, 64-byte aligned operands that do not overlap; the target covers M, N, K >= 4x
    the array and nothing smaller."""
    p = GEMM_ARRAYS[label]
    R, C = p.array_rows, p.array_cols
    shapes, skipped = gemm_shapes(R, C, p.sram_bytes)
    assert len(shapes) == 7 and not skipped
    for s in shapes:
        f = s["fields"]
        b_size = 2 * f["k"] * f["n"]
        assert f["a"] == 0 and f["b"] % 64 == 0 and f["c"] % 64 == 0
        assert f["b"] >= 2 * f["m"] * f["k"] and f["c"] >= f["b"] + b_size
        assert f["lda"] == f["k"] and f["ldb"] == (f["k"] if f["b_trans"] else f["n"])
        assert f["ldc"] == f["n"] and not (f["acc"] and f["c_dtype"] == DType.BF16)
        assert s["in_min"] == (f["m"] >= 4 * R and f["n"] >= 4 * C and f["k"] >= 4 * R)
    assert sum(not s["in_min"] for s in shapes) == 1


def test_gemm_shapes_skip_what_does_not_fit():
    shapes, skipped = gemm_shapes(16, 16, 64 * 1024)
    assert {s["shape"] for s in shapes} == {"4x array", "R x C x 4R"}
    assert len(skipped) == 2 and all("does not fit" in note for note in skipped)


@pytest.mark.rtl
def test_bench_gemm_4x4(capsys):
    """Two shapes on the 4x4 array: checked results, sane figures, a printed table."""
    def two_shapes(rows, cols, sram_bytes):
        shapes, skipped = gemm_shapes(rows, cols, sram_bytes)
        return [s for s in shapes if s["name"] in ("4x array, A.B^T", "R x C x 4R, A.B")], []

    figures = bench_gemm(arrays={"4x4": GEMM_ARRAYS["4x4"]}, shapes=two_shapes)
    json.dumps(figures)  # the runner prints and records it
    rows = figures["rows"]
    assert [r["layout"] for r in rows] == ["A.B^T", "A.B"]
    for r in rows:
        assert r["checked"] and r["ideal"] == r["m"] * r["n"] * r["k"] / 16
        assert r["cycles"] >= r["ideal"] and 0 < r["utilization"] <= 1
    assert figures["utilization"] == rows[0]["utilization"]  # the small shape is left out
    assert figures["utilization_by_array"] == {"4x4": rows[0]["utilization"]}
    assert figures["rtl_cycles_per_second"] > 0 and figures["build_seconds"] >= 0
    out = capsys.readouterr().out
    assert "4x4" in out and "A.B^T" in out and "not in the min" in out
