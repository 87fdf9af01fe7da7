"""One settings mechanism (videomac.settings): each setting's type, default, range, choices and help are
declared once on its dataclass field; every command's options and checks are made from them."""

import argparse
import dataclasses
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Optional

import pytest

from videomac.cli import build_parser
from videomac.eval.settings import PropagationConfig, RunSettings
from videomac.pretrain.config import PretrainConfig, resolve_config
from videomac.settings import add_options, check, check_values, choices, describe, from_args, setting


@dataclass
class _Demo:
    count: int = setting(3, ge=1, le=9, help="how many")
    ratio: float = setting(0.5, ge=0.0, lt=1.0)
    mode: str = setting("a", choices=("a", "b"), help="which")
    limit: Optional[int] = setting(None, gt=0)
    on: bool = setting(False, help="a switch")


@pytest.mark.parametrize(
    "values, says",
    [
        (dict(count=0), "--count must be at least 1, got 0"),
        (dict(count=10), "--count must be at most 9, got 10"),
        (dict(count=2.0), "--count must be an integer, got 2.0"),
        (dict(count=True), "--count must be an integer, got True"),
        (dict(ratio=float("nan")), "--ratio must be a finite number, got nan"),
        (dict(ratio=1.0), "--ratio must be below 1.0, got 1.0"),
        (dict(ratio="0.5"), "--ratio must be a number, got '0.5'"),
        (dict(mode="c"), "--mode must be one of a, b, got 'c'"),
        (dict(limit=0), "--limit must be above 0, got 0"),
        (dict(count=None), "--count must be set (got none)"),
        (dict(on=1), "--on must be a bool, got 1"),
    ],
)
def test_the_checker_refuses_what_a_field_does_not_declare(values, says):
    with pytest.raises(ValueError) as e:
        check(_Demo(**values))
    assert str(e.value) == says
    if None not in values.values():  # check_values: None is unset
        with pytest.raises(ValueError, match=re.escape(says)):
            check_values(_Demo, **values)


def test_the_checker_passes_declared_values_and_unknown_names():
    check(_Demo(count=9, ratio=0.0, mode="b", limit=None, on=True))
    check_values(_Demo, count=None, sequences=["bear"])  # None: unset; other names are not settings


def test_options_are_made_from_the_fields():
    parser = argparse.ArgumentParser()
    add_options(parser, _Demo, defaults=dict(count=5))
    helps = {a.dest: a.help for a in parser._actions}
    assert helps["count"] == "how many (default: 5; at least 1 and at most 9)"
    assert helps["ratio"] == "default: 0.5; at least 0.0 and below 1.0"
    assert helps["on"] == "a switch"  # a plain switch: no default to say
    args = parser.parse_args(["--mode", "b", "--on", "--limit", "4"])
    assert from_args(_Demo, args) == dict(count=5, ratio=0.5, mode="b", limit=4, on=True)
    with pytest.raises(SystemExit):
        parser.parse_args(["--mode", "c"])  # argparse refuses an undeclared choice at once


def _actions(*command):
    parser = build_parser()
    for name in command:
        parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
    return {a.dest: a for a in parser._actions}


@pytest.mark.parametrize(
    "command, classes",
    [
        (("pretrain",), (PretrainConfig,)),
        (("eval", "davis"), (PropagationConfig, RunSettings)),
        (("eval", "jhmdb"), (PropagationConfig, RunSettings)),
        (("propagate",), (PropagationConfig, RunSettings)),
    ],
)
def test_every_command_shows_each_settings_default_once_and_its_range(command, classes):
    actions, seen = _actions(*command), 0
    for cls in classes:
        for f in dataclasses.fields(cls):
            action = actions.get(f.name)
            if action is None or action.type is not None and action.type not in (int, float, str):
                continue  # not an option of this command, or one with its own parser (propagate's --size HxW)
            seen += 1
            assert action.help.count("default:") <= 1, (command, f.name, action.help)
            assert describe(cls, f.name) in action.help, (command, f.name, action.help)
            if choices(cls, f.name):
                assert tuple(action.choices) == choices(cls, f.name)
    assert seen >= 5


def test_pretrain_options_leave_unset_values_to_the_preset():
    args = build_parser().parse_args(["pretrain", "--preset", "paper-rn50", "--epochs", "3", "--no-progress"])
    cfg = resolve_config(from_args(PretrainConfig, args), preset=args.preset)
    assert (cfg.model, cfg.init, cfg.ema_schedule, cfg.total_batch) == ("videomac_rn50", "authors", "authors", 512)
    assert (cfg.epochs, cfg.progress, cfg.preset) == (3, False, "paper-rn50")


def test_each_choice_list_has_one_home():
    from videomac.pretrain.init import INITS
    from videomac.pretrain.schedule import EMA_SCHEDULES
    from videomac.sparse import BACKENDS

    assert INITS == choices(PretrainConfig, "init")
    assert EMA_SCHEDULES == choices(PretrainConfig, "ema_schedule")
    assert set(BACKENDS) == set(choices(PretrainConfig, "backend"))  # the engine's own list, held equal
    bench = _actions("bench", "pretrain")
    assert tuple(bench["amp"].choices) == choices(PretrainConfig, "amp")
    assert tuple(bench["compile_mode"].choices) == choices(PretrainConfig, "compile_mode")


@pytest.mark.parametrize(
    "args, says",
    [
        (["pretrain", "--gap", "0"], "videomac pretrain: error: --gap must be at least 1, got 0"),
        (["eval", "davis", "--topk", "0"], "videomac eval: error: --topk must be at least 1, got 0"),
        (["eval", "vip", "--size", "8"], "videomac eval: error: --size must be at least 32, got 8"),
        (
            ["propagate", "V", "--mask", "M", "--alpha", "2"],
            "videomac propagate: error: --alpha must be at most 1, got 2.0",
        ),
    ],
)
def test_a_bad_setting_answers_before_torch_loads(tmp_path, args, says):
    if args[0] == "eval":
        args = [*args, "--model", "videomac_rn18", "--root", str(tmp_path / "data")]
    args = [*args, "--output-dir" if args[0] == "pretrain" else "--out", str(tmp_path / "out")]
    env = dict(os.environ, PYTHONPROFILEIMPORTTIME="1")
    r = subprocess.run([shutil.which("videomac"), *args], capture_output=True, text=True, env=env, timeout=120)
    errors = [line for line in r.stderr.splitlines() if not line.startswith("import time:")]
    assert r.returncode == 2 and errors == [says], r.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "videomac.settings" in imported and "torch" not in imported
    assert not (tmp_path / "out").exists()
