"""Few-shot sampling and the base/new rule (method.md "Evaluation protocols")."""

import random

import pytest

from clipcite.data.splits import NotEnoughShotsError, base_new_classes, relabel, sample_few_shot, val_shots

IDS = [f"img{i:03d}" for i in range(60)]
LABELS = [i % 5 for i in range(60)]  # 12 images per class


def test_same_seed_same_ids_and_k_per_class():
    a = sample_few_shot(IDS, LABELS, 4, seed=1)
    b = sample_few_shot(IDS, LABELS, 4, seed=1)
    assert a == b
    counts = [sum(1 for i in a if LABELS[i] == c) for c in range(5)]
    assert counts == [4] * 5
    assert sample_few_shot(IDS, LABELS, 4, seed=2) != a


def test_independent_of_row_order_and_nested_in_larger_k():
    shuffled = list(range(60))
    random.Random(7).shuffle(shuffled)
    ids2 = [IDS[i] for i in shuffled]
    labels2 = [LABELS[i] for i in shuffled]
    picked = {IDS[i] for i in sample_few_shot(IDS, LABELS, 4, seed=3)}
    picked2 = {ids2[i] for i in sample_few_shot(ids2, labels2, 4, seed=3)}
    assert picked == picked2
    larger = {IDS[i] for i in sample_few_shot(IDS, LABELS, 8, seed=3)}
    assert picked < larger


def test_global_random_state_is_not_used():
    random.seed(0)
    a = sample_few_shot(IDS, LABELS, 2, seed=5)
    random.seed(123)
    assert sample_few_shot(IDS, LABELS, 2, seed=5) == a


def test_too_few_images_names_the_class_unless_allowed():
    keep = [i for i in range(60) if LABELS[i] != 3 or i < 30]  # class 3 keeps 6 of its 12 images
    ids, labels = [IDS[i] for i in keep], [LABELS[i] for i in keep]
    names = ["cat", "dog", "owl", "fox", "yak"]
    with pytest.raises(NotEnoughShotsError, match=r"'fox' \(label 3\) has 6 .*shots=8"):
        sample_few_shot(ids, labels, 8, seed=1, classnames=names)
    picked = sample_few_shot(ids, labels, 8, seed=1, allow_fewer=True)
    assert [sum(1 for i in picked if labels[i] == c) for c in range(5)] == [8, 8, 8, 6, 8]


def test_val_shots_is_k_unless_set():
    assert [val_shots(k) for k in (1, 2, 4, 8, 16)] == [1, 2, 4, 8, 16]
    assert [val_shots(k, 4) for k in (1, 16)] == [4, 4]


def test_base_new_rule_sorted_labels_first_half_rounded_up():
    assert base_new_classes([4, 0, 2, 1, 3, 3]) == ([0, 1, 2], [3, 4])
    assert base_new_classes([10, 11, 12, 13]) == ([10, 11], [12, 13])
    assert relabel([12, 13, 12], [12, 13]) == [0, 1, 0]
    with pytest.raises(ValueError, match="label 3"):
        relabel([3], [0, 1])
