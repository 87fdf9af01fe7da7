"""What a user meets first: `videomac --help` and every `videomac SUBCOMMAND --help` start without
torch (real processes), and mistakes give one clear error."""

import os
import shutil
import subprocess
import sys

import pytest

HELPS = [
    [],
    ["pretrain"],
    ["visualize"],
    ["export"],
    ["push"],
    ["convert-official"],
    ["eval"],
    ["eval", "davis"],
    ["propagate"],
    ["bench"],
    ["bench", "pretrain"],
    ["bench", "propagate"],
]


@pytest.mark.parametrize("args", HELPS, ids=lambda a: " ".join(a) or "videomac")
def test_help_imports_no_torch(args):
    exe = shutil.which("videomac")
    assert exe, "the videomac console script is not installed (pip install -e .)"
    env = dict(os.environ, PYTHONPROFILEIMPORTTIME="1")
    r = subprocess.run([exe, *args, "--help"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "usage: videomac" in r.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "videomac.cli" in imported  # the profile really lists this process's imports
    heavy = sorted(m for m in imported if m.split(".")[0] in ("torch", "timm", "torchvision", "av"))
    assert not heavy, f"`videomac {' '.join(args)} --help` imported {heavy[:5]}"


@pytest.mark.slow
def test_import_videomac_registers_the_encoders():
    code = "import videomac, timm; assert timm.is_model('videomac_rn50'); print(videomac.SparseEncoder.__name__)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "SparseEncoder", r.stderr[-2000:]


def test_missing_weights_file_is_one_clear_error(tmp_path):
    import timm

    import videomac  # noqa: F401

    missing = str(tmp_path / "nope.safetensors")
    with pytest.raises(FileNotFoundError, match="does not exist; pass the encoder.safetensors a run wrote"):
        timm.create_model("videomac_rn18", pretrained=True, pretrained_cfg_overlay=dict(file=missing))


def test_pretrain_help_shows_effective_defaults_and_presets():
    env = dict(os.environ, COLUMNS="500")  # no wrapping inside preset names
    r = subprocess.run(
        [shutil.which("videomac"), "pretrain", "--help"], capture_output=True, text=True, timeout=120, env=env
    )
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    assert "(default: None)" not in text
    assert "--input-size INPUT_SIZE default: 224" in text
    assert "(default: cosine; the paper presets: authors)" in text
    assert "paper-cnxv2-s, paper-cnxv2-iso-s: 512 (paper-cnxv1-t, paper-cnxv1-s: 256)" in text
    assert "--norm-pix-loss, --no-norm-pix-loss" in text and "--progress, --no-progress" in text


@pytest.mark.slow
def test_bad_settings_fail_before_any_heavy_work(tmp_path):
    env = dict(os.environ, PYTHONPROFILEIMPORTTIME="1")

    def run(*flags):
        args = ["pretrain", *flags, "--output-dir", str(tmp_path / "r")]
        r = subprocess.run([shutil.which("videomac"), *args], capture_output=True, text=True, env=env, timeout=120)
        errors = [line for line in r.stderr.splitlines() if not line.startswith("import time:")]
        torch = any(line.rsplit("|", 1)[-1].strip() == "torch" for line in r.stderr.splitlines())
        return r.returncode, errors, torch

    # a setting out of its range answers before torch is imported
    assert run("--mask-ratio", "1.5") == (
        2,
        ["videomac pretrain: error: --mask-ratio must be below 1.0, got 1.5"],
        False,
    )
    # the input size is checked against the model's own stride (its feature_info), before any data or run folder
    code, errors, _ = run("--input-size", "100")
    assert code == 2 and errors == [
        "videomac pretrain: error: --input-size 100 must be a positive multiple of videomac_cnxv2_s's patch size 32 "
        "(e.g. 96)"
    ]
    assert not (tmp_path / "r").exists()


def _subcommands(parser, path=()):
    """(path, parser) for every subcommand at any depth of ``parser``."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from _subcommands(sub, (*path, name))


def test_every_option_of_every_subcommand_has_help():
    import argparse

    from videomac.cli import build_parser

    found = list(_subcommands(build_parser()))
    assert {p[0] for p, _ in found} >= {"pretrain", "visualize", "export", "push", "eval", "propagate", "bench"}
    missing = [
        f"videomac {' '.join(path)} {'/'.join(a.option_strings) or a.dest}"
        for path, sub in found
        for a in sub._actions
        if not isinstance(a, argparse._SubParsersAction) and a.help != argparse.SUPPRESS and not (a.help or "").strip()
    ]
    assert not missing, f"options without help: {missing}"


def test_help_texts_say_what_is_accepted_and_defaults_once():
    env = dict(os.environ, COLUMNS="500")

    def run(*args):
        cmd = [shutil.which("videomac"), *args, "--help"]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env).stdout

    backend = " ".join(run("pretrain").split()).rsplit("--backend {auto,visible,masked}", 1)[1].split(" --", 1)[0]
    assert backend.count("default") == 1 and "(default: auto)" in backend
    mask = " ".join(run("propagate").split()).rsplit("--mask MASK", 1)[1].split(" --", 1)[0]
    assert "colour and 16-bit PNGs are refused" in mask and "grayscale or colours" not in mask
