"""Deterministic planning: spec + index -> WorkItem.

Item `i` depends only on (spec, spec.seed, i): its random stream is seeded by
`SeedSequence([seed, i])`. So the plan is an infinite, reproducible sequence; a
job takes the first `ceil(count * overprovision)` items, a top-up round takes the
next ones, and a resumed job names exactly the same items again.

The mix is kept, not sampled: each item's primary class (or "negative") comes from
a quota list (`quotas`: the spec's weights and `negatives` share over `count`,
rounded by largest remainder), shuffled by a permutation seeded by (seed, block)
for every block of `count` consecutive indices. So the first `count` items hold
exactly the quota of every class and of negatives, and every later block (the
over-provisioned items, top-up rounds) holds the same mix again. With
`classes_per_image` above 1 the extra classes of an image are drawn by weight, so
only the primary classes are exact.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Iterator

import numpy as np

from factory.core import Box, GeneratorRef, WorkItem
from factory.spec.model import BoxSpec, DatasetSpec, Distribution, DomainSpec

MAX_PLACEMENT_TRIES = 200
NEGATIVE = -1  # the quota label of an image without defects
_QUOTA_STREAM = 0x717A  # tags the permutation streams apart from the items' own [seed, index] streams


def quotas(spec: DatasetSpec, n: int | None = None) -> dict[int, int]:
    """Images per primary class id (and NEGATIVE) among `n` (default `count`) images:
    the shares `negatives` and (1 - negatives) * weight / sum(weights), rounded by
    largest remainder (ties to the earlier entry, negatives first) so they sum to `n`."""
    n = spec.count if n is None else n
    w = np.array([d.weight for d in spec.defects], dtype=float)
    shares = [spec.negatives] + list((1.0 - spec.negatives) * w / w.sum())
    exact = [n * s for s in shares]
    floors = [math.floor(e + 1e-9) for e in exact]
    left = n - sum(floors)
    order = sorted(range(len(exact)), key=lambda k: (-(exact[k] - floors[k]), k))
    for k in order[:max(left, 0)]:
        floors[k] += 1
    return {NEGATIVE: floors[0], **{c: floors[c + 1] for c in range(len(spec.defects))}}


@lru_cache(maxsize=4)  # a block is `count` int32s (40 MB at the largest count); runs touch one or two
def _block_labels(seed: int, quota: tuple[tuple[int, int], ...], block: int) -> np.ndarray:
    """The primary labels of one block of `count` plan indices: the quota list, shuffled."""
    labels = np.concatenate([np.full(k, label, dtype=np.int32) for label, k in quota])
    rng = np.random.default_rng(np.random.SeedSequence([seed % (1 << 63), _QUOTA_STREAM, block]))
    return labels[rng.permutation(len(labels))]


def planned_count(spec: DatasetSpec, overprovision: float = 1.0) -> int:
    """How many items to plan so that `count` survive a gate rejecting a share
    of them: `overprovision` = 1 / expected pass rate (>= 1)."""
    if not 1.0 <= overprovision < math.inf:
        raise ValueError(f"overprovision must be >= 1 and finite, got {overprovision}")
    return math.ceil(spec.count * overprovision)


def plan(spec: DatasetSpec, n: int | None = None, start: int = 0, overprovision: float = 1.0) -> list[WorkItem]:
    """Items `start .. start+n-1` of the spec's plan (n defaults to planned_count)."""
    if n is None:
        n = planned_count(spec, overprovision)
    return list(iter_plan(spec, start, n))


def iter_plan(spec: DatasetSpec, start: int, n: int) -> Iterator[WorkItem]:
    planner = _Planner(spec)
    for i in range(start, start + n):
        yield planner.item(i)


def generator_refs(spec: DatasetSpec) -> tuple[GeneratorRef, ...]:
    """One `GeneratorRef` per `spec.generators[i]` (index i), with the params the
    generator families checked and completed (`check_spec` runs first on every
    path that plans: the run, `factory plan`, `preview`, the gate audit)."""
    return tuple(GeneratorRef(g.kind, g.checkpoint, dict(g.params), index=i) for i, g in enumerate(spec.generators))


class _Planner:
    def __init__(self, spec: DatasetSpec):
        self.spec = spec
        self.hash = spec.spec_hash()
        self.refs = generator_refs(spec)
        g_w = np.array([g.weight for g in spec.generators], dtype=float)
        self.gen_p = g_w / g_w.sum()
        c_w = np.array([d.weight for d in spec.defects], dtype=float)
        self.class_w = c_w
        self.quota = tuple(sorted(quotas(spec).items()))

    def primary(self, index: int) -> int:
        """The item's primary class id, or NEGATIVE (see the module notes)."""
        block, pos = divmod(index, self.spec.count)
        return int(_block_labels(self.spec.seed, self.quota, block)[pos])

    def item(self, index: int) -> WorkItem:
        spec = self.spec
        rng = np.random.default_rng(np.random.SeedSequence([spec.seed % (1 << 63), index]))
        W, H = spec.image.width, spec.image.height
        gen = self.refs[int(rng.choice(len(self.refs), p=self.gen_p))]
        style = draw_style(rng, spec.domain)
        boxes: list[Box] = []
        rng.random()  # once the negative/positive draw; kept so the rest of the stream (boxes, seed) is unchanged
        primary = self.primary(index)
        if primary != NEGATIVE:
            for class_id in self._classes(rng, primary):
                d = spec.defects[class_id]
                k = int(rng.integers(d.boxes.count[0], d.boxes.count[1] + 1))
                for _ in range(k):
                    box = _place_box(rng, d.boxes, class_id, d.class_name, W, H, boxes)
                    if box is not None:
                        boxes.append(box)
        return WorkItem(
            item_id=f"{spec.name}-{self.hash[:8]}-{index:07d}",
            index=index,
            generator=gen.kind,
            checkpoint=gen.checkpoint,
            width=W,
            height=H,
            channels=spec.image.channels,
            seed=int(rng.integers(0, 2**31 - 1)),
            boxes=tuple(boxes),
            style=style,
            params=gen.params,
            domain=spec.domain.name,
            ref=gen,
        )

    def _classes(self, rng: np.random.Generator, primary: int) -> list[int]:
        """The primary class, plus (classes_per_image above 1) others drawn by weight."""
        lo, hi = self.spec.classes_per_image
        positive = int((self.class_w > 0).sum())
        k = min(int(rng.integers(lo, hi + 1)), positive)
        w = self.class_w.copy()
        w[primary] = 0.0
        extra = []
        if k > 1 and w.sum() > 0:
            extra = [int(c) for c in rng.choice(len(w), size=min(k - 1, int((w > 0).sum())), replace=False, p=w / w.sum())]
        return sorted([primary, *extra])


def draw_style(rng: np.random.Generator, domain: DomainSpec) -> dict[str, float]:
    """One image's style knobs drawn from the domain's ranges, in a fixed order. The
    planner draws them from an item's stream and the serve app from a request's, so
    both make the same kind of WorkItem with the same code."""
    d = domain
    style = {
        "brightness": float(rng.uniform(*d.brightness)),
        "contrast": float(rng.uniform(*d.contrast)),
        "grid_pitch": float(rng.uniform(*d.grid_pitch)),
        "busbars": float(rng.integers(d.busbars[0], d.busbars[1] + 1)),
        # which reference image (modulo the number of references) a generator may use
        "reference": float(rng.integers(0, 2**31 - 1)),
    }
    # values fitted to the references (domain.style: fit) are constants: no draws
    return {**style, **{k: float(v) for k, v in (d.fitted or {}).items()}}


def sample_distribution(rng: np.random.Generator, d: Distribution) -> float:
    if d.dist == "uniform":
        return float(rng.uniform(d.min, d.max))
    if d.dist == "loguniform":
        return float(np.exp(rng.uniform(np.log(d.min), np.log(d.max))))
    assert d.std is not None  # the spec refuses `normal` and `lognormal` without std
    if d.dist == "lognormal":
        mean = d.mean if d.mean is not None else (np.log(d.min) + np.log(d.max)) / 2
        return float(np.clip(np.exp(rng.normal(mean, d.std)), d.min, d.max))
    mean = d.mean if d.mean is not None else (d.min + d.max) / 2
    return float(np.clip(rng.normal(mean, d.std), d.min, d.max))


def _place_box(
    rng: np.random.Generator, b: BoxSpec, class_id: int, class_name: str, W: int, H: int, taken: list[Box]
) -> Box | None:
    """Draw a box from the distributions; redraw while it overlaps (if forbidden)."""
    for _ in range(MAX_PLACEMENT_TRIES):
        s = sample_distribution(rng, b.size)
        a = sample_distribution(rng, b.aspect)
        w = int(np.clip(round(s * np.sqrt(a) * W), 2, W))
        h = int(np.clip(round(s / np.sqrt(a) * H), 2, H))
        if b.position.dist == "uniform":
            x1 = int(rng.integers(0, W - w + 1))
            y1 = int(rng.integers(0, H - h + 1))
        else:
            cx = rng.normal(b.position.center[0] * W, b.position.std * W)
            cy = rng.normal(b.position.center[1] * H, b.position.std * H)
            x1 = int(np.clip(round(cx - w / 2), 0, W - w))
            y1 = int(np.clip(round(cy - h / 2), 0, H - h))
        box = Box(class_id, class_name, x1, y1, x1 + w, y1 + h)
        if b.overlap or not any(box.intersects(t) for t in taken):
            return box
    return None
