"""`videomac bench pretrain --quick` (the CI smoke test) and `videomac bench propagate`."""

import json

import pytest

from videomac.bench import CONFIGS
from videomac.bench.pretrain import flop_split
from videomac.cli import main


@pytest.mark.slow
def test_bench_pretrain_quick(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "pretrain", "--quick", "--out", str(out), "--profile", str(tmp_path / "prof")]) == 0
    result = json.loads(out.read_text())
    rows = {(r["model"], r["config"]): r for r in result["rows"]}
    expected = {(m, c) for m in ("videomac_cnxv2_atto", "videomac_rn18") for c in CONFIGS}
    assert set(rows) == expected | {("vit_small_patch16_224", "vit_s16_siammae")}
    for r in rows.values():
        assert r["pairs_per_s"] > 0 and r["peak_mem_mb"] > 0 and r["loss"] == r["loss"]
        assert r["ops_per_step"] > 100 and (tmp_path / "prof" / f"profile_{r['model']}_{r['config']}.txt").is_file()
    for m in ("videomac_cnxv2_atto", "videomac_rn18"):
        assert rows[(m, "masked")]["speed_vs_masked"] == 1.0
        assert 1.0 <= rows[(m, "visible")]["flop_bound"] == result["flops"][m]["bound"]
        # encoder FLOPs of a step: online forward + backward (3 forwards) + target forward, 2 per MAC
        fl = result["flops"][m]
        full = fl["pointwise_gmacs"] + fl["spatial_gmacs"]
        for config, gmacs in (("masked", full), ("visible", fl["visible_gmacs"])):
            r = rows[(m, config)]
            assert abs(r["encoder_tflops"] - r["pairs_per_s"] * 8 * gmacs / 1e3) <= 1e-9 * r["encoder_tflops"]
    assert result["meta"]["input_size"] == 64 and "getrusage" in result["meta"]["memory_method"]
    table = capsys.readouterr().out
    assert "x masked" in table and "FLOP bound" in table


def test_flop_split():
    fl = flop_split("videomac_cnxv2_atto", 64, 0.75)
    # ConvNeXt is mostly pointwise MLP: the bound is close to the 4x of 75% masking
    assert 0.8 < fl["pointwise_share"] < 0.95 and fl["bound"] == 4.0
    assert 2.5 < fl["bound_pointwise_only"] < 4.0
    assert flop_split("videomac_cnxv2_atto", 64, 0.0)["bound"] == 1.0


def test_bench_propagate(capsys):
    rc = main(["bench", "propagate", "--quick"])
    out = capsys.readouterr().out
    assert rc == 0 and "fps" in out or rc == 2 and "not available" in out


@pytest.mark.slow
def test_bench_pretrain_repeats_report_medians_of_interleaved_rounds(tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = [
        "bench",
        "pretrain",
        "--quick",
        "--models",
        "videomac_rn18",
        "--configs",
        "visible,masked",
        "--no-vit",
        "--no-isolate",
        "--steps",
        "1",
        "--repeats",
        "3",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    result = json.loads(out.read_text())
    assert result["meta"]["repeats"] == 3
    rows = {r["config"]: r for r in result["rows"]}
    for r in rows.values():
        runs = r["pairs_per_s_runs"]
        assert len(runs) == 3 and r["pairs_per_s"] == sorted(runs)[1] and len(r["load_runs"]) == 3
    ratios = rows["visible"]["speed_vs_masked_runs"]
    assert rows["visible"]["speed_vs_masked"] == sorted(ratios)[1] and rows["masked"]["speed_vs_masked"] == 1.0
    # each round's ratio is measured within the round, not between medians of different rounds
    for k in range(3):
        v, m = rows["visible"]["pairs_per_s_runs"][k], rows["masked"]["pairs_per_s_runs"][k]
        assert abs(ratios[k] - v / m) < 1e-9
    table = capsys.readouterr().out
    assert "3 interleaved rounds" in table and "load average" in table


def test_bench_pretrain_refuses_zero_repeats(capsys):
    assert main(["bench", "pretrain", "--quick", "--no-vit", "--repeats", "0"]) == 2
    assert "repeats" in capsys.readouterr().err
