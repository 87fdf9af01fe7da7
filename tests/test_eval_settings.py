"""Every numeric setting of eval and propagate is range-checked once, before any file or model is read,
and the CLI help shows the one definition of each protocol default."""

import pytest

from videomac.cli import main
from videomac.eval.propagation import PropagationConfig

_PROPAGATE = ["propagate", "missing.mp4", "--mask", "missing.png", "--out", "OUT"]


def _eval(benchmark):
    return ["eval", benchmark, "--model", "videomac_rn18", "--root", "missing", "--out", "OUT"]


@pytest.mark.parametrize(
    "command, flag, value, says",
    [
        (_PROPAGATE, "--radius", "1e9", "--radius must be at most 64, got 1000000000.0"),
        (_PROPAGATE, "--alpha", "2", "--alpha must be at most 1, got 2.0"),
        (_eval("davis"), "--topk", "0", "--topk must be at least 1, got 0"),
        (_eval("vip"), "--temperature", "nan", "--temperature must be a finite number, got nan"),
        (_eval("jhmdb"), "--batch-size", "0", "--batch-size must be at least 1, got 0"),
        (_eval("davis"), "--n-context", "-1", "--n-context must be at least 0, got -1"),
    ],
)
def test_out_of_range_settings_are_one_line_exit_2(tmp_path, capsys, command, flag, value, says):
    args = [str(tmp_path / a) if a in ("OUT", "missing", "missing.mp4", "missing.png") else a for a in command]
    assert main([*args, flag, value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"videomac {command[0]}: error: {says}"], err
    assert not (tmp_path / "OUT").exists()


def test_the_library_checks_the_same_ranges():
    with pytest.raises(ValueError, match="--radius must be a finite number, got inf"):
        PropagationConfig(radius=float("inf"))
    with pytest.raises(ValueError, match="--topk must be an integer, got 2.5"):
        PropagationConfig(topk=2.5)


def test_protocol_defaults_have_one_definition(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "davis", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    defaults = PropagationConfig()
    for name in ("n_context", "radius", "topk", "temperature"):
        assert f"(default: {getattr(defaults, name)};" in text, name
