"""Golden-template instances, context placement and binary images, on tiny
hand-made boards: a YOLO set whose images have aligned defect-free twins
(`templates/` beside `images/`), and the DeepPCB importer on the real set."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from factory.core import Box
from factory.data.adapters import load_real
from factory.data.instances import decode_map, difference_instances
from factory.data.realset import publish_real
from factory.generators.base import load_generator
from factory.generators.checks import check_spec
from factory.generators.transplant.bank import Instance, load_bank, topology
from factory.generators.transplant.paste import grey_levels, paste, place, vary
from factory.planning import plan
from factory.spec import spec_from_dict

W = 96
TRACE = slice(40, 50)  # rows of the one horizontal trace (copper = 0 on a white board)


def _board(trace_rows=TRACE, width=W) -> np.ndarray:
    b = np.full((width, width), 255, np.uint8)
    b[trace_rows, :] = 0
    return b


def _write(root, split, stem, image, template, boxes):
    for sub, arr in (("images", image), ("templates", template)):
        (root / sub / split).mkdir(parents=True, exist_ok=True)
        if arr is not None:
            Image.fromarray(arr).save(root / sub / split / f"{stem}.png")
    (root / "labels" / split).mkdir(parents=True, exist_ok=True)
    (root / "labels" / split / f"{stem}.txt").write_text(
        "".join(f"{c} {(x1 + x2) / 2 / W} {(y1 + y2) / 2 / W} {(x2 - x1) / W} {(y2 - y1) / W}\n" for c, x1, y1, x2, y2 in boxes))


def _make_set(root, with_twins=True):
    """Train boards with an `open` (a 4-px white cut through the trace), boxed loosely;
    val: one board. Returns the drawn difference of the first train board."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "data.yaml").write_text("train: images/train\nval: images/val\nnames: [open, short]\n")
    drawn = None
    for i in range(3):
        tmpl = _board()
        img = tmpl.copy()
        x = 20 + 20 * i
        img[TRACE, x:x + 4] = 255  # the open
        if i == 0:
            drawn = img != tmpl
        _write(root, "train", f"b{i}", img, tmpl if with_twins or i else None, [(0, x - 6, 34, x + 10, 56)])
    _write(root, "val", "v0", _board(), _board(), [])
    return drawn


@pytest.fixture
def boards(tmp_path):
    drawn = _make_set(tmp_path / "pcb")
    reg = (tmp_path / "reg").as_uri()
    publish_real(load_real("yolo", tmp_path / "pcb"), reg, "tiny-pcb", 1)
    bg = tmp_path / "bg"  # defect-free boards of the line with the trace elsewhere
    bg.mkdir()
    for i, rows in enumerate((slice(20, 30), slice(62, 72))):
        Image.fromarray(_board(rows)).save(bg / f"clean{i}.png")
    return {"tmp": tmp_path, "reg": reg, "drawn": drawn, "bg": bg}


def _spec(boards, **params):
    return spec_from_dict({
        "name": "tpcb", "seed": 3, "count": 6, "image": {"width": W, "height": W, "channels": 1},
        "domain": {"references": [boards["bg"].as_uri()]},
        "defects": [{"class": "open", "boxes": {"count": [1, 1], "size": {"min": 0.15, "max": 0.2}}}],
        "generators": [{"kind": "transplant", "params": {"source": "tiny-pcb@1", **params}}],
        "quality": {"duplicate_distance": -1},
        "output": {"uri": boards["reg"], "shard_size": 4},
    })


def _generate(spec, n=6):
    spec = check_spec(spec)
    g = spec.generators[0]
    gen = load_generator(g.kind, g.checkpoint, g.params)
    items = [it for it in plan(spec, n=n) if it.boxes]
    return items, gen.generate(items)


def test_instance_mask_is_the_drawn_difference(boards):
    real = load_real("yolo", boards["tmp"] / "pcb")
    s = next(s for s in real.samples if s.stem == "b0")
    inst = decode_map(s.instances)
    assert ((inst == 1) == boards["drawn"]).all()  # the cut only, never the box's background
    bank = load_bank(f"{boards['reg']}/tiny-pcb@1")
    i0 = next(i for i in bank["open"] if "b0" in i.origin)
    assert i0.exact and i0.context is not None
    assert (i0.context == 0).sum() > 0 and (i0.context[i0.alpha >= 0.5] == 0).all()  # the twin shows the trace there


def test_difference_drops_specks_and_stays_in_its_box():
    a, b = np.zeros((20, 20), np.uint8), np.zeros((20, 20), np.uint8)
    a[5:8, 5:8] = 255  # the defect
    a[12, 12] = 255  # one-pixel alignment noise inside the box
    a[1, 18] = 255  # a difference outside every box
    m = difference_instances(a, b, [Box(0, "x", 3, 3, 15, 15)], min_area=4)
    assert (m == 1).sum() == 9 and m[12, 12] == 0 and m[1, 18] == 0


def test_context_placement_puts_an_open_on_the_trace(boards):
    items, samples = _generate(_spec(boards, placement="context", blend="hard", elastic=0, scale=[1, 1], max_distortion=1))
    assert samples
    for s in samples:
        black = s.image[:, :, 0] == 0
        rows, cols = np.nonzero(black.mean(1) > 0.5)[0], np.nonzero(black.mean(0) > 0.5)[0]
        across = 0 if len(rows) else 1  # the trace runs along x (its rows are black) or, turned, along y
        band = rows if len(rows) else cols
        for k in range(1, len(s.boxes) + 1):
            at = np.nonzero(s.mask == k)[across]
            assert set(at.tolist()) <= set(band.tolist()), "the cut must lie on the trace"
        p = s.meta["provenance"]["pastes"][0]
        assert p["match"] is not None and p["match"] > 0.95


def test_random_placement_records_no_match(boards):
    _, samples = _generate(_spec(boards, placement="random", min_visible=0, topology=False))
    kept = [p for s in samples for p in s.meta["provenance"]["pastes"] if "dropped" not in p]
    assert kept and all(p["match"] is None for p in kept)


def test_an_invisible_paste_is_undone_and_its_box_dropped(boards):
    """Placed at random, most opens land on bare substrate (white on white): no label on nothing."""
    items, samples = _generate(_spec(boards, placement="random", blend="hard"))
    dropped = [p for s in samples for p in s.meta["provenance"]["pastes"] if "dropped" in p]
    assert dropped
    for item, s in zip(items, samples):
        assert len(s.boxes) == sum(1 for p in s.meta["provenance"]["pastes"] if "dropped" not in p)
        for k, b in enumerate(s.boxes, start=1):
            assert (s.image[:, :, 0][s.mask == k] == 255).mean() > 0.9  # every kept cut is white, at the (black) trace
            assert (s.image[:, :, 0][b.y1:b.y2, b.x1:b.x2] == 0).any()


def test_an_invisible_paste_is_tried_again_before_its_box_is_dropped(boards):
    """Any of the many spots will do (top_k 256, any score), so most opens land on bare
    substrate first; `attempts` tries another instance and spot, and the first attempt is
    the same paste as without retries (the same seeded stream)."""
    loose = dict(placement="context", top_k=256, match_tolerance=2, blend="hard")
    _, once = _generate(_spec(boards, attempts=1, **loose), n=12)
    _, thrice = _generate(_spec(boards, attempts=3, **loose), n=12)
    assert sum(len(s.boxes) for s in thrice) > sum(len(s.boxes) for s in once)
    for a, b in zip(once, thrice):
        pa, pb = a.meta["provenance"]["pastes"], b.meta["provenance"]["pastes"]
        assert pa[0] == pb[0]  # attempt 0 is unchanged
        assert len(pb) <= 3 and all(p["attempt"] == k for k, p in enumerate(pb) if "dropped" in p)
        if "dropped" not in pb[-1]:  # the box was kept by its last attempt: its mask is the visible cut
            assert len(b.boxes) == 1 and (b.image[:, :, 0][b.mask == 1] == 255).mean() > 0.9


def test_topology_tells_the_pcb_defects_apart():
    """Dark copper on a white board: each defect changes (bright pieces, dark pieces) its own way."""
    board = np.ones((40, 40), bool)  # True: white substrate
    board[8:14, :] = board[26:32, :] = False  # two traces with a gap between
    def change(draw):
        after = board.copy()
        draw(after)
        return topology(board, after)
    assert change(lambda a: a.__setitem__((slice(14, 26), slice(18, 22)), False)) == (1, -1)  # short: joins the traces
    assert change(lambda a: a.__setitem__((slice(8, 14), slice(18, 22)), True)) == (-1, 1)  # open: splits one
    assert change(lambda a: a.__setitem__((slice(18, 22), slice(18, 22)), False)) == (0, 1)  # spurious copper
    assert change(lambda a: a.__setitem__((slice(10, 12), slice(18, 21)), True)) == (1, 0)  # pin-hole
    assert change(lambda a: a.__setitem__((slice(14, 18), slice(18, 22)), False)) == (0, 0)  # spur: a bump on a trace
    assert change(lambda a: a.__setitem__((slice(19, 21), slice(5, 7)), False)) == (0, 0)  # a speck is no copper


def _short_set(root):
    """Train boards with a `short`: a dark bridge across the 14-px gap between two traces."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "data.yaml").write_text("train: images/train\nval: images/val\nnames: [open, short]\n")
    for i in range(3):
        tmpl = _board(slice(30, 38))
        tmpl[52:60] = 0
        img = tmpl.copy()
        x = 20 + 20 * i
        img[38:52, x:x + 4] = 0
        _write(root, "train", f"s{i}", img, tmpl, [(1, x - 5, 35, x + 9, 55)])
    _write(root, "val", "v0", _board(), _board(), [])


@pytest.mark.parametrize("check", [True, False])
def test_a_pasted_short_joins_two_conductors(tmp_path, check):
    """Backgrounds: one with two traces 14 px apart, one with a single trace. With the
    topology check every kept short joins two traces (one conductor fewer than its
    background) and the one-trace board's shorts are dropped; without it, a short
    placed anywhere is often a stub that joins nothing."""
    _short_set(tmp_path / "pcb")
    reg = (tmp_path / "reg").as_uri()
    publish_real(load_real("yolo", tmp_path / "pcb"), reg, "tiny-short", 1)
    bg = tmp_path / "bg"
    bg.mkdir()
    two = _board(slice(20, 28))
    two[42:50] = 0
    for i, b in enumerate((two, _board(slice(60, 70)))):
        Image.fromarray(b).save(bg / f"clean{i}.png")
    spec = spec_from_dict({
        "name": "tshort", "seed": 5, "count": 12, "image": {"width": W, "height": W, "channels": 1},
        "domain": {"references": [bg.as_uri()]},
        "defects": [{"class": "short", "boxes": {"count": [1, 1], "size": {"min": 0.18, "max": 0.22}}}],
        "generators": [{"kind": "transplant", "params": {
            "source": "tiny-short@1", "blend": "hard", "topology": check, "elastic": 0, "scale": [1, 1], "max_distortion": 1,
            "placement": "context" if check else "random", "min_visible": 0}}],
        "quality": {"duplicate_distance": -1}, "output": {"uri": reg, "shard_size": 4},
    })
    _, samples = _generate(spec, n=12)
    conductors = lambda a: ndimage.label(a[:, :, 0] < 128, np.ones((3, 3), bool))[1]  # noqa: E731
    joined = [conductors(s.image) == conductors(s.background) - 1 for s in samples if s.boxes]
    if check:
        assert joined and all(joined)
        drops = [p["dropped"] for s in samples for p in s.meta["provenance"]["pastes"] if "dropped" in p]
        assert any(d.startswith("topology") for d in drops)
    else:
        assert not all(joined)


@pytest.mark.parametrize("blend", ["mixed", "alpha", "poisson", "hard"])
def test_binary_boards_keep_their_two_grey_levels(boards, blend):
    _, samples = _generate(_spec(boards, blend=blend, topology=False))  # any spot: this is about the levels
    for s in samples:
        assert set(np.unique(s.image).tolist()) <= {0, 255}, f"{blend} greyed a binary board"
        assert s.boxes


def test_boxes_keep_the_annotators_margin(boards):
    """The source boxes are looser than the cut (6 px beside, 6 above): so are the pasted ones."""
    _, samples = _generate(_spec(boards, placement="context", blend="hard", elastic=0, scale=[1, 1], flips=False,
                                 rotate=False, max_distortion=1))
    for s in samples:
        for k, b in enumerate(s.boxes, start=1):
            ys, xs = np.nonzero(s.mask == k)
            assert b.x1 < xs.min() and b.x2 > xs.max() + 1 and b.y1 < ys.min() and b.y2 > ys.max() + 1


def test_same_item_same_bytes(boards):
    spec = _spec(boards, blend="mixed", merge=0.5)
    _, a = _generate(spec)
    _, b = _generate(spec)
    assert [s.image.tobytes() for s in a] == [s.image.tobytes() for s in b]
    assert [s.meta["provenance"] for s in a] == [s.meta["provenance"] for s in b]


def _bar(side: int, rows: slice, cols: slice) -> Instance:
    """A dark bar (40) on a light square patch (200), its mask exact."""
    patch = np.full((side, side), 200, np.uint8)
    alpha = np.zeros((side, side), np.float32)
    patch[rows, cols], alpha[rows, cols] = 40, 1.0
    return Instance("crack", patch, alpha, True, "x#0")


def test_vary_changes_shape_within_bounds():
    inst = _bar(90, slice(20, 70), slice(30, 50))
    box = Box(0, "crack", 0, 0, 20, 50)
    shapes = set()
    for seed in range(8):
        v = vary(inst, box, np.random.default_rng(seed), 1.5, (0.5, 2.0), elastic=2.0, contrast=(0.8, 1.25))
        shapes.add(v.binary.tobytes())
        assert 0.5 <= v.scale <= 2.0
    assert len(shapes) > 4  # elastic deformation: new shapes, not one
    big = Box(0, "crack", 0, 0, 200, 500)  # 10x the instance: scaled at most 2x
    assert vary(inst, big, np.random.default_rng(0), 1.5, (0.5, 2.0)).scale == 2.0


def test_a_small_defect_is_deformed_by_at_most_a_tenth_of_its_side():
    """A 4 px wide spot under `elastic: 2` would lose its shape; it moves by at most 0.4 px."""
    inst = _bar(30, slice(10, 20), slice(12, 16))
    box = Box(0, "crack", 0, 0, 4, 10)
    still = vary(inst, box, np.random.default_rng(0), 1.5, (1, 1), flips=False, rotate=False)
    for seed in range(8):
        v = vary(inst, box, np.random.default_rng(seed), 1.5, (1, 1), flips=False, rotate=False, elastic=2.0)
        assert np.abs(v.alpha - still.alpha).max() <= 0.45


@pytest.mark.parametrize("blend", ["hard", "alpha"])
def test_a_soft_grey_spot_keeps_its_own_fade_out(blend):
    """An EL spot fades out past its annotated mask; pasted along the mask alone, it shows
    a crisp rim on the new background. The paste carries its own fade-out instead."""
    yy, xx = np.mgrid[0:40, 0:40]
    patch = (200 - 120 * np.exp(-((yy - 20) ** 2 + (xx - 20) ** 2) / (2 * 5.0 ** 2))).astype(np.uint8)
    inst = Instance("spot", patch, (patch < 140).astype(np.float32), True, "x#0")
    v = vary(inst, Box(0, "spot", 0, 0, 12, 12), np.random.default_rng(0), 1.5, (1, 1), flips=False, rotate=False)
    canvas = np.full((64, 64), 200, np.float32)
    pasted = paste(canvas, v, (12, 12), True, blend, 2.0, None)
    assert pasted.any() and canvas.min() < 170
    jump = max(np.abs(np.diff(canvas, axis=a)).max() for a in (0, 1))
    assert jump <= 1.5 * max(np.abs(np.diff(patch.astype(float), axis=a)).max() for a in (0, 1))


def test_place_skips_forbidden_windows():
    canvas = _board().astype(np.float32)
    ctx = canvas[36:54, 30:50].copy()
    v = vary(Instance("open", ctx.astype(np.uint8), np.pad(np.ones((10, 4), np.float32), ((4, 4), (8, 8))), True, "x", ctx.astype(np.uint8)),
             Box(0, "open", 0, 0, 4, 10), np.random.default_rng(0), 1.5, (1, 1), flips=False, rotate=False)
    forbidden = np.zeros(canvas.shape, bool)
    forbidden[:, :60] = True  # only the right of the trace is free
    oy, ox, score = place(canvas, v, Box(0, "open", 0, 0, 4, 10), np.random.default_rng(0), "context", 3, forbidden, True)
    assert ox + 8 >= 60 and score > 0.99


def test_an_instance_cut_at_its_image_border_goes_to_a_border_on_the_same_side():
    """A crack that runs into a cell's edge keeps that edge (flipped and turned with it),
    in context and random placement alike; an inner instance may go anywhere."""
    patch = np.full((20, 12), 180, np.uint8)
    alpha = np.zeros((20, 12), np.float32)
    patch[5:15, :4], alpha[5:15, :4] = 40, 1.0  # the defect touches the patch's left side
    inst = Instance("crack", patch, alpha, True, "x#0", edges=frozenset({"left"}))
    canvas = np.random.default_rng(1).uniform(150, 200, (64, 64)).astype(np.float32)
    free = np.zeros(canvas.shape, bool)
    for seed in range(12):
        rng = np.random.default_rng(seed)
        v = vary(inst, Box(0, "crack", 0, 0, 4, 10), rng, 1.5, (1, 1))
        h, w = v.patch.shape
        for placement in ("context", "random"):
            oy, ox, _ = place(canvas, v, Box(0, "crack", 20, 20, 30, 30), rng, placement, 4, free, False)
            side = next(iter(v.edges))
            assert {"left": ox == 0, "right": ox == 64 - w, "top": oy == 0, "bottom": oy == 64 - h}[side]
            ys, xs = np.nonzero(v.binary)  # the defect itself reaches that border
            edge = {"left": xs.min() + ox, "right": 63 - xs.max() - ox, "top": ys.min() + oy, "bottom": 63 - ys.max() - oy}
            assert edge[side] == 0
    inner = Instance("crack", patch, alpha, True, "x#0")
    spots = {place(canvas, vary(inner, Box(0, "crack", 0, 0, 4, 10), np.random.default_rng(s), 1.5, (1, 1)),
                   Box(0, "crack", 20, 20, 30, 30), np.random.default_rng(s), "context", 4, free, False)[1] for s in range(6)}
    assert spots - {0, 64 - 12}


def test_the_bank_marks_the_sides_where_a_patch_is_its_image_border(tmp_path):
    img = np.full((W, W), 200, np.uint8)
    img[0:10, 40:44] = 30  # a crack from the top edge
    img[40:46, 40:46] = 30  # one in the middle
    root = tmp_path / "set"
    root.mkdir()
    (root / "data.yaml").write_text("train: images/train\nval: images/val\nnames: [open, short]\n")
    clean = np.full((W, W), 200, np.uint8)
    _write(root, "train", "a", img, clean, [(0, 40, 0, 44, 10), (0, 40, 40, 46, 46)])
    _write(root, "val", "v", clean, clean, [])
    reg = (tmp_path / "reg").as_uri()
    publish_real(load_real("yolo", root), reg, "edges", 1)
    bank = load_bank(f"{reg}/edges@1")
    assert sorted(sorted(i.edges) for i in bank["open"]) == [[], ["top"]]


def test_grey_levels_tell_binary_from_grey():
    assert grey_levels(_board().astype(np.float32)).tolist() == [0, 255]
    assert grey_levels(np.random.default_rng(0).uniform(0, 255, (32, 32))) is None


def test_a_jpeg_board_is_binary_and_a_low_contrast_grey_image_is_not():
    """DeepPCB's test boards are JPEG q75: edges ring by up to ~20 grey levels. Read as
    grey, a labelled board got the grey images' gain/gamma jitter (whites at 247) and
    unquantized pastes. A narrow grey histogram must not pass for two levels either."""
    rng = np.random.default_rng(0)
    board = np.full((128, 128), 255, np.uint8)
    for _ in range(40):  # many short traces: lots of edges for the codec to ring on
        y, x = rng.integers(0, 120, 2)
        board[y:y + 3, x:x + int(rng.integers(4, 40))] = 0
    buf = io.BytesIO()
    Image.fromarray(board).save(buf, format="JPEG", quality=75)
    jpeg = np.asarray(Image.open(buf)).astype(np.float32)
    assert not np.isin(jpeg, (0, 255)).all()  # the codec did ring
    levels = grey_levels(jpeg)
    assert levels is not None and levels[0] < 24 and levels[1] > 231
    low_contrast = np.clip(rng.normal(120, 12, (64, 64)), 0, 255)  # a tile: one broad peak
    assert grey_levels(low_contrast) is None


def test_validation_names_missing_twin_and_unknown_placement(tmp_path):
    _make_set(tmp_path / "pcb", with_twins=False)
    with pytest.raises(FileNotFoundError, match="b0.*twin"):
        load_real("yolo", tmp_path / "pcb")
    drawn_reg = (tmp_path / "reg").as_uri()
    boards = {"bg": tmp_path, "reg": drawn_reg}
    from factory.spec import SpecError

    with pytest.raises(SpecError, match=r"generators\[0\]\.params\.placement"):
        check_spec(_spec(boards, placement="anywhere"))


def test_deeppcb_import_splits_by_board_group(shared_data):
    real = load_real("deeppcb", shared_data / "deeppcb")
    groups = {split: {s.image_path.parts[-3] for s in real.samples if s.split == split} for split in ("train", "val")}
    assert groups["train"] and groups["val"] and not groups["train"] & groups["val"]
    assert all(s.template is not None and s.template.name.endswith("_temp.jpg") for s in real.samples)
    s = real.samples[0]
    inst = decode_map(s.instances)
    assert inst.max() >= 1 and all((inst == k + 1).sum() <= b.width * b.height for k, b in enumerate(s.boxes))


@pytest.mark.parametrize("backgrounds", ["labelled", "both"])
def test_labelled_backgrounds_keep_their_boxes_and_pastes_stay_off_them(boards, backgrounds):
    spec = _spec(boards, backgrounds=backgrounds, placement="random", blend="hard")
    items, samples = _generate(spec)
    assert spec.class_names[0] == "open"
    kept_any = 0
    for item, s in zip(items, samples):
        kept = s.meta["provenance"]["kept_boxes"]
        pasted_boxes = sum(1 for p in s.meta["provenance"]["pastes"] if "dropped" not in p)
        assert len(s.boxes) == pasted_boxes + kept
        kept_any += kept
        pasted = np.isin(s.mask, list(range(1, len(s.boxes) - kept + 1)))
        for k, b in enumerate(s.boxes[len(s.boxes) - kept:], start=len(s.boxes) - kept + 1):
            assert (b.class_id, b.class_name) == (0, "open")
            assert not pasted[b.y1:b.y2, b.x1:b.x2].any(), "a paste landed on a kept defect"
            cut = s.mask == k
            assert cut.any() and (s.image[:, :, 0][cut] == 255).all()  # the kept open, moved with its background
    assert kept_any > 0
    if backgrounds == "labelled":
        assert all(s.meta["provenance"]["kept_boxes"] == 1 for s in samples)
    from factory.quality import OutsideExactScorer

    # a kept defect is part of the background: the exact tests ask only the drawn boxes to differ
    assert [v.reasons for v in OutsideExactScorer().score(samples)] == [[]] * len(samples)


def test_the_box_check_judges_drawn_boxes_not_a_labelled_backgrounds_own(boards):
    """The gate's box check compares the boxes the generator drew with the plan; a
    labelled background's own boxes are aside (it rejected every sample whose board
    held a class the item had not asked for: 6,004 of 6,021 on DeepPCB), and a kept
    box never stands in for a requested one whose paste was dropped."""
    import dataclasses

    from factory.quality import BoxScorer

    spec = _spec(boards, backgrounds="labelled", placement="random", blend="hard", min_visible=0.0, topology=False)
    _, samples = _generate(spec)
    kept = [s.meta["provenance"]["kept_boxes"] for s in samples]
    assert all(len(s.boxes) > k >= 1 for s, k in zip(samples, kept))
    scorer = BoxScorer(spec.class_names)
    assert [v.reasons for v in scorer.score(samples)] == [[]] * len(samples)
    only_kept = [dataclasses.replace(s, boxes=s.boxes[len(s.boxes) - k:]) for s, k in zip(samples, kept)]
    assert all(v.reasons[0].code == "box_missing" for v in scorer.score(only_kept))


def test_move_boxes_follows_turn():
    from factory.generators.transplant.paste import move_boxes, turn

    img = np.zeros((6, 8), np.uint8)
    img[1:3, 2:7] = 1
    b = Box(0, "x", 2, 1, 7, 3)
    for ops in [("r",), ("h",), ("v",), ("r", "h"), ("r", "r", "r", "h"), ("h", "v")]:
        t = turn(img, ops)
        (m,) = move_boxes((b,), ops, 6, 8)
        ys, xs = np.nonzero(t)
        assert (m.x1, m.y1, m.x2, m.y2) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1), ops
