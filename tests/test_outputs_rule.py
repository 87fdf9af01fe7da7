"""The one output rule (videomac.outputs), through the real CLI: every writing subcommand, its output
pointed at its own input, at a pretraining run's files and through a symlink, exits 2 with one line that
names the flag and both paths, and leaves every input and the run's files byte-for-byte unchanged."""

import os
import warnings
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from helpers import copy_run, snapshot
from PIL import Image

from videomac.cli import main
from videomac.synthetic import render_video, write_frames, write_palette_png, write_video

SIZE = (64, 80)


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_run):
    """A tiny pretraining run (a copy of the session's: push writes into it) and one of each input the writing
    commands read."""
    w = tmp_path_factory.mktemp("world")
    run = copy_run(tiny_run, w / "run")
    video, labels = render_video(0, num_frames=6, size=SIZE, num_objects=1)
    write_video(video, str(w / "clip.mp4"))
    write_frames(video, str(w / "frames" / "clip"))
    write_palette_png(labels[0], str(w / "mask.png"))
    davis = w / "davis"
    write_frames(video[:3], str(davis / "JPEGImages" / "480p" / "bear"))
    for t in range(3):
        write_palette_png(labels[t], str(davis / "Annotations" / "480p" / "bear" / f"{t:05d}.png"))
    (davis / "ImageSets" / "2017").mkdir(parents=True)
    (davis / "ImageSets" / "2017" / "val.txt").write_text("bear\n")
    from safetensors.torch import load_file

    torch.save(load_file(str(run / "encoder.safetensors")), str(w / "official.pth"))  # a bare state_dict
    os.symlink(w / "clip.mp4", w / "clip-link.png")  # an innocent name that leads to the input video
    os.symlink(run / "checkpoint.pt", w / "fig-link.png")  # ... and one that leads to the run's checkpoint
    return w


def _rows(w: Path):
    run, ck, clip, frames, davis = w / "run", w / "run" / "checkpoint.pt", w / "clip.mp4", w / "frames", w / "davis"
    vis = ["visualize", str(run), str(clip), "--rows", "1", "--out"]
    conv = ["convert-official", str(w / "official.pth"), "--model", "videomac_cnxv2_atto", "--out"]
    bdata = ["bench", "data", "--data", str(frames), "--pairs", "2", "--batch-size", "1", "--workers", "0", "--out"]
    ev = ["eval", "davis", "--model", "resnet18", "--root", str(davis), "--device", "cpu", "--no-progress", "--out"]
    prop = ["propagate", str(clip), "--mask", str(w / "mask.png"), "--size", "0", "--no-progress", "--out"]
    pre = ["pretrain", "--model", "videomac_cnxv2_atto", "--input-size", "64", "--max-steps", "1", "--output-dir"]
    # (argv, flag, the output named, the input or run it would overwrite)
    return [
        # 1. visualize: its own input video, the run's checkpoint, links to each
        (vis + [str(clip)], "--out", clip, clip),
        (vis + [str(ck)], "--out", ck, run),
        (vis + [str(w / "clip-link.png")], "--out", w / "clip-link.png", clip),
        (vis + [str(w / "fig-link.png")], "--out", w / "fig-link.png", run),
        # 2. convert-official: its own input, the run's checkpoint
        (conv + [str(w / "official.pth")], "--out", w / "official.pth", w / "official.pth"),
        (conv + [str(ck)], "--out", ck, run),
        # 3. bench data: an input frame, the run's checkpoint; bench pretrain / propagate: the run's files
        (bdata + [str(frames / "clip" / "00000.jpg")], "--out", frames / "clip" / "00000.jpg", frames),
        (bdata + [str(ck)], "--out", ck, run),
        (["bench", "pretrain", "--quick", "--out", str(run / "summary.json")], "--out", run / "summary.json", run),
        (["bench", "pretrain", "--quick", "--profile", str(run)], "--profile", run, run),
        (["bench", "propagate", "--quick", "--out", str(run / "metrics.jsonl")], "--out", run / "metrics.jsonl", run),
        # export / push: the run itself, the run's checkpoint
        (["export", str(ck), "--out", str(run)], "--out", run, run),
        (["export", str(run), "--out", str(ck)], "--out", ck, run),
        (["push", str(run), "--repo-id", "me/x", "--dry-run", "--folder", str(run)], "--folder", run, run),
        (["push", str(ck), "--repo-id", "me/x", "--dry-run", "--folder", str(ck)], "--folder", ck, run),
        # eval / propagate: inside their inputs, over a run
        (ev + [str(davis / "Annotations")], "--out", davis / "Annotations", davis),
        (ev[:2] + ["--weights", str(run / "encoder.safetensors")] + ev[2:] + [str(run)], "--out", run, run),
        (prop + [str(clip)], "--out", clip, clip),
        (prop + [str(run)], "--out", run, run),
        # prepare: inside SRC, a run
        (["prepare", str(frames), str(frames / "copy"), "--no-progress"], "DST", frames / "copy", frames),
        (["prepare", str(frames), str(run), "--no-progress"], "DST", run, run),
        # pretrain owns its --output-dir, but not its data nor another run's files
        (pre + [str(frames), "--data", str(frames)], "--output-dir", frames, frames),
        (pre + [str(ck)], "--output-dir", ck, run),
    ]


def test_every_writer_refuses_its_inputs_and_a_runs_files(world, capsys):
    before = snapshot(world)
    seen = set()
    for argv, flag, out, other in _rows(world):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rc = main(argv)
        err = capsys.readouterr().err
        lines = [x for x in err.strip().splitlines() if x.startswith("videomac ")]
        assert rc == 2 and "Traceback" not in err and len(lines) == 1, (argv, rc, err)
        line = lines[0]
        assert line.startswith(f"videomac {argv[0]}: error: {flag} {out} "), (argv, line)
        assert other == out or str(other) in line.split(f"{flag} {out} ", 1)[1], (argv, line)
        assert snapshot(world) == before, argv
        seen.add(" ".join(argv[:2]) if argv[0] == "bench" or argv[0] == "eval" else argv[0])
    writers = {"pretrain", "export", "push", "convert-official", "visualize", "eval davis", "propagate", "prepare"}
    assert seen == writers | {"bench data", "bench pretrain", "bench propagate"}


def test_a_symlinked_output_is_replaced_not_written_through(world, tmp_path, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    link = tmp_path / "fig.png"
    os.symlink(victim, link)
    run_before = snapshot(world / "run")
    assert main(["visualize", str(world / "run"), str(world / "clip.mp4"), "--rows", "1", "--out", str(link)]) == 0
    assert not link.is_symlink() and Image.open(link).format == "PNG" and victim.read_text() == "keep me"
    assert main(["bench", "propagate", "--quick", "--out", str(tmp_path / "b.json")]) == 0
    # inside an output folder too: links planted at the names propagate writes are replaced
    out = tmp_path / "track"
    (out / "masks").mkdir(parents=True)
    for name in ("summary.json", "overlay.mp4", "masks/00001.png"):
        os.symlink(victim, out / name)
    argv = ["propagate", str(world / "clip.mp4"), "--mask", str(world / "mask.png"), "--size", "0", "--out", str(out)]
    assert main(argv + ["--no-progress"]) == 0
    assert victim.read_text() == "keep me"
    for name in ("summary.json", "overlay.mp4", "masks/00001.png"):
        assert not (out / name).is_symlink() and (out / name).stat().st_size > 100, name
    with av.open(str(out / "overlay.mp4")) as c:
        assert sum(1 for _ in c.decode(video=0)) == 6
    assert snapshot(world / "run") == run_before
    # push's default folder lies inside the run it reads (RUN/hub/ORG--NAME): allowed, the run's files untouched
    assert main(["push", str(world / "run"), "--repo-id", "me/x", "--dry-run"]) == 0
    assert (world / "run" / "hub" / "me--x" / "model.safetensors").is_file()
    hub = str(world / "run" / "hub")
    assert {k: v for k, v in snapshot(world / "run").items() if not k.startswith(hub)} == run_before
    capsys.readouterr()


def _corrupt_middle(path: Path, frames: int = 40) -> Path:
    video = render_video(1, num_frames=frames, size=SIZE, num_objects=1)[0]
    write_video(video, str(path))
    data = bytearray(path.read_bytes())
    a, b = int(len(data) * 0.45), int(len(data) * 0.55)
    data[a:b] = np.random.default_rng(0).integers(0, 256, b - a, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


def test_visualize_draws_from_the_frames_that_decode(world, tmp_path, capsys):
    video = _corrupt_middle(tmp_path / "corrupt.mp4")
    ok, errors = 0, 0
    with av.open(str(video)) as c:  # what a packet-by-packet decode gets: the middle is lost, the rest decodes
        for packet in c.demux(c.streams.video[0]):
            try:
                ok += len(packet.decode())
            except av.error.FFmpegError:
                errors += 1
    assert errors and 10 <= ok < 40, (ok, errors)
    before = video.read_bytes()
    out = tmp_path / "fig.png"
    with pytest.warns(UserWarning, match=f"{ok} of 40 frames decode"):
        rc = main(["visualize", str(world / "run"), str(video), "--rows", "3", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    fig = np.asarray(Image.open(out).convert("RGB"))
    # 3 rows of 64 px cells under the header: a real figure, not a blank one
    assert fig.shape[0] > 3 * 64 and fig[20:-20].std() > 10
    assert video.read_bytes() == before
    # a video with no two decodable frames a gap apart: one line, no traceback
    (tmp_path / "junk.mp4").write_bytes(b"\0" * 4096)
    assert main(["visualize", str(world / "run"), str(tmp_path / "junk.mp4"), "--out", str(tmp_path / "j.png")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "junk.mp4" in err and len(err.strip().splitlines()) == 1, err


def _corrupt_first_frame(path: Path, frames: int = 40) -> Path:
    """A video with a keyframe every 5 frames whose first packet is overwritten: the frames up to the
    next keyframe are lost, the rest decode."""
    video = render_video(2, num_frames=frames, size=SIZE, num_objects=1)[0]
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = SIZE[1], SIZE[0], "yuv420p"
        s.options = {"g": "5", "keyint_min": "5", "sc_threshold": "0"}
        for f in video:
            for packet in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    with av.open(str(path)) as c:
        first = next(p for p in c.demux(c.streams.video[0]) if p.size)
        pos, size = first.pos, first.size
    data = bytearray(path.read_bytes())
    data[pos : pos + size] = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


def test_visualize_draws_from_a_video_whose_first_frame_does_not_decode(world, tmp_path, capsys):
    video = _corrupt_first_frame(tmp_path / "first.mp4")
    before = video.read_bytes()
    out = tmp_path / "fig.png"
    with pytest.warns(UserWarning, match="of 40 frames decode"):
        rc = main(["visualize", str(world / "run"), str(video), "--rows", "2", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    assert np.asarray(Image.open(out).convert("RGB"))[20:-20].std() > 10
    assert video.read_bytes() == before


def test_flags_named_in_messages(world, tmp_path, capsys):
    assert main(["visualize", str(world / "run"), str(world / "clip.mp4"), "--rows", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "videomac visualize: error: --rows must be at least 1, got 0"
    davis = world / "davis"
    assert main(["push", str(world / "run"), "--repo-id", "me/x", "--dry-run", "--folder", str(davis)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"videomac push: error: --folder {davis} ") and "--out" not in err, err
