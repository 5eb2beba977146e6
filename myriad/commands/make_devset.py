"""``myriad make-devset``: write a synthetic MVTec-AD-layout dataset, deterministically from a seed."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import click

# Kept in sync with myriad.synthetic.devset.PRESET_NAMES (not imported here: --help stays instant).
_PRESETS = ("default", "benchmark", "samples", "realistic", "visible")


def _names(values: tuple[str, ...]) -> tuple[str, ...] | None:
    """Repeated and/or comma-separated option values, in order, without duplicates."""
    names = [part.strip() for value in values for part in value.split(",") if part.strip()]
    return tuple(dict.fromkeys(names)) or None


@click.command("make-devset")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path), required=False)
@click.option("--preset", type=click.Choice(_PRESETS), default="default", show_default=True,
              help="Starting point: default (fast, ~190 images), benchmark (~2,150 images), samples (12 images), "
                   "realistic (real photos, subtle real-sized defects, ~1,740 images; docs/realistic-devset.md), "
                   "visible (the realistic photos, small defects plain to see, ~2,400 images).")
@click.option("--seed", type=int, default=None, help="Random seed (same seed = identical files). [default: 0]")
@click.option("--categories", "-c", multiple=True, metavar="NAMES",
              help="Texture categories, comma-separated or repeated (see --list).")
@click.option("--train", type=click.IntRange(1), default=None, help="Normal training images per category.")
@click.option("--test-good", type=click.IntRange(0), default=None, help="Normal test images per category.")
@click.option("--test-defect", type=click.IntRange(0), default=None, help="Defective test images per defect kind and category (visible preset: per family and category).")
@click.option("--size", type=click.IntRange(32, 4096), default=None, help="Image side in pixels. [default: 256]")
@click.option("--defects", multiple=True, metavar="KINDS",
              help="Defect kinds, comma-separated or repeated. [default: the evaluation kinds]")
@click.option("--crops", type=click.Choice(("shared", "zoned")), default=None,
              help="realistic / visible presets: train and test crops from one range of each photo (shared, the default) "
                   "or test crops from a separate zone (zoned).")
@click.option("--overwrite", is_flag=True, help="Replace an existing dev set at OUT.")
@click.option("--list", "list_only", is_flag=True, help="List textures and defect kinds, then exit.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def make_devset_command(
    out: Path | None,
    preset: str,
    seed: int | None,
    categories: tuple[str, ...],
    train: int | None,
    test_good: int | None,
    test_defect: int | None,
    size: int | None,
    defects: tuple[str, ...],
    crops: str | None,
    overwrite: bool,
    list_only: bool,
    quiet: bool,
) -> None:
    """Write a synthetic dev set (MVTec-AD layout) to OUT: textures x normal and defective images.

    Options left out come from --preset. Example, a larger benchmark set:
    `myriad make-devset data/devset-bench --preset benchmark`. `--preset realistic` uses
    real photos and subtle real-sized defects instead (see docs/realistic-devset.md).
    """
    import time
    from dataclasses import replace

    from myriad.synthetic.defects import DEFECTS, EVAL_DEFECTS, TRAIN_DEFECTS
    from myriad.synthetic.devset import PRESETS, make_devset
    from myriad.synthetic.textures import TEXTURES

    if preset in ("realistic", "visible"):
        _realistic(out, preset, seed, categories, train, test_good, test_defect, size, defects, crops, overwrite, list_only, quiet)
        return
    if crops is not None:
        raise click.UsageError("--crops applies to --preset realistic and visible only")
    if list_only:
        click.echo("textures:")
        for t in TEXTURES.values():
            click.echo(f"  {t.name:<10} {t.origin:<10} {'oriented ' if t.oriented else 'isotropic'}  {t.description}")
        click.echo("defect kinds (E = evaluation set, T = training set):")
        for d in DEFECTS.values():
            tag = "E" if d.name in EVAL_DEFECTS else "T" if d.name in TRAIN_DEFECTS else " "
            click.echo(f"  {tag} {d.name:<19} {d.family:<14} {d.description}")
        return
    if out is None:
        raise click.UsageError("missing argument OUT (the folder to write the dev set to)")

    spec = PRESETS[preset]
    overrides = {
        "seed": seed,
        "categories": _names(categories),
        "train": train,
        "test_good": test_good,
        "test_defect": test_defect,
        "size": size,
        "defects": _names(defects),
        "crops": crops,
    }
    spec = replace(spec, **{k: v for k, v in overrides.items() if v is not None})

    start = time.perf_counter()
    manifest = _with_progress(lambda progress: make_devset(out, spec, overwrite=overwrite, progress=progress), quiet)
    _summary(manifest, out, start)


def _with_progress(job: Callable[[Callable[[int, int], None]], dict], quiet: bool) -> dict:
    """Run ``job(progress)`` under a tqdm bar (none with ``quiet``)."""
    bar = None
    if not quiet:
        from tqdm import tqdm

        bar = tqdm(total=0, unit="img", desc="make-devset", disable=None, leave=False)

    def progress(done: int, total: int) -> None:
        if bar is not None:
            bar.total = total
            bar.update(1)

    try:
        return job(progress)
    finally:
        if bar is not None:
            bar.close()


def _summary(manifest: dict, out: Path, start: float) -> None:
    import time

    images = len(manifest["files"])
    defective = sum(1 for f in manifest["files"] if f["defect"] != "good")
    click.echo(
        f"wrote {images} images ({defective} defective) in {len(manifest['categories'])} categories to {out} "
        f"in {time.perf_counter() - start:.1f} s"
    )


def _realistic(
    out: Path | None,
    preset: str,
    seed: int | None,
    categories: tuple[str, ...],
    train: int | None,
    test_good: int | None,
    test_defect: int | None,
    size: int | None,
    defects: tuple[str, ...],
    crops: str | None,
    overwrite: bool,
    list_only: bool,
    quiet: bool,
) -> None:
    """``--preset realistic`` (subtle defects) or ``visible`` (plain to see) on real photos (myriad.synthetic.realistic_devset)."""
    import time
    from dataclasses import replace

    from myriad.synthetic.realistic_devset import REALISTIC, catalogue, make_realistic_devset, visible_spec
    from myriad.synthetic.realistic_photos import PHOTOS

    if list_only:
        click.echo("photos (E = realistic dev set, T = may train the LMM):")
        for p in PHOTOS.values():
            tag = "E" if p.split == "eval" else "T"
            click.echo(f"  {tag} {p.name:<8} {'oriented ' if p.oriented else 'isotropic'}  {p.description}")
        kinds = catalogue(preset)
        click.echo(f"{preset} defect kinds (E = evaluation, T = training):")
        for k in (kinds.get(name) for name in kinds.eval + kinds.train):
            click.echo(f"  {'E' if k.split == 'eval' else 'T'} {k.name:<20} {k.family:<13} {k.description}")
        return
    if out is None:
        raise click.UsageError("missing argument OUT (the folder to write the dev set to)")
    overrides = {
        "seed": seed,
        "categories": _names(categories),
        "train": train,
        "test_good": test_good,
        "test_defect": test_defect,
        "size": size,
        "defects": _names(defects),
        "crops": crops,
    }
    base = visible_spec() if preset == "visible" else REALISTIC
    spec = replace(base, **{k: v for k, v in overrides.items() if v is not None})
    start = time.perf_counter()
    manifest = _with_progress(lambda progress: make_realistic_devset(out, spec, overwrite=overwrite, progress=progress), quiet)
    _summary(manifest, out, start)
