"""Planning is deterministic in (spec, seed), keeps boxes inside the image, and
draws box sizes from the requested distributions."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from factory.core import WorkItem
from factory.planning import NEGATIVE, plan, planned_count, quotas
from factory.spec import spec_from_dict


def make_spec(**over):
    base = {
        "name": "p",
        "seed": 3,
        "count": 200,
        "image": {"width": 256, "height": 192},
        "negatives": 0.1,
        "defects": [
            {"class": "crack", "weight": 2, "boxes": {"count": [1, 3], "size": {"min": 0.05, "max": 0.2}}},
            {"class": "black_spot", "weight": 1, "boxes": {"count": [1, 1], "size": {"dist": "loguniform", "min": 0.04, "max": 0.15}}},
        ],
    }
    base.update(over)
    return spec_from_dict(base)


def dump(items):
    return json.dumps([i.to_row() for i in items], sort_keys=True).encode()


def test_same_spec_and_seed_give_a_byte_identical_plan():
    assert dump(plan(make_spec())) == dump(plan(make_spec()))


def test_changing_the_seed_changes_the_plan():
    assert dump(plan(make_spec())) != dump(plan(make_spec(seed=4)))


def test_items_depend_only_on_their_index():
    """A top-up round (start=k) names exactly the items a longer plan has there."""
    s = make_spec()
    assert dump(plan(s, n=30)[10:]) == dump(plan(s, n=20, start=10))


def test_ids_are_unique_and_stable():
    items = plan(make_spec(), n=500)
    assert len({i.item_id for i in items}) == 500
    assert items[7].item_id.endswith("-0000007")


def test_overprovision():
    s = make_spec(count=100)
    assert planned_count(s, 1.25) == 125 and len(plan(s, overprovision=1.25)) == 125
    with pytest.raises(ValueError):
        planned_count(s, 0.5)


def test_row_round_trip():
    for item in plan(make_spec(), n=20):
        assert WorkItem.from_row(json.loads(json.dumps(item.to_row()))) == item


def test_boxes_inside_image_and_not_overlapping():
    items = plan(make_spec(count=400))
    for it in items:
        for b in it.boxes:
            assert b.inside(it.width, it.height) and b.width >= 2 and b.height >= 2
        for i, a in enumerate(it.boxes):
            for b in it.boxes[i + 1:]:
                assert not a.intersects(b)


def test_negatives_and_class_mix_follow_weights():
    items = plan(make_spec(count=2000))
    assert sum(i.is_negative for i in items) == 200  # kept, not sampled
    pos = [i for i in items if not i.is_negative]
    assert sum(i.classes == ("crack",) for i in pos) == 1200
    counts = [len(i.boxes) for i in pos if i.classes == ("crack",)]
    assert set(counts) == {1, 2, 3}


@pytest.mark.parametrize("count,negatives,weights", [
    (48, 0.1, [2, 1]), (7, 0.5, [1, 1, 1]), (1, 0.3, [1]), (101, 0.0, [0.2, 0.3, 0.5, 0.0]), (10, 1.0, [1, 2]),
])
def test_class_and_negative_counts_are_exact_over_the_first_count_items(count, negatives, weights):
    """Largest-remainder quotas of `count`, held exactly by the first `count` plan indices."""
    names = ["crack", "black_spot", "scratch", "broken_gate"]
    spec = make_spec(count=count, negatives=negatives, defects=[
        {"class": names[k], "weight": w, "boxes": {"size": {"min": 0.05, "max": 0.1}}} for k, w in enumerate(weights)])
    q = quotas(spec)
    assert sum(q.values()) == count
    shares = [negatives] + [(1 - negatives) * w / sum(weights) for w in weights]
    for label, share in zip([NEGATIVE, *range(len(weights))], shares):
        assert abs(q[label] - count * share) < 1  # rounding moves a share by less than one image
    items = plan(spec)
    assert sum(i.is_negative for i in items) == q[NEGATIVE]
    for c, n in enumerate(names[:len(weights)]):
        assert sum(i.classes == (n,) for i in items) == q[c]
    # every later block of `count` indices (over-provisioned items, top-up rounds) keeps the mix
    later = plan(spec, n=count, start=2 * count)
    assert sum(i.is_negative for i in later) == q[NEGATIVE]


def test_the_48_image_example_from_the_issue():
    """negatives: 0.1 of 48 images is 5 (4.8 rounded), not whatever a coin gives (it gave 7)."""
    spec = make_spec(count=48)
    items = plan(spec)
    assert sum(i.is_negative for i in items) == 5
    assert sum(i.classes == ("crack",) for i in items) == 29 and sum(i.classes == ("black_spot",) for i in items) == 14


def test_the_mix_is_shuffled_and_seeded():
    a = [i.is_negative for i in plan(make_spec(count=200))]
    b = [i.is_negative for i in plan(make_spec(count=200, seed=4))]
    assert a != b and sum(a) == sum(b) == 20
    assert 0 < sum(a[:100]) < 20  # spread over the plan, not bunched at its start or end


def test_several_classes_per_image_keep_the_primary_mix():
    spec = make_spec(count=300, negatives=0.0, classes_per_image=[1, 2], defects=[
        {"class": c, "weight": w, "boxes": {"size": {"min": 0.05, "max": 0.1}}}
        for c, w in [("crack", 1), ("black_spot", 1), ("scratch", 1)]])
    items = plan(spec)
    assert {len(i.classes) for i in items} == {1, 2}
    assert all(not i.is_negative for i in items)
    counts = {c: sum(c in i.classes for i in items) for c in spec.class_names}
    assert all(n >= 100 for n in counts.values())  # each holds its 100 primaries, plus some second classes


def test_box_sizes_follow_the_requested_distribution():
    """KS test at a resolution where pixel rounding is negligible."""
    spec = spec_from_dict({
        "name": "ks", "seed": 11, "count": 600, "image": {"width": 2048, "height": 2048},
        "defects": [{"class": "crack", "boxes": {"count": [1, 1], "overlap": True,
                     "size": {"dist": "loguniform", "min": 0.02, "max": 0.3},
                     "aspect": {"dist": "uniform", "min": 0.5, "max": 2.0}}}],
    })
    boxes = [b for it in plan(spec) for b in it.boxes]
    sizes = np.array([np.sqrt(b.width * b.height) / 2048 for b in boxes])
    aspects = np.array([b.width / b.height for b in boxes])
    lo, hi = np.log(0.02), np.log(0.3)
    assert stats.kstest(np.log(sizes), stats.uniform(lo, hi - lo).cdf).pvalue > 0.01
    assert stats.kstest(aspects, stats.uniform(0.5, 1.5).cdf).pvalue > 0.01
    # and the uniform-size hypothesis is clearly rejected: the test has power
    assert stats.kstest(sizes, stats.uniform(0.02, 0.28).cdf).pvalue < 1e-6


def test_normal_position_centres_boxes():
    spec = spec_from_dict({
        "name": "pos", "count": 400, "image": {"width": 512, "height": 512},
        "defects": [{"class": "crack", "boxes": {"overlap": True, "size": {"min": 0.05, "max": 0.06},
                     "position": {"dist": "normal", "center": [0.25, 0.75], "std": 0.05}}}],
    })
    cx = np.array([(b.x1 + b.x2) / 2 / 512 for it in plan(spec) for b in it.boxes])
    cy = np.array([(b.y1 + b.y2) / 2 / 512 for it in plan(spec) for b in it.boxes])
    assert abs(cx.mean() - 0.25) < 0.01 and abs(cy.mean() - 0.75) < 0.01
    assert abs(cx.std() - 0.05) < 0.01


def test_style_parameters_inside_domain_ranges():
    s = make_spec(domain={"brightness": [0.5, 0.6], "busbars": [3, 3], "grid_pitch": [7, 9]})
    for it in plan(s, n=100):
        assert 0.5 <= it.style["brightness"] <= 0.6
        assert it.style["busbars"] == 3 and 7 <= it.style["grid_pitch"] <= 9
