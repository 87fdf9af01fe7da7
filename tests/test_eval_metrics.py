"""Metrics against values worked out by hand."""

import numpy as np
import pytest

from videomac.eval.davis import evaluate_sequence
from videomac.eval.metrics import (
    confusion_matrix,
    db_eval_boundary,
    db_eval_iou,
    db_statistics,
    disk_dilate,
    f_measure,
    miou_from_confusion,
    pck,
    pck_from_distances,
    seg2bmap,
)


def box(shape, y0, y1, x0, x1):
    m = np.zeros(shape, bool)
    m[y0:y1, x0:x1] = True
    return m


def test_iou_by_hand():
    a = box((10, 10), 0, 4, 0, 4)  # 16 px
    b = box((10, 10), 2, 6, 2, 6)  # 16 px, overlap 2x2 = 4
    assert db_eval_iou(a, b) == pytest.approx(4 / 28)
    assert db_eval_iou(np.zeros((5, 5)), np.zeros((5, 5))) == 1.0  # both empty
    assert db_eval_iou(a, np.zeros_like(a)) == 0.0
    void = box((10, 10), 0, 10, 4, 10)  # hides all of b outside a's columns
    # kept columns 0..3: union = 16 + 8 - 4
    assert db_eval_iou(a, b, void) == pytest.approx(4 / 20)
    stack = db_eval_iou(np.stack([a, a]), np.stack([b, np.zeros_like(b)]))
    np.testing.assert_allclose(stack, [4 / 28, 0.0])


def test_seg2bmap_and_disk():
    m = box((6, 6), 1, 4, 1, 4)
    b = seg2bmap(m)
    # The toolkit marks pixels whose right/lower/lower-right neighbour differs.
    expect = np.zeros((6, 6), bool)
    expect[0, 0:4] = True
    expect[0:4, 0] = True
    expect[1:4, 3] = True
    expect[3, 1:4] = True
    np.testing.assert_array_equal(b, expect)
    assert b[3, 3] and b[1, 3] and b[3, 1] and not b[2, 2] and not b[5, 5]
    d = disk_dilate(box((9, 9), 4, 5, 4, 5), 2)
    yy, xx = np.mgrid[:9, :9]
    np.testing.assert_array_equal(d, (yy - 4) ** 2 + (xx - 4) ** 2 <= 4)


def test_f_measure_cases():
    a = box((50, 50), 10, 30, 10, 30)
    assert f_measure(a, a) == 1.0
    assert f_measure(np.zeros_like(a), np.zeros_like(a)) == 1.0  # both empty
    assert f_measure(np.zeros_like(a), a) == 0.0  # nothing predicted: P=1, R=0
    assert f_measure(a, np.zeros_like(a)) == 0.0  # P=0, R=1
    # bound_pix = ceil(0.008 * |(50, 50)|) = 1: a one-pixel shift matches, a far box does not.
    assert f_measure(box((50, 50), 11, 31, 10, 30), a) == 1.0
    assert f_measure(box((50, 50), 35, 45, 35, 45), a) == 0.0
    # Half the predicted boundary on the GT: a 20x20 box vs the same box plus a far 20x20 one.
    pred = a | box((50, 50), 10, 30, 35, 45)
    bf, bg = seg2bmap(pred).sum(), seg2bmap(a).sum()
    p = bg / bf  # only the first box's boundary lies within 1 px of the GT boundary; recall is 1
    assert f_measure(pred, a) == pytest.approx(2 * p / (p + 1))
    np.testing.assert_allclose(db_eval_boundary(np.stack([a, a]), np.stack([a, 0 * a])), [1.0, 0.0])


def test_db_statistics():
    v = np.array([1.0, 0.8, 0.6, 0.4, 0.2, 0.0, 0.0, 0.0])
    M, R, D = db_statistics(v)
    assert M == pytest.approx(0.375)
    assert R == pytest.approx(3 / 8)
    # ids = round(linspace(1, 8, 5)) - 1 = [0, 2, 4, 6, 7]: bins v[0:3], v[2:5], v[4:7], v[6:8]
    assert D == pytest.approx(np.mean([1.0, 0.8, 0.6]) - 0.0)


def test_sequence_objects_absent_and_void():
    H = W = 20
    T = 6
    gt = np.zeros((T, H, W), np.uint8)
    gt[:, 2:8, 2:8] = 1
    gt[0, 12:18, 12:18] = 2
    gt[1:3, 12:18, 12:18] = 2  # object 2 leaves the scene after frame 2
    gt[:, 0, :] = 255  # void row
    res = gt[1:-1].copy()
    res[res == 255] = 0
    rows = evaluate_sequence(gt, res)
    assert [r["object"] for r in rows] == [1, 2]
    assert rows[0]["J-Mean"] == 1.0 and rows[1]["J-Mean"] == 1.0  # absent frames: both empty -> 1
    assert rows[1]["F-Mean"] == 1.0
    # Predict object 2 in a frame where it is absent: J = 0 for that frame.
    res2 = res.copy()
    res2[3, 12:18, 12:18] = 2
    j = evaluate_sequence(gt, res2)[1]["J"]
    assert j == [1.0, 1.0, 1.0, 0.0]
    # Void pixels are background in the semi-supervised task, ignored on request.
    res3 = res.copy()
    res3[:, 0, 2:8] = 1
    j_bg = evaluate_sequence(gt, res3)[0]["J"][0]
    assert j_bg == pytest.approx(36 / 42)
    assert evaluate_sequence(gt, res3, ignore_void=True)[0]["J"][0] == 1.0
    with pytest.raises(ValueError, match="object id 3"):
        evaluate_sequence(gt, np.full_like(res, 3))


def test_miou_and_pck():
    gt = np.array([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 1, 1]])
    conf = confusion_matrix(gt, pred, 20)
    miou, iou = miou_from_confusion(conf)
    # class 0: tp 1, gt 2, pred 2 -> 1/3; class 1: tp 3, gt 3, pred 4 -> 3/4; class 2: 1/2
    np.testing.assert_allclose(iou[:3], [1 / 3, 3 / 4, 1 / 2])
    assert np.isnan(iou[3:]).all()
    assert miou == pytest.approx((1 / 3 + 3 / 4 + 1 / 2) / 3)

    # One joint pair, 3 frames; box diagonal of the GT joints = 10 * sqrt(2), size 0.6 * that.
    gt_k = np.zeros((2, 2, 3))
    gt_k[:, 1] = 10.0
    pred_k = gt_k.copy()
    size = 0.6 * 10 * np.sqrt(2)
    pred_k[0, 0, 1] += 0.15 * size  # off by 0.15: PCK@0.2 ok, @0.1 not
    pred_k[0, 1, 2] += 0.05 * size
    pred_k[:, 0, 2] = -1  # not predicted: skipped
    out = pck(pred_k, gt_k)
    # joint 0: frame 1 only (frame 2 skipped, frame 0 skipped) -> @0.1: 0, @0.2: 1
    # joint 1: frames 1, 2; box of frame 2 uses the predicted joints only -> degenerate -> inf -> miss
    assert out["PCK@0.2"] == pytest.approx((1 + 0.5) / 2)
    assert out["PCK@0.1"] == pytest.approx((0 + 0.5) / 2)
    assert pck_from_distances([[0.05, 0.15], [0.3]]) == {"PCK@0.1": 0.25, "PCK@0.2": 0.5}
