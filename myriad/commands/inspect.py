"""``myriad inspect``: the main job — expert maps + Myriad's answers for a folder of images."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from myriad.commands.options import (
    answers_option,
    calibration_option,
    false_alarm_rate_option,
    load_rules_option,
    precision_option,
    rules_option,
    tile_option,
    verdict_option,
)
from myriad.defaults import DEFAULT_EXPERT


def collect_images(sources: tuple[Path, ...] | list[Path], what: str) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Readable image files from files/folders, and (path, reason) for each one skipped."""
    from myriad.errors import ImageError
    from myriad.images import is_image_file, load_image

    readable, skipped = [], []
    for path in list_candidates(sources, what):
        if not is_image_file(path):
            skipped.append((path, "not an image file suffix"))
            continue
        try:
            load_image(path)
        except ImageError as exc:
            skipped.append((path, str(exc)))
            continue
        readable.append(path)
    return readable, skipped


def list_candidates(sources: tuple[Path, ...] | list[Path], what: str) -> list[Path]:
    """Image files named by ``sources`` (files, or folders searched recursively), by suffix; nothing decoded."""
    from myriad.images import is_image_file

    found: list[Path] = []
    for source in sources:
        if source.is_dir():  # recursive, so an MVTec-style test/ folder with defect sub-folders works
            found += sorted(p for p in source.rglob("*") if p.is_file() and not p.name.startswith(".") and is_image_file(p))
        elif source.is_file():
            found.append(source)
        else:
            raise click.UsageError(f"{what}: {source} does not exist")
    return found


@click.command("inspect")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--normal", "normal", multiple=True, type=click.Path(path_type=Path), help="Normal reference images or folders (repeatable).")
@click.option("--profile", "profile_dir", default=None, type=click.Path(path_type=Path),
              help="A profile written by `myriad fit`: inspect with its fitted expert and verdict, without refitting.")
@click.option("--expert", default=DEFAULT_EXPERT, show_default=True,
              help="Expert plugin (see `myriad experts`), or several fused with '+', e.g. patchcore+global.")
@click.option("--config", "config_json", default=None,
              help='Expert options as JSON (or a JSON file); for a fusion one object per member: {"patchcore": {...}}.')
@click.option("--ask", default=None, help="Question about each image, e.g. 'Where is the defect?' (default: the verdict and every finding).")
@click.option("--output", "-o", type=click.Path(path_type=Path), default=Path("myriad-output"), show_default=True)
@click.option("--lmm", default="mini", show_default=True, help="'mini' (shipped weights), a weights file, or 'none' (expert only).")
@click.option("--batch-size", "-b", default=8, show_default=True, type=int)
@click.option("--device", default="cpu", show_default=True)
@click.option("--resume", is_flag=True, help="Continue an unfinished (or finished) run in OUTPUT: images already done are skipped.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: this process; ray: a Ray cluster's actors (needs myriad-iad[ray]; OUTPUT and the profile on a "
              "path every node reads and writes).")
@click.option("--address", default=None, help="--engine ray: the cluster to join (e.g. HOST:6379 or ray://HOST:10001); "
              "default: RAY_ADDRESS, else a local cluster on this machine.")
@click.option("--workers", type=click.IntRange(1), default=None,
              help="--engine ray: actors of each stage (expert; with an LMM, Myriad too) [default: one per CPU, split "
              "between the stages; with --device cuda one Myriad actor per GPU].")
@click.option("--format", "formats", type=click.Choice(["jsonl", "parquet"]), default="jsonl", show_default=True,
              help="Results as JSON lines only, or also as Parquet (OUTPUT/results.parquet; needs pyarrow).")
@precision_option
@false_alarm_rate_option
@calibration_option
@tile_option
@answers_option
@verdict_option
@rules_option
def inspect_command(
    images, normal, profile_dir, expert, config_json, ask, output, lmm, batch_size, device, resume, engine, address,
    workers, formats, precision, false_alarm_rate, calibration, tile, answers, verdict, rules_file,
) -> None:
    """Fit EXPERT on --normal images (or load a fitted --profile), then inspect IMAGES (files or folders).

    Prints one line per image (Myriad's answer is withheld when it is degenerate) and the grounded
    answer measured on the map, and appends each batch to OUTPUT/results.jsonl.part (renamed
    results.jsonl when every image is done; --resume continues a killed run) and writes
    OUTPUT/<path>_overlay.png. An image that cannot be read or inspected is an error row; the run goes on.
    """
    import time

    from myriad.inspection import Inspector
    from myriad.run_results import ResultsWriter, check_output

    profile = None
    if profile_dir is not None:
        from myriad.profiles import load_profile

        _refuse_fit_options(click.get_current_context())
        profile = load_profile(profile_dir)
        expert = profile.expert
    config = _parse_config(config_json)
    if ask is not None:
        from myriad.answers_text import check_question

        check_question(ask, "--ask")  # empty or over-long: refused before any fitting
    if batch_size < 1:
        raise click.BadParameter("must be at least 1", param_hint="--batch-size")
    rules = load_rules_option(rules_file)
    test_paths = list_candidates(images, "IMAGES")
    normal_paths, skipped_normal = collect_images(normal, "--normal") if normal else ([], [])
    for path, reason in skipped_normal:
        click.echo(f"warning: skipped {path}: {reason}", err=True)
    if not test_paths:
        raise click.ClickException(f"no readable images to inspect in {', '.join(map(str, images))}")
    check_output(output, resume)  # before a long fit: an unfinished run here is continued only with --resume
    inspector = Inspector(
        expert, config, lmm=lmm, device=device, precision=precision, false_alarm_rate=false_alarm_rate, tile=tile,
        answers=answers, calibration=calibration, verdict=verdict,
    )
    calibration_note = ""
    if profile is not None:
        inspector.use_profile(profile)
        rate = getattr(inspector.detector, "false_alarm_rate", None)
        calibration_note = f"profile {profile_dir}: {expert} fitted on {profile.record.get('num_normals')} normal images"
        if rate is not None:
            calibration_note += f", expected to flag about {_percent(rate)} of good images"
        calibration_note += _verdict_note(inspector)
    elif normal_paths:
        inspector.fit(normal_paths)
        rate = getattr(inspector.detector, "false_alarm_rate", None)
        if rate is not None:
            calibration_note = (
                f"calibrated on {len(normal_paths)} normal images, {expert} is expected to flag about "
                f"{_percent(rate)} of good images (more normal images lower it; --false-alarm-rate sets it)"
            ) + _verdict_note(inspector)
    elif normal:
        raise click.ClickException(f"no readable normal images in {', '.join(map(str, normal))}")
    elif inspector.zero_shot_only:
        click.echo(
            f"warning: no --normal images, so {expert}'s scores and maps are not calibrated (its raw 0.5 is the "
            "threshold). A few normal images given with --normal calibrate a zero-shot expert; it does not train on them.",
            err=True,
        )
    if rules is not None:  # replaces a profile's rules
        inspector.set_rules(rules)
    identity = {
        "expert": expert, "config": config, "lmm": lmm, "ask": ask, "answers": answers, "verdict": verdict,
        "profile": None if profile_dir is None else str(Path(profile_dir).resolve()),
        "normal": [str(Path(p).resolve()) for p in normal_paths],
        "false_alarm_rate": false_alarm_rate, "calibration": calibration, "tile": str(tile),
        "rules": None if inspector.rules is None else inspector.rules.model_dump(mode="json"),
    }
    if engine != "ray" and (address is not None or workers is not None):
        raise click.UsageError("--address and --workers need --engine ray")
    created = not output.exists()
    writer = ResultsWriter(output, identity, resume=resume, parquet=formats == "parquet")
    todo = [p for p in test_paths if str(p.resolve()) not in writer.done]
    if resume and len(todo) < len(test_paths):
        click.echo(f"resuming: {len(test_paths) - len(todo)} of {len(test_paths)} images already done", err=True)
    started = time.perf_counter()
    shown = _Delivered(writer, test_paths, len(test_paths) - len(todo), engine)
    try:
        if engine == "ray":
            _inspect_on_ray(inspector, profile_dir, todo, output, identity, batch_size, address, workers, precision,
                            device, shown)
        else:
            _inspect_all(inspector, todo, batch_size, ask, output, shown)
    except BaseException:
        writer.merge_blocks(str(p.resolve()) for p in test_paths)  # what Ray's workers finished is kept
        writer.discard_if_empty()  # nothing done: nothing left to resume
        if created and not writer.tally.images:
            import shutil

            shutil.rmtree(output, ignore_errors=True)
        raise
    finally:
        shown.close()
    seconds = time.perf_counter() - started
    final = writer.finish()
    click.echo(f"wrote {final} ({writer.tally.images} images) and overlays in {output}")
    for line in _summary(writer.tally, len(todo), seconds, inspector):
        click.echo(line, err=line.startswith("warning"))
    if calibration_note:
        click.echo(calibration_note)


#: Options that only mean something when fitting: with --profile they were set by `myriad fit`.
FIT_OPTIONS = ("normal", "expert", "config_json", "false_alarm_rate", "calibration", "tile")


def _refuse_fit_options(ctx: click.Context) -> None:
    """With --profile, a fitting option given on the command line is an error naming it (the profile fixed it)."""
    from click.core import ParameterSource

    given = [p for p in ctx.command.params if p.name in FIT_OPTIONS and ctx.get_parameter_source(p.name) == ParameterSource.COMMANDLINE]
    if given:
        names = ", ".join(p.opts[0] for p in given)
        raise click.UsageError(f"{names}: set when the profile was fitted; refit it with `myriad fit ... -o PROFILE` to change")


def _inspect_all(
    inspector: Any, todo: list[Path], batch_size: int, ask: str | None, folder: Path, shown: Any
) -> None:
    """Inspect ``todo`` in batches in this process: each batch's rows written (overlays into ``folder``), then shown."""
    from myriad.batch_run import inspect_paths

    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        shown(inspect_paths(inspector, batch, [shown.overlay_names[p] for p in batch], ask, folder))


def _inspect_on_ray(
    inspector: Any, profile_dir: Path | None, todo: list[Path], output: Path, identity: dict, batch_size: int,
    address: str | None, workers: int | None, precision: str, device: str, shown: Any,
) -> None:
    """``--engine ray``: the actors load the profile (written to OUTPUT/profile first when fitted here) and write
    each block's rows to its own file; the rows also stream back to be shown here, and the files are merged into the
    results at the end."""
    from myriad.engines.ray_engine import RaySettings, run_ray

    if profile_dir is None:  # fitted in this process: the actors read it from OUTPUT (a path every node shares)
        from myriad.profiles import save_profile

        profile_dir = save_profile(inspector, output / "profile", len(identity["normal"]), identity["normal"], force=True)
    settings = {k: identity[k] for k in ("lmm", "answers", "verdict", "ask", "rules")}
    settings.update(device=device, precision=precision)
    ran = run_ray([(p, shown.overlay_names[p]) for p in todo], Path(profile_dir), settings, output,
                  shown.writer.blocks, shown, RaySettings(address=address, workers=workers, batch_size=batch_size))
    shown.writer.merge_blocks(str(p.resolve()) for p in todo)
    actors = _count(ran["experts"], "expert actor") + (f" and {_count(ran['myriad'], 'Myriad (LMM) actor')}" if ran["myriad"] else "")
    click.echo(f"ray: {actors} on a cluster of {ran['cpus']:g} CPUs and {ran['gpus']:g} GPUs", err=True)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


class _Delivered:
    """Takes each batch's rows from either engine: writes them (the writer drops repeats; on Ray the workers wrote
    them), prints them, and moves the progress bar (images per second, time left; drawn on a terminal)."""

    def __init__(self, writer: Any, all_paths: list[Path], done: int, engine: str) -> None:
        from tqdm import tqdm

        self.writer = writer
        #: on Ray the workers write the rows (merged at the end): here they are only shown, each image once
        self.write = engine != "ray"
        self.seen: set[str] = set()
        names = _display_names(all_paths)
        self.overlay_names = _unique_overlay_names(names)
        self.names = {str(p.resolve()): name for p, name in names.items()}
        self.bar = tqdm(total=len(all_paths), initial=done, unit="img", desc=f"inspect ({engine})", disable=None,
                        leave=False, dynamic_ncols=True)

    def __call__(self, rows: list[dict]) -> None:
        if self.write:
            written = self.writer.append(rows)
        else:
            written = [r for r in rows if r["path"] not in self.seen and r["path"] not in self.writer.done]
            self.seen.update(r["path"] for r in written)
        _show(written, [self.names[r["path"]] for r in written])
        self.bar.update(len(written))

    def close(self) -> None:
        self.bar.close()


def _show(rows: list[dict], shown: list[str]) -> None:
    """Print each row's lines (error rows as warnings on stderr)."""
    from myriad.batch_run import row_lines

    for row, name in zip(rows, shown):
        for line in row_lines(name, row):
            click.echo(line, err=line.startswith("warning:"))


def _summary(tally: Any, inspected: int, seconds: float, inspector: Any) -> list[str]:
    """The run's summary from its :class:`~myriad.run_results.RunTally`: counts, alarms, errors, throughput, and a
    warning when alarms run far above the stated rate."""
    from scipy.stats import binomtest

    alarms, reviews, decided = tally.flagged, tally.review, tally.decided
    speed = f", {inspected / seconds:.2f} images/s" if inspected and seconds > 0 else ""
    ruled = f", {reviews} for review, {tally.accepted} alarms accepted by the rules" if tally.ruled else ""
    lines = [f"{tally.images} images: {alarms} flagged, {decided - alarms - reviews} normal, {tally.errors} errors{ruled}; "
             f"{inspected} inspected in this call in {seconds:.0f} s{speed}"]
    rate = inspector.verdict_false_alarm_rate
    if decided and rate:
        share = alarms / decided
        p = binomtest(alarms, decided, min(max(rate, 1e-9), 1.0), alternative="greater").pvalue
        if share > 2 * rate and p < 1e-3:
            lines.append(
                f"warning: {_percent(share)} of the images were flagged, far above the {_percent(rate)} of good parts "
                "the calibration expects: many defects, a drift of the line (light, camera, material), a bad batch, "
                "or normal images of another product"
            )
    return lines


def _display_names(paths: list[Path]) -> dict[Path, str]:
    """Each image's path relative to the folder all inputs share (``good/001.png``), as shown and in overlay names."""
    import os

    resolved = {p: p.resolve() for p in paths}
    root = Path(os.path.commonpath([r.parent for r in resolved.values()]))
    return {p: r.relative_to(root).as_posix() for p, r in resolved.items()}


def _unique_overlay_names(shown: dict[Path, str]) -> dict[Path, str]:
    """``good/001.png`` -> ``good_001_overlay.png``; ``a.png`` + ``a.jpg`` -> ``a_png_overlay.png``, ``a_jpg_overlay.png``."""
    from collections import Counter

    def plain(name: str) -> str:
        return "_".join(Path(name).with_suffix("").parts)

    counts = Counter(plain(n) for n in shown.values())
    return {
        p: (plain(n) if counts[plain(n)] == 1 else plain(n) + "_" + Path(n).suffix.lstrip(".")) + "_overlay.png"
        for p, n in shown.items()
    }


def _parse_config(value: str | None) -> dict:
    if not value:
        return {}
    path = Path(value)
    text = path.read_text() if path.is_file() else value
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint="--config") from exc
    if not isinstance(data, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--config")
    return data


def _verdict_note(inspector: Any) -> str:
    """``; Myriad's verdict ...``: its expected false-alarm rate beside the expert's ('' without a calibrated LMM)."""
    verdict = inspector.verdict
    if verdict is None:
        return ""
    if verdict.fallback:
        return f"; Myriad's verdict is the expert's decision ({verdict.fallback})"
    rate = inspector.verdict_false_alarm_rate
    if rate is None:
        return "; Myriad's verdict is the LMM's own answer (--verdict lmm: its false-alarm rate is not calibrated)"
    if verdict.active == "expert":
        return "; Myriad's verdict is the expert's decision (--verdict expert)"
    return f"; Myriad's verdict, which may add the LMM's confident alarms, about {_percent(rate)}"


def _percent(rate: float) -> str:
    """A rate as a short percentage: ``2 %``, ``0.5 %``."""
    value = 100 * rate
    return f"{value:.0f} %" if value >= 1.5 else f"{value:.1g} %"
