"""The bank of real defect instances a transplant cuts from: per class, each box of
the source's train split as a grey patch (the box plus a margin of its own
surroundings, which intensity matching and Poisson blending need), its alpha (the
exact instance mask where the source has masks or golden templates, else a
feathered box) and its context: what the spot looked like without the defect (the
template's patch where the source has templates), which placement matches against,
and the sides where the patch is its image's border: a crack that runs into a cell's
edge is pasted at an edge (half of pv_vision's cracks and dark areas touch one).
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from factory.data.instances import decode_map
from factory.formats import parse_yolo_lines
from factory.generators.references import train_files, tree_uri
from factory.storage import uri as U

MARGIN = 0.25  # patch margin around the box, as a share of its side (at least MIN_MARGIN px)
MIN_MARGIN = 4
TOPOLOGY_MIN_PX = 6  # binary pieces smaller than this are codec specks, not conductors or gaps
MID_GREY = 127.5  # a binary image's two levels lie either side of it (`paste.grey_levels`)
SQUARE, CROSS = np.ones((3, 3), bool), ndimage.generate_binary_structure(2, 1)  # 8- and 4-connectivity


@dataclass(frozen=True)
class Instance:
    class_name: str
    patch: np.ndarray  # h x w uint8, grey
    alpha: np.ndarray  # h x w float32 in [0, 1]: the defect's pixels
    exact: bool  # alpha is the annotated mask (else a feathered box)
    origin: str  # "<image>#<box index>", for provenance
    context: np.ndarray | None = None  # h x w uint8: the same spot without the defect (its golden template)
    # (y1, y2, x1, x2) of its hand-drawn box in the patch, where that is looser than the mask (template sets)
    frame: tuple[int, int, int, int] | None = None
    edges: frozenset[str] = frozenset()  # sides ("top", "bottom", "left", "right") where the patch is the image's border

    @property
    def frame_mask(self) -> np.ndarray:
        """h x w float32: 1 inside the hand-drawn box (nothing when the box is the mask's own)."""
        out = np.zeros(self.patch.shape, np.float32)
        if self.frame:
            y1, y2, x1, x2 = self.frame
            out[y1:y2, x1:x2] = 1.0
        return out

    @functools.cached_property
    def topology(self) -> tuple[int, int] | None:
        """What the defect did to its spot's topology in its source, `topology(template,
        board)` in the patch (binary sets with golden templates; a paste must do the
        same); None without a template."""
        if self.context is None:
            return None
        before = self.context > MID_GREY
        return topology(before, np.where(self.alpha >= 0.5, self.patch > MID_GREY, before))

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the box it is published with: its hand-drawn box where it has
        one, else the defect's tight box (what a planned box's size means)."""
        if self.frame:
            y1, y2, x1, x2 = self.frame
            return y2 - y1, x2 - x1
        ys, xs = np.nonzero(self.alpha >= 0.5)
        return int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)


def topology(before: np.ndarray, after: np.ndarray) -> tuple[int, int]:
    """What a change does to a binary window's topology: the signs of the change in the
    number of its bright pieces and of its dark pieces (8- and 4-connected, at least
    TOPOLOGY_MIN_PX each). On DeepPCB's boards (dark copper) every class has its own:
    a short joins two conductors (1, -1), an open splits one (-1, 1), spurious copper
    adds one (0, 1), a pin-hole a gap (1, 0), spurs and mousebites neither (0, 0)."""
    def pieces(a: np.ndarray, structure: np.ndarray) -> int:
        labels, n = ndimage.label(a, structure)
        return int((np.bincount(labels.ravel())[1:] >= TOPOLOGY_MIN_PX).sum()) if n else 0
    return (int(np.sign(pieces(after, SQUARE) - pieces(before, SQUARE))),  # bright pieces 8-connected,
            int(np.sign(pieces(~after, CROSS) - pieces(~before, CROSS))))  # dark ones 4-connected


def nearest(pool: list[Instance], sizes: np.ndarray, height: int, width: int, k: int) -> list[int]:
    """Indices of the `k` instances whose tight box is closest to (height, width) in
    log side and log aspect (either orientation: the paste may rotate), so the
    paste scales them little. `sizes`: (N, 2) heights and widths of `pool`."""
    side = 0.5 * np.log(sizes[:, 0] * sizes[:, 1] / (height * width))
    aspect = np.abs(np.log(sizes[:, 1] / sizes[:, 0]))
    d = side ** 2 + 0.25 * (aspect - abs(np.log(width / height))) ** 2
    return [int(i) for i in np.argsort(d, kind="stable")[:k]]


def _grey(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("L"))


def feathered_box(h: int, w: int, inner: tuple[slice, slice], feather: float) -> np.ndarray:
    """A soft box mask for box-only sets: 1 inside, a smooth ramp of `feather` px at the edge."""
    a = np.zeros((h, w), np.float32)
    a[inner] = 1.0
    if feather > 0:
        a = np.minimum(ndimage.gaussian_filter(a, feather / 2), a)  # ramp inside the box only
        a[inner] = np.maximum(a[inner], 0.5)  # the box itself stays in the mask
    return a


def load_bank(source: str, classes: list[str] | None = None, max_per_class: int = 5000,
              feather: float = 2.0) -> dict[str, list[Instance]]:
    """Every instance of `classes` (all when None) in the source's train split, in a
    stable order (file name, box index), at most `max_per_class` each."""
    tree = tree_uri(source)
    names, files = train_files(tree)
    bank: dict[str, list[Instance]] = {}
    for f in files:
        if not f.labels.strip():
            continue
        image = _grey(U.read_bytes(U.join(tree, f.image)))
        H, W = image.shape
        boxes = parse_yolo_lines(f.labels, W, H, names)
        inst = decode_map(U.read_bytes(U.join(tree, f.instances))) if f.instances else None
        twin = _grey(U.read_bytes(U.join(tree, f.template))) if f.template else None
        if twin is not None and twin.shape != image.shape:
            raise ValueError(f"{source}: {f.template} is {twin.shape[1]}x{twin.shape[0]}, its image {W}x{H}")
        for k, b in enumerate(boxes):
            if classes is not None and b.class_name not in classes:
                continue
            if len(bank.get(b.class_name, [])) >= max_per_class:
                continue
            m = max(MIN_MARGIN, int(MARGIN * max(b.width, b.height)))
            y1, y2, x1, x2 = max(0, b.y1 - m), min(H, b.y2 + m), max(0, b.x1 - m), min(W, b.x2 + m)
            patch = image[y1:y2, x1:x2].copy()
            inner = (slice(b.y1 - y1, b.y2 - y1), slice(b.x1 - x1, b.x2 - x1))
            if inst is not None and (inst[y1:y2, x1:x2] == k + 1).any():
                alpha, exact = (inst[y1:y2, x1:x2] == k + 1).astype(np.float32), True
            else:
                alpha, exact = feathered_box(y2 - y1, x2 - x1, inner, feather), False
            context = None if twin is None else twin[y1:y2, x1:x2].copy()
            edges = frozenset(side for side, cut in (("top", y1 == 0), ("bottom", y2 == H), ("left", x1 == 0),
                                                     ("right", x2 == W)) if cut)
            bank.setdefault(b.class_name, []).append(
                Instance(b.class_name, patch, alpha, exact, f"{f.image}#{k}", context,
                         None if twin is None else (b.y1 - y1, b.y2 - y1, b.x1 - x1, b.x2 - x1), edges))
    return bank
