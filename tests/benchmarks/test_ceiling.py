"""``benchmarks/ceiling.py``: the interleaved tax table and the served-session check (pure functions)."""

from __future__ import annotations

import dataclasses
import json
import pathlib
from types import ModuleType

import pytest

from tests.helpers import load_benchmark


@pytest.fixture(scope="module")
def ceiling() -> ModuleType:
    return load_benchmark("ceiling")


def _row(ceiling: ModuleType, path: str, rnd: int, errors: int = 0, **cpu: float) -> object:
    cpu_ms = {t: cpu.get(t.replace("-", "_")) for t in ceiling._TIERS}
    load = ceiling.LoadResult("classify", 1, 8, errors, 1.0, 1.0, 1.0, 1.0)
    extra = {"engine": "real", "path": path, "workers": None, "cpu_ms": cpu_ms, "batch": 1.0, "round": rnd}
    return ceiling.Row(**dataclasses.asdict(load), **extra, load1=5.0)


def _cells(table: str, path: str) -> list[str]:
    line = next(line for line in table.splitlines() if line.startswith(f"| classify | {path} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_tax_rounds_divides_each_round_by_its_own_bare_round(ceiling: ModuleType) -> None:
    rows = []
    for rnd, bare, engine in ((0, 100.0, 104.0), (1, 200.0, 205.0), (2, 150.0, 180.0)):
        rows.append(_row(ceiling, "bare", rnd, engine=bare))
        rows.append(_row(ceiling, "triton", rnd, triton=2.0, stub_engine=1.0, engine=engine))
    rows.append(_row(ceiling, "triton", 3, triton=1.0, stub_engine=1.0, engine=1.0))  # no bare round 3: left out
    cells = _cells(ceiling.tax_rounds_table(rows), "triton")
    assert cells[3] == "3"  # rounds
    assert cells[5] == "100.0 / 150.0 / 200.0"  # bare min / median / max
    # per round (2 + 1 + engine) / bare: 1.07, 1.04, 1.22
    assert cells[12] == "**1.04 / 1.07 / 1.22**"
    assert cells[13] == "met"
    # (bare + 2 + 1) / bare: 1.03, 1.015, 1.02
    assert cells[14] == "1.01 / 1.02 / 1.03"


def test_tax_rounds_gives_no_verdict_with_errors(ceiling: ModuleType) -> None:
    rows = [
        _row(ceiling, "bare", 0, engine=100.0),
        _row(ceiling, "gateway", 0, errors=2, gateway=5.0, triton=2.0, stub_engine=1.0, engine=100.0),
    ]
    assert _cells(ceiling.tax_rounds_table(rows), "gateway")[13] == "n/a (2 errors)"
    # the one-run tax table ignores interleaved rounds
    assert ceiling.tax_table(rows) == ""


def test_row_is_a_load_result_and_round_trips_through_its_json(ceiling: ModuleType) -> None:
    row = _row(ceiling, "gateway", 2, gateway=5.0, engine=100.0)
    assert isinstance(row, ceiling.LoadResult)
    record = json.loads(json.dumps(dataclasses.asdict(row)))  # as ceiling.json holds it (--render reads it back)
    assert ceiling.Row(**record) == row


def test_served_session_reads_the_models_log_line(ceiling: ModuleType, tmp_path: pathlib.Path) -> None:
    session = "onnxruntime CPUExecutionProvider (intra_op 0, inter_op 0, cpus 2, ORT_SEQUENTIAL, spinning off)"
    log = tmp_path / "triton.log"
    log.write_text(
        f"I1123 python_be.cc] resnet50_vd: {session}, untrained weights, config {{'size': 'full'}}\n"
        "I1123 python_be.cc] yolov5n: onnxruntime CPUExecutionProvider (intra_op 1), untrained weights\n"
    )
    assert ceiling.served_session(log, "resnet50_vd") == session
    assert ceiling.served_session(log, "bert_qa") is None
    assert ceiling.served_session(tmp_path / "missing.log", "resnet50_vd") is None


def test_paced_triton_rows_sort_after_plain_triton_and_render(ceiling: ModuleType, tmp_path: pathlib.Path) -> None:
    rows = [
        _row(ceiling, "triton+4:sleep", 0, triton=0.6, stub_engine=0.2),
        _row(ceiling, "bare", 0, engine=1.0),
        _row(ceiling, "triton", 0, triton=0.4, stub_engine=0.1),
        _row(ceiling, "gateway", 0, gateway=3.0, triton=0.5, stub_engine=0.2),
    ]
    for row in rows:
        row.engine = "null"
    ceiling._write(rows, "note", tmp_path)
    table = (tmp_path / "ceiling.md").read_text()
    order = [line.split("|")[2].strip() for line in table.splitlines() if line.startswith("| null |")]
    assert order[:4] == ["gateway", "triton", "triton+4:sleep", "bare"]
    tier = ceiling.triton_tier_table(rows)
    assert "| null | triton+4:sleep | classify | 1 |" in tier
