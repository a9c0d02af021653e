"""Each metric against hand-computed values on small cases."""

import numpy as np
import pytest

from marionette.data import GroundTruth
from marionette.eval import (
    HUD_FILTERS,
    NO_LABEL,
    ObjectTable,
    assign_labels,
    average_precision,
    box_iou,
    clustering_scores,
    few_shot_accuracy,
    foreground_ari,
    precision_recall,
    sprite_purity,
    sprite_recovery,
    sprites_per_class,
    temporal_consistency,
    view_labels,
)


class TestLabels:
    def test_wide_box_does_not_match_its_transpose(self):
        gt = np.array([[0.0, 0.0, 20.0, 4.0]])  # wide in x, short in y
        labels = assign_labels(
            np.array([[0, 0, 20, 4], [0, 0, 4, 20], [0, 0, 10, 4]]), gt, np.array(["wide"])
        )
        # The transpose covers 4 x 4 of the 20 x 4 box (20 %); half the box covers 50 %.
        assert labels.tolist() == ["wide", NO_LABEL, "wide"]

    def test_larger_prediction_is_not_penalised_and_ties_go_first(self):
        gt = np.array([[10.0, 10.0, 14.0, 14.0], [10.0, 10.0, 14.0, 14.0]])
        labels = assign_labels(np.array([[0.0, 0.0, 40.0, 40.0]]), gt, np.array(["a", "b"]))
        assert labels.tolist() == ["a"]

    def test_frame_without_ground_truth(self):
        labels = assign_labels(np.array([[0.0, 0.0, 4.0, 4.0]]), np.zeros((0, 4)), np.array([]))
        assert labels.tolist() == [NO_LABEL]

    def test_space_invaders_hud_filter(self):
        pred = np.array([[0.0, 2.0, 10.0, 12.0], [0.0, 40.0, 10.0, 50.0]])
        gt_one_score = np.array([[0.0, 2.0, 30.0, 10.0], [0.0, 40.0, 10.0, 50.0]])
        assert HUD_FILTERS["SpaceInvaders"](pred, gt_one_score, 128).tolist() == [False, True]
        gt_two_scores = np.array([[0.0, 2.0, 30.0, 10.0], [60.0, 2.0, 90.0, 10.0]])
        assert HUD_FILTERS["SpaceInvaders"](pred, gt_two_scores, 128).tolist() == [True, True]


def _table(frames, boxes, sprites, codes, names, clips=None, times=None):
    n = len(frames)
    return ObjectTable(
        frame=np.asarray(frames),
        layer=np.zeros(n, int),
        row=np.zeros(n, int),
        col=np.zeros(n, int),
        sprite=np.asarray(sprites),
        presence=np.ones(n),
        boxes=np.asarray(boxes, float),
        centers=np.zeros((n, 2)),
        codes=np.asarray(codes, float),
        names=names,
        clips=np.asarray(clips if clips is not None else [0] * len(names)),
        times=np.asarray(times if times is not None else range(len(names))),
        size=(32, 32),
        code="codes",
        dictionary=np.zeros((max(sprites, default=0) + 1, 4, 8, 8), np.float32),
        psnr={"soft": 30.0, "hard": 29.0, "background": 20.0},
    )


def test_views():
    objects = _table(
        [0, 0, 0], [[0, 0, 8, 8], [0, 20, 8, 28], [20, 20, 28, 28]], [0, 1, 2], np.eye(3), ["0.png"]
    )
    gt = GroundTruth(
        frame=["0.png", "0.png"],
        clip=[0, 0],
        t=[0, 0],
        label=["score", "ship"],
        boxes=[[0, 0, 8, 8], [0, 20, 8, 28]],
        moving=[False, True],
        instance=[0, 1],
    )
    all_labels, keep = view_labels(objects, gt, "all")
    assert all_labels.tolist() == ["score", "ship", NO_LABEL] and keep.all()
    moving, _ = view_labels(objects, gt, "moving")
    assert moving.tolist() == [NO_LABEL, "ship", NO_LABEL]
    relevant, keep = view_labels(objects, gt, "relevant")
    assert keep.tolist() == [False, True, False]


class TestRepresentation:
    def test_few_shot_separable(self):
        rng = np.random.default_rng(0)
        labels = np.repeat(["a", "b", "c"], 40)
        codes = np.eye(3)[np.repeat([0, 1, 2], 40)] * 5 + rng.normal(0, 0.1, (120, 3))
        order = rng.permutation(120)
        result = few_shot_accuracy(codes[order], labels[order], repeats=3)
        assert result["ordered"] == {1: 1.0, 4: 1.0, 16: 1.0, 64: 1.0}
        assert result["mean"][1] == 1.0 and result["std"][64] == 0.0

    def test_few_shot_uses_the_last_tenth_as_test(self):
        # The last 10 % are all "b" coded like "a": ordered accuracy is 0.
        labels = np.array(["a"] * 45 + ["b"] * 45 + ["b"] * 10)
        codes = np.array([[1.0, 0.0]] * 45 + [[0.0, 1.0]] * 45 + [[1.0, 0.0]] * 10)
        result = few_shot_accuracy(codes, labels, shots=(4,), repeats=1)
        assert result["ordered"][4] == 0.0

    def test_few_shot_needs_two_classes(self):
        assert few_shot_accuracy(np.zeros((20, 2)), np.array(["a"] * 20)) is None

    def test_clustering(self):
        codes = np.array([[0.0, 0.0]] * 10 + [[10.0, 10.0]] * 10)
        labels = np.array(["x"] * 10 + ["y"] * 10)
        assert clustering_scores(codes, labels) == {"ami": 1.0, "ari": 1.0}
        assert clustering_scores(codes, np.array(["x"] * 20)) is None

    def test_sprite_purity(self):
        assert sprite_purity(np.array([0, 0, 1, 1]), np.array(["a", "a", "a", "b"])) == 0.75

    def test_sprite_recovery_finds_a_sprite_anywhere_in_the_window(self):
        true = np.zeros((5, 4, 4), np.uint8)
        true[..., 3] = 255
        true[0, 0, 3] = 0  # a 5 x 4 block less one corner: 19 pixels
        learned = np.zeros((3, 4, 12, 12), np.float32)
        learned[0, 3, 6:11, 1:5] = 0.9  # the full block: IoU 19 / 20
        learned[1, 3, 0:3, 0:3] = 0.9  # a small square
        learned[2, 3] = 0.9  # everything, unused
        result = sprite_recovery([true], learned, np.array([True, True, False]))
        assert result["per_sprite"] == {"0": pytest.approx(19 / 20)}
        assert result["matched"] == 1.0
        only_square = sprite_recovery([true], learned, np.array([False, True, False]))
        assert only_square["min"] == pytest.approx(9 / 19)  # 9 shared, 19 + 9 - 9 in union
        assert sprite_recovery([true], learned, np.zeros(3, bool))["mean"] == 0.0

    def test_sprites_per_class_is_the_smallest_covering_set(self):
        from itertools import combinations

        rng = np.random.default_rng(0)
        for _ in range(30):
            sprites = rng.integers(0, 5, 40)
            labels = rng.choice(["a", "b", "c"], 40)
            result = sprites_per_class(sprites, labels, share=0.8)
            smallest = []
            for name in np.unique(labels):
                drawn = sprites[labels == name]
                ids = np.unique(drawn)
                smallest.append(min(
                    size
                    for size in range(1, len(ids) + 1)
                    for chosen in combinations(ids, size)
                    if np.isin(drawn, chosen).sum() >= 0.8 * len(drawn)
                ))  # fmt: skip
            assert result == {"mean": np.mean(smallest), "max": max(smallest),
                              "used": len(np.unique(sprites))}  # fmt: skip
        assert sprites_per_class(np.zeros(0, np.int64), np.array([])) is None


class TestDetection:
    def test_precision_recall_by_hand(self):
        gt = np.array([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
        pred = np.array([[1.0, 1.0, 11.0, 11.0], [0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]])
        conf = np.array([0.9, 0.8, 0.7])
        # The first takes GT 0; the second also prefers GT 0, which is used: a false positive,
        # and a repeat; the third finds nothing.
        result = precision_recall([(pred, conf, gt)], (64, 64))
        assert result["precision"] == pytest.approx(1 / 3)
        assert result["recall"] == pytest.approx(1 / 2)
        assert result["f_score"] == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))
        assert result["repeated"] == pytest.approx(1 / 3)

    def test_a_repeat_is_the_less_confident_of_two_draws(self):
        gt = np.array([[0.0, 0.0, 10.0, 10.0]])
        twice = np.array([[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0]])
        result = precision_recall([(twice, np.array([0.6, 0.9]), gt)], (64, 64))
        assert result["precision"] == 0.5 and result["repeated"] == 0.5
        far = precision_recall([(twice + 30, np.array([0.6, 0.9]), gt)], (64, 64))
        assert far["precision"] == 0.0 and far["repeated"] == 0.0
        assert precision_recall([], (64, 64))["repeated"] == 0.0

    def test_recall_by_class_counts_the_boxes_taken(self):
        gt = np.array([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0], [40.0, 40, 44, 44]])
        # Two detections on the first box (one a repeat), one on the third, none on the second.
        pred = np.array([[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0], [40.0, 40, 44, 44]])
        frames = [(pred, np.array([0.9, 0.8, 0.7]), gt), (gt[:1], [1.0], gt[:1])]
        classes = [np.array(["duck", "gun", "gun"]), np.array(["gun"])]
        result = precision_recall(frames, (64, 64), classes)
        assert result["recall_by_class"] == {"duck": 1.0, "gun": pytest.approx(2 / 3)}
        assert result["recall"] == pytest.approx(3 / 4)
        assert "recall_by_class" not in precision_recall(frames, (64, 64))
        with pytest.raises(ValueError, match="one label per ground-truth box"):
            precision_recall(frames, (64, 64), classes[:1])

    def test_centre_criterion_is_normalised_per_axis(self):
        # 64 px tall, 16 px wide frame: a 3 px shift in x is far more than in y.
        gt = np.array([[4.0, 20.0, 8.0, 24.0]])
        near_y = precision_recall([(gt + [0, 3, 0, 3], [1.0], gt)], (64, 16))
        near_x = precision_recall([(gt + [3, 0, 3, 0], [1.0], gt)], (64, 16))
        assert near_y["recall"] == 1.0 and near_x["recall"] == 0.0

    def test_average_precision(self):
        gt = np.array([[0.0, 0.0, 10.0, 10.0]])
        perfect = average_precision([(gt, [1.0], gt)])
        assert perfect["mean"] == 1.0
        # A confident false positive first, then the hit: precision 1/2 at recall 1.
        frames = [(np.array([[40.0, 40, 50, 50], [0, 0, 10, 10]]), [0.9, 0.5], gt)]
        assert average_precision(frames, thresholds=(0.5,))["0.5"] == pytest.approx(0.5)
        # IoU of a half-overlapping box is 1/3: a hit at 0.3, a miss at 0.4.
        half = [(np.array([[5.0, 0, 15, 10]]), [1.0], gt)]
        assert box_iou(half[0][0], gt)[0, 0] == pytest.approx(1 / 3)
        ap = average_precision(half, thresholds=(0.3, 0.4))
        assert ap["0.3"] == 1.0 and ap["0.4"] == 0.0

    def test_frames_without_ground_truth_are_false_positives(self):
        result = precision_recall([(np.array([[0.0, 0, 4, 4]]), [1.0], np.zeros((0, 4)))], (8, 8))
        assert result["precision"] == 0.0 and result["recall"] == 0.0


def test_foreground_ari():
    truth = np.array([[[-1, 0, 0], [1, 1, -1]]])
    assert foreground_ari(np.array([[[5, 7, 7], [3, 3, 9]]]), truth) == 1.0
    assert foreground_ari(np.array([[[0, 0, 1], [0, 1, 0]]]), truth) < 0.5
    assert foreground_ari(np.full((1, 2, 3), 0), np.full((1, 2, 3), -1)) is None


def test_temporal_consistency():
    # One instance over frames 0, 1, 2: sprite 3, 3, then 4; codes stay nearest throughout.
    objects = _table(
        frames=[0, 0, 1, 1, 2],
        boxes=[[0, 0, 8, 8], [20, 20, 28, 28], [1, 0, 9, 8], [20, 20, 28, 28], [2, 0, 10, 8]],
        sprites=[3, 1, 3, 1, 4],
        codes=[[1, 0], [0, 1], [1, 0.1], [0, 1], [1, 0.2]],
        names=["a", "b", "c"],
    )
    gt = GroundTruth(
        frame=["a", "b", "c"],
        clip=[0, 0, 0],
        t=[0, 1, 2],
        label=["x"] * 3,
        boxes=[[0, 0, 8, 8], [1, 0, 9, 8], [2, 0, 10, 8]],
        moving=[True] * 3,
        instance=[7] * 3,
    )
    result = temporal_consistency(objects, gt)
    cos = [np.cos(np.arctan(0.1)), np.cos(np.arctan(0.2) - np.arctan(0.1))]
    assert result == pytest.approx(
        {"sprite": 0.5, "code_nn": 1.0, "code_cos": np.mean(cos), "pairs": 2}
    )
