"""DAVIS-2016 and DAVIS-2017 layouts, names that would leave the output folder, and sequences with
nothing to score -- all on small generated datasets."""

import csv
import json
import os

import numpy as np
import pytest
from PIL import Image
from test_eval_davis import Colour

from videomac.cli import main as cli_main
from videomac.eval.datasets import (
    DatasetLayoutError,
    Davis2016Dataset,
    Davis2017Dataset,
    DavisDataset,
    JhmdbDataset,
    VipDataset,
    write_label_png,
)
from videomac.eval.davis import GLOBAL_KEYS, evaluate, write_csvs
from videomac.eval.features import FeatureExtractor
from videomac.eval.runner import run_davis
from videomac.synthetic import render_video, write_frames, write_palette_png

SIZE = (64, 80)


def colour():
    return FeatureExtractor(Colour(), stage="pool")


def write_2017(root, videos, split="val", listed=None):
    """``videos``: {seq: (frames, labels)}; labels as object ids, written as palette PNGs."""
    for seq, (frames, labels) in videos.items():
        write_frames(frames, os.path.join(root, "JPEGImages", "480p", seq))
        for t, lab in enumerate(labels):
            write_palette_png(lab, os.path.join(root, "Annotations", "480p", seq, f"{t:05d}.png"))
    os.makedirs(os.path.join(root, "ImageSets", "2017"), exist_ok=True)
    with open(os.path.join(root, "ImageSets", "2017", f"{split}.txt"), "w") as f:
        f.write("\n".join(listed if listed is not None else videos) + "\n")
    return str(root)


def write_2016(root, videos, split="val"):
    """DAVIS-2016 as distributed: 8-bit 0/255 masks and a list of image/annotation path pairs."""
    lines = []
    for seq, (frames, labels) in videos.items():
        write_frames(frames, os.path.join(root, "JPEGImages", "480p", seq))
        d = os.path.join(root, "Annotations", "480p", seq)
        os.makedirs(d, exist_ok=True)
        for t, lab in enumerate(labels):
            assert set(np.unique(lab).tolist()) <= {0, 1}
            Image.fromarray((lab > 0).astype(np.uint8) * 255).save(os.path.join(d, f"{t:05d}.png"))
            lines.append(f"/JPEGImages/480p/{seq}/{t:05d}.jpg /Annotations/480p/{seq}/{t:05d}.png")
    os.makedirs(os.path.join(root, "ImageSets", "480p"), exist_ok=True)
    with open(os.path.join(root, "ImageSets", "480p", f"{split}.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return str(root)


def shifted(labels, dx=3):
    """Imperfect 'results': the ground truth shifted right by ``dx`` pixels."""
    out = np.zeros_like(labels)
    out[..., dx:] = labels[..., :-dx]
    return out


@pytest.fixture(scope="module")
def one_object():
    return {s: render_video(20 + i, num_frames=7, size=SIZE, num_objects=1) for i, s in enumerate(("bear", "cow"))}


def test_2016_masks_score_as_2017_palette_pngs(one_object, tmp_path, capsys):
    r16 = write_2016(tmp_path / "d16", one_object)
    r17 = write_2017(tmp_path / "d17", one_object)
    ds16, ds17 = DavisDataset(r16), DavisDataset(r17)
    assert (ds16.layout, ds17.layout) == ("DAVIS-2016", "DAVIS-2017")
    assert ds16.sequences == ds17.sequences == ["bear", "cow"]
    assert ds16.frame_names("cow") == ds17.frame_names("cow") == [f"{t:05d}" for t in range(7)]
    with Image.open(ds16.annotation_path("bear", "00003")) as im:  # really the 0/255 8-bit form
        assert im.mode == "L" and set(np.unique(np.asarray(im)).tolist()) == {0, 255}
    for t in range(7):  # 255 is object 1 in DAVIS-2016, never void
        np.testing.assert_array_equal(ds16.load_annotation("bear", f"{t:05d}"), one_object["bear"][1][t])
        np.testing.assert_array_equal(
            ds16.load_annotation("bear", f"{t:05d}"), ds17.load_annotation("bear", f"{t:05d}")
        )

    # the same imperfect results, as 0/1 palette PNGs and as DAVIS-2016-style 0/255 masks
    res_ids, res_255 = tmp_path / "res_ids", tmp_path / "res_255"
    for seq, (_, labels) in one_object.items():
        for t, lab in enumerate(shifted(labels)):
            write_label_png(lab, str(res_ids / seq / f"{t:05d}.png"))
            (res_255 / seq).mkdir(parents=True, exist_ok=True)
            Image.fromarray(lab * 255).save(res_255 / seq / f"{t:05d}.png")
    m17 = evaluate(r17, str(res_ids))
    m16 = evaluate(r16, str(res_ids))
    m16b = evaluate(r16, str(res_255))
    assert 0.2 < m17["J&F-Mean"] < 0.99
    for k in GLOBAL_KEYS:
        assert m16[k] == m17[k] == m16b[k], k
    assert (m16["layout"], m17["layout"]) == ("DAVIS-2016", "DAVIS-2017")
    assert [r["name"] for r in m16["per_sequence"]] == ["bear_1", "cow_1"]

    # end to end: propagation from the 2016 masks gives the same masks and J&F as from the 2017 PNGs
    a = run_davis(colour(), r16, str(tmp_path / "o16"), progress=False, overlay_frames=0)
    assert "DAVIS layout: DAVIS-2016" in capsys.readouterr().err
    b = run_davis(colour(), r17, str(tmp_path / "o17"), progress=False, overlay_frames=0)
    assert "DAVIS layout: DAVIS-2017" in capsys.readouterr().err
    assert a["J&F-Mean"] == b["J&F-Mean"] and 0.3 < a["J&F-Mean"] <= 1.0
    for t in range(7):
        p16 = np.asarray(Image.open(tmp_path / "o16" / "cow" / f"{t:05d}.png"))
        p17 = np.asarray(Image.open(tmp_path / "o17" / "cow" / f"{t:05d}.png"))
        np.testing.assert_array_equal(p16, p17)
        assert p16.max() == 1
    with open(tmp_path / "o16" / "results.json") as f:
        assert json.load(f)["layout"] == "DAVIS-2016"


def test_each_layout_is_its_own_class(one_object, tmp_path):
    """DavisDataset picks the layout's class; a layout class can be named directly (its split list must be
    there); a dataset pickles (multiprocessing) as the class it is."""
    import pickle

    bear = {"bear": one_object["bear"]}
    r16, r17 = write_2016(tmp_path / "d16", bear), write_2017(tmp_path / "d17", bear)
    ds16, ds17 = DavisDataset(r16), DavisDataset(r17)
    assert type(ds16) is Davis2016Dataset and type(ds17) is Davis2017Dataset
    assert isinstance(ds16, DavisDataset) and isinstance(ds17, DavisDataset)
    direct = Davis2016Dataset(r16)
    assert type(direct) is Davis2016Dataset and direct.frame_paths("bear") == ds16.frame_paths("bear")
    with pytest.raises(DatasetLayoutError, match=r"missing split list .*ImageSets/480p/val\.txt \(DAVIS-2016"):
        Davis2016Dataset(r17)
    assert ds17.palette("bear") is not None and ds16.palette("bear") is None  # 0/255 masks colour nothing
    for ds in (ds16, ds17):
        back = pickle.loads(pickle.dumps(ds))
        assert type(back) is type(ds) and back.sequences == ds.sequences == ["bear"]
        assert back.annotation_names("bear") == ds.annotation_names("bear")
        np.testing.assert_array_equal(back.first_annotation("bear")[1], ds.first_annotation("bear")[1])


def test_layout_detection_errors(one_object, tmp_path):
    bear = {"bear": one_object["bear"]}
    # both layouts' split lists: ambiguous unless one is chosen
    both = write_2017(tmp_path / "both", bear)
    write_2016(tmp_path / "both", bear)
    with pytest.raises(DatasetLayoutError, match=r"ambiguous.*ImageSets/2017/val\.txt.*ImageSets/480p/val\.txt"):
        DavisDataset(both)
    assert DavisDataset(both, layout="2016").layout == "DAVIS-2016"
    assert DavisDataset(both, layout="DAVIS-2017").layout == "DAVIS-2017"
    with pytest.raises(ValueError, match="unknown DAVIS layout"):
        DavisDataset(both, layout="2018")
    # neither: both expected files are named
    (tmp_path / "none").mkdir()
    with pytest.raises(DatasetLayoutError, match=r"ImageSets/2017/val\.txt.*ImageSets/480p/val\.txt"):
        DavisDataset(str(tmp_path / "none"))
    with pytest.raises(DatasetLayoutError, match=r"missing split list .*ImageSets/480p/val\.txt \(DAVIS-2016"):
        DavisDataset(write_2017(tmp_path / "only17", bear), layout="2016")
    # malformed DAVIS-2016 lists name the offending line
    r16 = write_2016(tmp_path / "d16", bear)
    lst = os.path.join(r16, "ImageSets", "480p", "val.txt")
    good = open(lst).read()
    for bad, msg in [
        ("/JPEGImages/480p/bear/00000.jpg\n", "expected '/JPEGImages/480p/<seq>/<frame>.jpg"),
        ("/JPEGImages/480p/bear/00000.jpg /Annotations/480p/cow/00000.png\n", "different frames"),
        ("/JPEGImages/1080p/bear/00000.jpg /Annotations/1080p/bear/00000.png\n", "expected /JPEGImages/480p/"),
        ("/JPEGImages/480p/bear/00099.jpg /Annotations/480p/bear/00099.png\n", "missing annotation .*00099.png"),
    ]:
        with open(lst, "w") as f:
            f.write(good + bad)
        with pytest.raises(DatasetLayoutError, match=msg) as e:
            DavisDataset(r16)
        if "missing" not in msg:
            assert f"val.txt:{len(good.splitlines()) + 1}" in str(e.value)
    # a pair list where DAVIS-2017 expects sequence names
    r17 = write_2017(
        tmp_path / "d17", bear, listed=["/JPEGImages/480p/bear/00000.jpg /Annotations/480p/bear/00000.png"]
    )
    with pytest.raises(DatasetLayoutError, match=r"val\.txt:1: expected one sequence name per line"):
        DavisDataset(r17)
    # a 0/255 mask under the DAVIS-2017 layout is void only: nothing to score, with a hint
    r = write_2017(tmp_path / "wrong", bear)
    for t in range(7):
        p = os.path.join(r, "Annotations", "480p", "bear", f"{t:05d}.png")
        write_palette_png(one_object["bear"][1][t] * 255, p)
    with pytest.raises(ValueError, match="anything to score: bear .*use the DAVIS-2016 layout"):
        evaluate(r, os.path.join(r, "Annotations", "480p"))


def test_names_cannot_leave_the_output_folder(one_object, tmp_path, capsys):
    bear = {"bear": one_object["bear"]}
    r = write_2017(tmp_path / "data" / "davis", bear, listed=["bear", "../../escape"])
    out = tmp_path / "data" / "out"
    with pytest.raises(DatasetLayoutError, match=r"val\.txt:2: invalid sequence name '\.\./\.\./escape'"):
        DavisDataset(r)
    with pytest.raises(DatasetLayoutError, match=r"\.\./\.\./escape"):
        run_davis(colour(), r, str(out), progress=False)
    rc = cli_main(["eval", "davis", "--model", "resnet18", "--root", r, "--out", str(out), "--device", "cpu"])
    assert rc == 2 and "../../escape" in capsys.readouterr().err
    assert not (tmp_path / "escape").exists() and not out.exists()
    (tmp_path / "n" / "Annotations" / "480p").mkdir(parents=True)
    for name in ("/etc", "a\\b", "..", "."):
        write_2017(tmp_path / "n", {}, listed=[name])
        with pytest.raises(DatasetLayoutError, match="val.txt:1: invalid sequence name"):
            DavisDataset(str(tmp_path / "n"), images=False)
    # DAVIS-2016 pairs
    r16 = write_2016(tmp_path / "d16", bear)
    lst = os.path.join(r16, "ImageSets", "480p", "val.txt")
    with open(lst, "a") as f:
        f.write("/JPEGImages/480p/../../escape/00000.jpg /Annotations/480p/../../escape/00000.png\n")
    with pytest.raises(DatasetLayoutError, match=r"val\.txt:8: invalid path .*component '\.\.'"):
        DavisDataset(r16)

    # VIP: one name per line, or CRW's two columns (the name is the image folder's last component)
    v = tmp_path / "vip"
    frames, labels = render_video(3, num_frames=3, size=(32, 32), num_objects=2)
    write_frames(frames, str(v / "Images" / "videos1"))
    write_palette_png(labels[0], str(v / "Category_ids" / "videos1" / "00000.png"))
    (v / "lists").mkdir()
    (v / "lists" / "val_videos.txt").write_text("videos1\n../escape\n")
    with pytest.raises(DatasetLayoutError, match=r"val_videos\.txt:2: invalid video name '\.\./escape'"):
        VipDataset(str(v))
    rc = cli_main(["eval", "vip", "--model", "resnet18", "--root", str(v), "--out", str(tmp_path / "vo")])
    assert rc == 2 and "../escape" in capsys.readouterr().err and not (tmp_path / "escape").exists()
    (v / "lists" / "val_videos.txt").write_text("/ Category_ids/videos1\n")  # no last folder to name it by
    with pytest.raises(DatasetLayoutError, match=r"val_videos\.txt:1: invalid video name .*empty"):
        VipDataset(str(v))
    (v / "lists" / "val_videos.txt").write_text("Images/videos1 Category_ids/videos1\n")
    assert [e.name for e in VipDataset(str(v)).videos] == ["videos1"]
    # JHMDB: <action>/<video>, each part a plain name
    j = tmp_path / "jhmdb"
    j.mkdir()
    (j / "jhmdb_vallist.txt").write_text("run/../../escape\n")
    with pytest.raises(DatasetLayoutError, match=r"jhmdb_vallist\.txt:1: invalid video name 'run/\.\./\.\./escape'"):
        JhmdbDataset(str(j))


def _gt_results(root, seqs, out):
    for s in seqs:
        d = os.path.join(root, "Annotations", "480p", s)
        for f in sorted(os.listdir(d)):
            write_label_png(np.asarray(Image.open(os.path.join(d, f))), os.path.join(out, s, f))
    return out


def test_sequences_with_nothing_to_score(tmp_path):
    frames, labels = render_video(5, num_frames=6, size=SIZE, num_objects=2)
    empty_first = labels.copy()
    empty_first[0] = 0
    videos = {
        "ok": (frames, labels),
        "one": (frames[:1], labels[:1]),
        "two": (frames[:2], labels[:2]),
        "empty": (frames, empty_first),
    }
    root = write_2017(tmp_path / "d", videos)
    res = _gt_results(root, videos, str(tmp_path / "gt"))
    with pytest.warns(UserWarning, match=r"3 of 4 sequences excluded.*one \(only 1 annotated frame:.*two \(only 2"):
        m = evaluate(root, res)
    assert m["J&F-Mean"] == 1.0 and {r["sequence"] for r in m["per_sequence"]} == {"ok"}
    reasons = {e["sequence"]: e["reason"] for e in m["excluded_sequences"]}
    assert set(reasons) == {"one", "two", "empty"} and "no object" in reasons["empty"]
    assert all(np.isfinite(m[k]) for k in GLOBAL_KEYS)
    paths = write_csvs(m, str(tmp_path / "csv"))
    with open(paths[2]) as f:
        assert [row[0] for row in csv.reader(f)] == ["Sequence", "one", "two", "empty"]

    # end to end: propagation runs on them, the summary lists them, the mean is over "ok" only
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="excluded"):
        r = run_davis(colour(), root, str(out), progress=False, overlay_frames=2)
    assert np.isfinite(r["J&F-Mean"])
    with open(out / "results.json") as f:
        saved = json.load(f)
    assert [e["sequence"] for e in saved["excluded_sequences"]] == ["one", "two", "empty"]
    assert saved["J&F-Mean"] == pytest.approx(r["J&F-Mean"]) and np.isfinite(saved["J&F-Mean"])
    assert "one" in (out / "excluded-sequences-val.csv").read_text()
    assert sorted(os.listdir(out / "one")) == ["00000.png"]

    # nothing left to score: an error, not a NaN
    with pytest.raises(ValueError, match="no DAVIS sequence has anything to score: one .*two .*empty"):
        evaluate(root, res, sequences=["one", "two", "empty"])
    rc = cli_main(
        ["eval", "davis", "--model", "resnet18", "--root", root, "--out", str(tmp_path / "o2"), "--device", "cpu"]
        + ["--sequences", "two", "--no-progress"]
    )
    assert rc == 2


def test_non_contiguous_ids_warn(tmp_path):
    frames, labels = render_video(6, num_frames=5, size=SIZE, num_objects=2)
    labels = np.where(labels == 2, 200, labels).astype(np.uint8)
    root = write_2017(tmp_path / "d", {"gap": (frames, labels)})
    res = _gt_results(root, ["gap"], str(tmp_path / "gt"))
    with pytest.warns(UserWarning, match=r"gap: .*ids skip 2\.\.199.*198 are empty objects"):
        m = evaluate(root, res)
    # scored as the official toolkit: 200 objects, the 198 empty ones perfect when left empty
    assert len(m["per_sequence"]) == 200 and m["J&F-Mean"] == 1.0 and not m["excluded_sequences"]
    miss = str(tmp_path / "miss")
    for t in range(5):  # results that lose object 200 entirely
        write_label_png(np.where(labels[t] == 200, 0, labels[t]), os.path.join(miss, "gap", f"{t:05d}.png"))
    with pytest.warns(UserWarning, match="empty objects"):
        m = evaluate(root, miss)
    assert m["J-Mean"] == pytest.approx(199 / 200)
