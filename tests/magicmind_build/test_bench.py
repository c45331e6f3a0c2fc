from __future__ import annotations

import pathlib

from engine_runtime.engine import load_engine
from magicmind_build.bench import bench_engine, format_table, main


def test_bench_measures_every_batch_size(model_repo: pathlib.Path, capsys) -> None:  # type: ignore[no-untyped-def]
    engine = load_engine(model_repo / "bert_qa" / "1" / "model.onnx")
    result = bench_engine("bert_qa", engine, batch=4, iterations=3)
    assert result.batch == 4 and result.items_per_s > 0 and result.p95_ms >= result.p50_ms > 0

    assert (
        main(
            [
                "--repo",
                str(model_repo),
                "--models",
                "efficientnet_lite0",
                "--batch-sizes",
                "1",
                "2",
                "--iterations",
                "2",
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[:2] == ["model", "batch"]
    assert [line.split()[:2] for line in lines[1:]] == [["efficientnet_lite0", "1"], ["efficientnet_lite0", "2"]]
    assert format_table([result]).splitlines()[1].startswith("bert_qa")


def test_bench_tables_per_precision_with_served_throughput(  # type: ignore[no-untyped-def]
    model_repo: pathlib.Path, gateway_url: str, capsys
) -> None:
    """Bare rows per precision (only built variants) next to served throughput through a real gateway."""
    argv = ["--repo", str(model_repo), "--models", "resnet50_vd", "--precisions", "fp32", "int8"]
    argv += ["--batch-sizes", "1", "2", "--iterations", "2", "--served-url", gateway_url, "--markdown"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "**resnet50_vd**"
    rows = [line.split("|")[1:-1] for line in lines[4:]]
    assert [(r[0].strip(), r[2].strip()) for r in rows] == [("FP32", "1"), ("FP32", "2")]  # int8 not built there
    for row in rows:
        assert float(row[5]) > 0 and float(row[8]) > 0  # bare and served items/s
