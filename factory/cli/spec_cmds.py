"""`factory validate`, `factory plan`, `factory preview`: look at a spec before running it."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import typer
from rich.table import Table

from factory.cli.app import app
from factory.cli.common import EXIT_INVALID, console, err_console, fail, friendly_errors, load_spec_or_exit, plural
from factory.data.folders import list_images
from factory.generators.base import generator_for
from factory.planning import iter_plan, planned_count
from factory.spec import SpecError, load_spec
from factory.spec.errors import cut
from factory.storage import uri as U
from factory.viz import draw_boxes, grid

SpecArg = typer.Argument(..., help="Path to the dataset spec (YAML).", show_default=False)


@app.command()
def validate(
    spec: Path = SpecArg,
    check_uris: bool = typer.Option(True, "--check-uris/--no-check-uris",
                                    help="Also check the data sets and folders the spec names (skip when only the cluster sees them)."),
) -> None:
    """Check a spec; print every problem as `file: field: reason` (exit 2 if any)."""
    from rich.markup import escape

    from factory.generators.checks import check_spec

    try:
        s = check_spec(load_spec(spec), str(spec), check_uris=check_uris)
    except SpecError as e:
        for line in SpecError(e.source, e.problems + _later_problems(e, check_uris)).lines():
            err_console.print(f"[bold red]invalid spec[/] {escape(line)}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_INVALID) from None
    console.print(
        f"[green]ok[/] {escape(cut(str(spec), 100))}: [bold]{s.name}[/] v{s.version or '(next)'} - {plural(s.count, 'image')} "
        f"{s.image.width}x{s.image.height}x{s.image.channels}, {_names('class', 'classes', s.class_names)}, "
        f"{_names('generator', 'generators', [g.kind for g in s.generators])}; spec hash {s.spec_hash()[:12]}",
        highlight=False, soft_wrap=True,
    )
    # a bare path is a local folder: say which (a URI the user meant, written wrong, is refused above)
    console.print(f"output: {escape(cut(U.to_uri(s.output.uri), 280))}", highlight=False, soft_wrap=True)


def _later_problems(e: SpecError, check_uris: bool) -> list[tuple[str, str]]:
    """The generator families' checks of what the spec's own checks left standing
    (`e.partial`), so that one run shows every problem, not one layer at a time."""
    from factory.generators.checks import check_spec

    if e.partial is None:
        return []
    try:
        check_spec(e.partial, e.source, check_uris=check_uris)
    except SpecError as later:
        return [p for p in later.problems if not e.is_aside(p[0])]
    return []


def _names(one: str, many: str, names: list[str], limit: int = 100) -> str:
    """`classes a, b, c` cut to about `limit` characters (a line stays readable)."""
    return f"{one if len(names) == 1 else many} {cut(', '.join(names), limit)}"


@app.command("plan")
def plan_cmd(
    spec: Path = SpecArg,
    overprovision: float = typer.Option(1.0, min=1.0, max=1000.0,
                                        help="Plan count x this many items (1 / expected pass rate)."),
    show: int = typer.Option(0, help="Also print the first N work items."),
) -> None:
    """Summarize the deterministic plan: per-class counts and box sizes."""

    s = load_spec_or_exit(spec)
    with friendly_errors(), console.status("planning..."):
        total = planned_count(s, overprovision)
        items = list(iter_plan(s, 0, min(total, max(SUMMARY_ITEMS, show))))
    console.print(plan_summary(items[:SUMMARY_ITEMS], s.class_names, s.image.width, s.image.height, total))
    if s.domain.fitted is not None:
        console.print(style_summary(s.domain))
    for item in items[:show]:
        boxes = ", ".join(f"{b.class_name}[{b.x1},{b.y1},{b.x2},{b.y2}]" for b in item.boxes) or "(negative)"
        console.print(f"{item.item_id}  {item.generator}  seed={item.seed}  {cut(boxes, 200)}", highlight=False)


SUMMARY_ITEMS = 10_000  # `factory plan` summarizes at most this many items: the first ones of the plan


def plan_summary(items, class_names: list[str], width: int, height: int, total: int | None = None) -> Table:
    """A table: per class, images, boxes, and a text histogram of box sizes. `items` may
    be the first of `total` items (a plan of millions is summarized by its start)."""
    images = Counter(c for it in items for c in it.classes)
    boxes = [b for it in items for b in it.boxes]
    per_class = Counter(b.class_name for b in boxes)
    negatives = sum(1 for it in items if it.is_negative)
    counts = f"{plural(len(boxes), 'box', 'boxes')}, {plural(negatives, 'negative')}"
    if total is None or total == len(items):
        title = f"plan: {plural(len(items), 'item')}, {counts}"
    else:
        title = f"plan: {total:,} items; the first {len(items):,} (a sample) have {counts}"
    table = Table(title=title)
    table.add_column("class")
    table.add_column("images", justify="right")
    table.add_column("boxes", justify="right")
    table.add_column("box size (side / image side): 0 .. 0.5", no_wrap=True)
    bins = [i / 20 for i in range(11)]  # 0.0 .. 0.5 in steps of 0.05
    for name in class_names:
        sizes = [((b.width * b.height) / (width * height)) ** 0.5 for b in boxes if b.class_name == name]
        table.add_row(name, str(images[name]), str(per_class[name]), _sparkline(sizes, bins))
    return table


def style_summary(domain) -> Table:
    """The style fitted to the references (`domain.style: fit`): ranges the planner draws from, renderer values."""
    table = Table(title=f"style fitted to {len(domain.references)} reference location(s) ({domain.name})")
    table.add_column("value")
    table.add_column("fitted", justify="right")
    for key in ("brightness", "contrast", "grid_pitch", "busbars"):
        lo, hi = getattr(domain, key)
        table.add_row(key, f"{lo:.3g} .. {hi:.3g}")
    for key, v in sorted(domain.fitted.items()):
        table.add_row(key, f"{v:.4g}")
    return table


def _sparkline(values: list[float], bins: list[float]) -> str:
    if not values:
        return ""
    counts = [0] * (len(bins) - 1)
    for v in values:
        i = min(max(int((v - bins[0]) / (bins[1] - bins[0])), 0), len(counts) - 1)
        counts[i] += 1
    bars = " ▁▂▃▄▅▆▇█"
    top = max(counts)
    return "".join(bars[round(c / top * 8)] if c else "·" for c in counts)


@app.command()
def preview(
    spec: Path = SpecArg,
    n: int = typer.Option(16, "--n", min=1, max=256, help="How many images."),
    out: Path = typer.Option(Path("preview.png"), help="Where to write the grid (PNG)."),
    cols: int = typer.Option(4, help="Grid columns."),
    compare_to: Path | None = typer.Option(
        None, help="A folder of real images: puts one real image beside each generated one."
    ),
    crops: bool = typer.Option(
        False, "--crops", help="Show the defects: square crops 1.5x around every box, generated beside real ones "
        "(--compare-to must be a YOLO images/<split> folder, whose labels give the real boxes)."),
) -> None:
    """Generate a few images in-process and save a grid with boxes and class names drawn."""
    from factory.planning import plan

    s = load_spec_or_exit(spec)
    if crops and not compare_to:
        fail("--crops needs --compare-to (a folder of labelled real images)", EXIT_INVALID)
    with friendly_errors():
        items = plan(s, n=n)
        tiles, captions = [], []
        real = _real_images(compare_to, n) if compare_to else []
        if crops:
            _preview_crops(s, items, real, out, cols)
            return
        loaded: dict = {}
        with _progress() as progress:
            task = progress.add_task("generating", total=len(items))
            for i, item in enumerate(items):
                sample = generator_for(item, loaded).generate([item])[0]
                tiles.append(draw_boxes(sample.image, sample.boxes))
                captions.append(f"{item.generator} #{item.index}")
                if real:
                    tiles.append(_load_tile(real[i % len(real)], s.image.width))
                    captions.append(f"real: {real[i % len(real)].name}")
                progress.advance(task)
        picture = grid(tiles, cols=cols * (2 if real else 1), captions=captions)
        out.parent.mkdir(parents=True, exist_ok=True)
        picture.save(out)
    console.print(f"wrote {out} ({len(items)} generated{' beside real images from ' + str(compare_to) if real else ''})")


def _preview_crops(s, items, real: list[Path], out: Path, cols: int) -> None:
    """Rows of generated box crops (each generator with its own params), and real
    crops from the labelled real images, alternating."""
    from PIL import Image

    from factory.formats import yolo_label_boxes
    from factory.viz import box_crops

    made, loaded = [], {}
    with _progress() as progress:
        task = progress.add_task("generating", total=len(items))
        for item in items:
            made += [(sm.image, sm.boxes) for sm in generator_for(item, loaded).generate([item])]
            progress.advance(task)
    real_items = []
    for p in real:
        grey = np.asarray(Image.open(p).convert("L"))
        real_items.append((grey, yolo_label_boxes(p, grey.shape[1], grey.shape[0]) or []))
    gen_crops, real_crops = box_crops(made, size=96), box_crops(real_items, size=96)
    if not real_crops:
        fail(f"--crops: no YOLO labels beside the images in {real[0].parent if real else 'the folder'}")
    if not gen_crops:
        fail("--crops: the generated images have no boxes (the spec's negatives only?)")
    per_row = max(2, cols * 2)
    tiles, captions = [], []
    for r in range(max(1, -(-max(len(gen_crops), len(real_crops)) // per_row))):
        for label, pool in (("generated", gen_crops), ("real", real_crops)):
            row = pool[r * per_row:(r + 1) * per_row]
            tiles += [Image.fromarray(c).convert("RGB") for c in row]
            captions += [label] * len(row)
            tiles += [Image.new("RGB", (96, 96), (24, 24, 24))] * (per_row - len(row))
            captions += [""] * (per_row - len(row))
    out.parent.mkdir(parents=True, exist_ok=True)
    grid(tiles, cols=per_row, captions=captions, tile_size=96).save(out)
    console.print(f"wrote {out} ({len(gen_crops)} generated and {len(real_crops)} real box crops, rows alternating)")


def _real_images(folder: Path, n: int) -> list[Path]:
    if not folder.is_dir():
        fail(f"--compare-to {folder}: not a folder")

    files = list_images(folder)
    if not files:
        fail(f"--compare-to {folder}: no images found")
    step = max(1, len(files) // n)
    return files[::step][:n]


def _load_tile(path: Path, size: int):
    from PIL import Image

    return Image.open(path).convert("RGB").resize((size, size))


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=console, transient=True,
    )
