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


def test_served_counts_every_failed_request() -> None:
    """Concurrent clients' failures are all counted (a lost update across ``await`` once hid most 503s,
    and fast 503s then inflated the served items/s)."""
    import http.server
    import threading

    from magicmind_build.bench import BenchResult, ServedResult, bench_served, format_markdown

    answered = 0

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            nonlocal answered
            self.rfile.read(int(self.headers["Content-Length"]))
            answered += 1
            status = 200 if answered <= 2 else 503  # the two warm-up requests succeed, every timed one fails
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        result = bench_served(f"http://127.0.0.1:{server.server_address[1]}", "classify", "m", 4, 12)
    finally:
        server.shutdown()
    assert (result.requests, result.errors, result.items_per_s) == (0, 12, 0.0)
    row = BenchResult(model="m", batch=4, p50_ms=1.0, p95_ms=1.0, items_per_s=1.0, precision="fp32", mean_ms=1.0)
    table = format_markdown([row], {("m", 4): ServedResult(3, 1, 2.0, 5.0, 6.0)}, "cpu")
    assert table.splitlines()[-1].endswith("| 5 | 6 | 2.0 | 1/4 |")
