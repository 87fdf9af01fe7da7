"""Every numeric setting of eval and propagate is range-checked once, before any file or model is read,
and the CLI help shows the one definition of each protocol default."""

import pytest

from videomac.cli import main
from videomac.eval.propagation import PropagationConfig


@pytest.mark.parametrize(
    "command, flag, value",
    [
        (["propagate", "missing.mp4", "--mask", "missing.png", "--out", "OUT"], "--radius", "1e9"),
        (["propagate", "missing.mp4", "--mask", "missing.png", "--out", "OUT"], "--alpha", "2"),
        (["eval", "davis", "--model", "videomac_rn18", "--root", "missing", "--out", "OUT"], "--topk", "0"),
        (["eval", "vip", "--model", "videomac_rn18", "--root", "missing", "--out", "OUT"], "--temperature", "nan"),
        (["eval", "jhmdb", "--model", "videomac_rn18", "--root", "missing", "--out", "OUT"], "--batch-size", "0"),
        (["eval", "davis", "--model", "videomac_rn18", "--root", "missing", "--out", "OUT"], "--n-context", "-1"),
    ],
)
def test_out_of_range_settings_are_one_line_exit_2(tmp_path, capsys, command, flag, value):
    args = [str(tmp_path / a) if a in ("OUT", "missing", "missing.mp4", "missing.png") else a for a in command]
    assert main([*args, flag, value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{flag} " in err[0] and "out of range" in err[0], err
    assert not (tmp_path / "OUT").exists()


def test_the_library_checks_the_same_ranges():
    with pytest.raises(ValueError, match="--radius inf is out of range"):
        PropagationConfig(radius=float("inf"))
    with pytest.raises(ValueError, match="--topk 2.5 is out of range"):
        PropagationConfig(topk=2.5)


def test_protocol_defaults_have_one_definition(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "davis", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    defaults = PropagationConfig()
    for name in ("n_context", "radius", "topk", "temperature"):
        assert f"(default {getattr(defaults, name):g};" in text, name
