"""The work budget: what one request may cost a generator replica, estimated
before any generator runs.

A request's cost is an estimate of replica CPU seconds, per family:

    cost_s = sum over images of (image_mpx * image_mpx_s + box_mpx * box_mpx_s)

where image_mpx is width * height / 1e6 and box_mpx the summed box areas / 1e6 (a
box of the whole image counts whole every time it is given). The ingress refuses a
request over `max_request_s` with 422 before it is queued; a replica refuses new
work (503 + Retry-After) while its accepted backlog would exceed `max_backlog_s`;
and it checks for cancelled requests (client gone, request timeout) between
slices of about `slice_s`, so work for a client that left stops within a slice.

The defaults are the procedural family's measured CPU costs (benchmarks/serve.py
--costs; BENCHMARKS.md): about 0.2 s per image megapixel and up to 0.6 s per box
megapixel (cross_crack; crack 0.4). The issue's reproducer (crack, n=4, 64 boxes of
the whole 1024x1024 image) is estimated at about 160 s and refused; it took 67 s. Families
with other costs set their own in serve/config.yaml `generators.<kind>.cost`.
"""

from __future__ import annotations

from typing import Sequence

from pydantic import BaseModel, ConfigDict, Field

from factory.core import WorkItem


class WorkCost(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image_mpx_s: float = Field(0.25, ge=0, description="replica CPU seconds per megapixel of image")
    box_mpx_s: float = Field(0.6, ge=0, description="replica CPU seconds per megapixel of box (the costliest class)")
    max_request_s: float = Field(10.0, gt=0, description="the most one request may cost (422 over it)")
    max_backlog_s: float = Field(60.0, gt=0, description="accepted work per replica before it answers 503")
    slice_s: float = Field(1.0, gt=0, description="work between checks for cancelled requests")


def item_cost_s(cost: WorkCost, item: WorkItem) -> float:
    image_mpx = item.width * item.height / 1e6
    box_mpx = sum(b.area() for b in item.boxes) / 1e6
    return image_mpx * cost.image_mpx_s + box_mpx * cost.box_mpx_s


def request_cost_s(cost: WorkCost, items: Sequence[WorkItem]) -> float:
    return sum(item_cost_s(cost, it) for it in items)


def over_budget_message(cost: WorkCost, items: Sequence[WorkItem]) -> str | None:
    """None if the request fits the budget, else the 422 message that says why."""
    total = request_cost_s(cost, items)
    if total <= cost.max_request_s:
        return None
    it = items[0]
    boxes_mpx = sum(b.area() for b in it.boxes) / 1e6
    return (f"this request would cost about {total:.1f} s of generator time, over the {cost.max_request_s:g} s "
            f"allowed per request ({len(items)} image(s) of {it.width}x{it.height} with {boxes_mpx:.2f} "
            f"megapixels of boxes each); ask for fewer or smaller images or boxes")


def slices(cost: WorkCost, items: Sequence[WorkItem]) -> list[list[int]]:
    """Indices of `items` in consecutive runs of about `slice_s` each (at least one
    item per run): one generate() call per run, a cancellation check between runs."""
    out: list[list[int]] = []
    run: list[int] = []
    spent = 0.0
    for i, it in enumerate(items):
        c = item_cost_s(cost, it)
        if run and spent + c > cost.slice_s:
            out.append(run)
            run, spent = [], 0.0
        run.append(i)
        spent += c
    if run:
        out.append(run)
    return out
