"""Fitted profiles: fit an expert on a line's normal images once, inspect with it for weeks.

A profile is a folder (``myriad fit NORMAL... -o PROFILE``, :func:`save_profile`):

- ``detector/``: the fitted expert, or every member of a fusion, with its calibration
  (safetensors + JSON, no pickle: :meth:`myriad.detector.Detector.save`);
- ``verdict.json``: how Myriad's verdict is decided (:class:`myriad.verdict.VerdictCalibration`),
  when an LMM was calibrated with it, and which LMM weights it was calibrated with;
- ``profile.json``: what it is: the expert spec and each member by its *registered* name,
  distribution, version and state format (never a module path, so moving a plugin's code never
  orphans a profile), the resolved config (backbone included), how many normal images it was
  fitted on, the stated false-alarm rates, the Myriad version and when it was made;
- ``manifest.json``: the sha256 of every other file. :func:`load_profile` refuses a profile
  with a missing, changed or unlisted file, one of a newer format, or one whose members'
  state format the installed plugins do not read, each with one line naming the file or the
  plugin and the command that refits it.

Orchestration only (files, hashes, versions); the fitting is :class:`myriad.inspection.Inspector`'s.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from myriad.errors import WeightsError

if TYPE_CHECKING:  # pragma: no cover
    from myriad.verdict import VerdictCalibration

__all__ = ["PROFILE_FORMAT", "PROFILE_VERSION", "Profile", "ProfileError", "load_profile", "save_profile", "file_sha256"]

#: ``profile.json``'s ``format``; a folder without it is not a profile.
PROFILE_FORMAT = "myriad-profile"
#: The layout version this Myriad writes and reads (older layouts are read while they can be; newer are refused).
PROFILE_VERSION = 1
PROFILE_FILE = "profile.json"
MANIFEST_FILE = "manifest.json"
VERDICT_FILE = "verdict.json"
RULES_FILE = "rules.json"
RULES_MASK_FILE = "rules_ignore_mask.png"
DETECTOR_DIR = "detector"


class ProfileError(WeightsError):
    """A profile folder that cannot be used as it is (the message names the file and what to do)."""


@dataclass
class Profile:
    """A loaded profile: the fitted detector, the verdict's calibration and the record describing them."""

    directory: Path
    record: dict[str, Any]
    detector: Any
    verdict: "VerdictCalibration | None"
    #: the line's acceptance rules saved with it (:class:`myriad.acceptance.AcceptanceRules`), or None
    rules: Any = None

    @property
    def expert(self) -> str:
        """The expert spec it was fitted with (``patchcore+global``)."""
        return str(self.record["expert"])

    @property
    def refit_command(self) -> str:
        """The command that fits this profile again (as recorded)."""
        return str(self.record.get("command") or f"myriad fit NORMAL... --expert {self.expert} -o {self.directory}")


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(directory: Path) -> list[str]:
    """Every file under ``directory`` but the manifest, as sorted posix paths relative to it."""
    return sorted(
        p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST_FILE
    )


def _member_records(detector: Any) -> list[dict[str, Any]]:
    """Each member by registered name, distribution, version and state format."""
    from myriad.plugins import get_expert_info

    out = []
    for member in getattr(detector, "members", [detector]):
        info = get_expert_info(member.expert_name)
        out.append({
            "name": member.expert_name,
            "distribution": info.distribution,
            "version": info.version,
            "state_format": int(getattr(type(member.base_expert), "STATE_FORMAT", 1)),
            "mode": member.mode,
            "config": member.resolved_config(),
        })
    return out


def save_profile(
    inspector: Any,
    directory: str | Path,
    num_normals: int,
    normal_sources: list[str] | None = None,
    command: str | None = None,
    force: bool = False,
) -> Path:
    """Write the fitted ``inspector``'s expert and verdict to ``directory`` (atomically: a folder appears
    whole or not at all; an existing profile is replaced only with ``force``). Returns the folder."""
    from datetime import datetime, timezone

    from myriad import __version__
    from myriad.io import atomic_write_text

    if inspector.detector is None:
        raise ProfileError("fit the inspector before saving a profile")
    target = Path(directory)
    if target.exists() and not force:
        raise ProfileError(f"{target}: already exists (pass --force to replace it)")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        detector = inspector.detector
        detector.save(staging / DETECTOR_DIR)
        verdict = None
        if inspector.verdict is not None:
            verdict = {"calibration": inspector.verdict.to_dict(), "lmm": inspector.lmm_identity()}
            atomic_write_text(staging / VERDICT_FILE, json.dumps(verdict, indent=2))
        rules = getattr(inspector, "rules", None)
        rules_data = None
        if rules is not None:
            rules_data = rules.model_dump(mode="json")
            if rules.ignore_mask is not None:  # the mask travels inside the profile (and its manifest)
                shutil.copyfile(rules.ignore_mask, staging / RULES_MASK_FILE)
                rules_data["ignore_mask"] = RULES_MASK_FILE
            atomic_write_text(staging / RULES_FILE, json.dumps(rules_data, indent=2))
        record = {
            "format": PROFILE_FORMAT,
            "format_version": PROFILE_VERSION,
            "myriad_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": command,
            "expert": inspector.expert_name,
            "mode": detector.mode,
            "members": _member_records(detector),
            "num_normals": int(num_normals),
            "normal_sources": list(normal_sources or []),
            "calibration": inspector.calibration,
            "false_alarm_rate_target": inspector.false_alarm_rate,
            "false_alarm_rate": getattr(detector, "false_alarm_rate", None),
            "verdict_rule": inspector.verdict_rule if verdict else None,
            "verdict_false_alarm_rate": inspector.verdict_false_alarm_rate if verdict else None,
            "rules": None if rules_data is None else {k: v for k, v in rules_data.items() if v not in (None, [])},
        }
        atomic_write_text(staging / PROFILE_FILE, json.dumps(record, indent=2))
        manifest = {"algorithm": "sha256", "files": {name: file_sha256(staging / name) for name in _files(staging)}}
        atomic_write_text(staging / MANIFEST_FILE, json.dumps(manifest, indent=2))
        if target.exists():  # force: swap the old folder out only once the new one is complete
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
            os.replace(target, old / "profile")
            os.replace(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ProfileError(f"{path}: missing ({what})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProfileError(f"{path}: not valid JSON ({what}): {exc}") from None
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: expected a JSON object ({what})")
    return data


def verify_manifest(directory: Path) -> None:
    """Refuse a profile with a missing, changed or unlisted file (one line naming it)."""
    manifest = _read_json(directory / MANIFEST_FILE, "the profile's sha256 manifest")
    listed = manifest.get("files")
    if manifest.get("algorithm") != "sha256" or not isinstance(listed, dict):
        raise ProfileError(f"{directory / MANIFEST_FILE}: not a sha256 manifest")
    for name in _files(directory):
        if name not in listed:
            raise ProfileError(f"{directory / name}: not part of the profile (not in {MANIFEST_FILE}); remove it or refit")
    for name, digest in listed.items():
        path = directory / name
        if ".." in Path(name).parts or Path(name).is_absolute():
            raise ProfileError(f"{directory / MANIFEST_FILE}: lists a path outside the profile: {name!r}")
        if not path.is_file():
            raise ProfileError(f"{path}: missing (listed in {MANIFEST_FILE})")
        if file_sha256(path) != digest:
            raise ProfileError(f"{path}: changed since the profile was written (sha256 differs from {MANIFEST_FILE})")


def read_profile_record(directory: str | Path) -> dict[str, Any]:
    """``profile.json`` of a verified profile folder (format and version checked); nothing is loaded."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ProfileError(f"{directory}: no such profile folder")
    record = _read_json(directory / PROFILE_FILE, "what the profile holds")
    if record.get("format") != PROFILE_FORMAT:
        raise ProfileError(f"{directory / PROFILE_FILE}: not a Myriad profile (format {record.get('format')!r})")
    version = record.get("format_version")
    if not isinstance(version, int) or version > PROFILE_VERSION:
        raise ProfileError(
            f"{directory}: profile format {version!r} is newer than this Myriad reads ({PROFILE_VERSION}); "
            f"upgrade myriad-iad or refit: {record.get('command') or 'myriad fit NORMAL... -o ' + str(directory)}"
        )
    verify_manifest(directory)
    if (directory / VERDICT_FILE).is_file():
        record = {**record, "verdict_lmm": _read_json(directory / VERDICT_FILE, "the verdict's calibration").get("lmm")}
    return record


def _check_members(directory: Path, record: dict[str, Any]) -> None:
    """Every member's plugin installed and reading the state format it was saved in."""
    from myriad.errors import UnknownExpertError
    from myriad.plugins import get_expert_info

    refit = record.get("command") or f"myriad fit NORMAL... --expert {record.get('expert')} -o {directory}"
    for member in record.get("members", []):
        name = member.get("name")
        try:
            info = get_expert_info(str(name))
        except UnknownExpertError:
            raise ProfileError(
                f"{directory}: expert {name!r} ({member.get('distribution') or 'unknown distribution'}) is not "
                "installed; install its plugin"
            ) from None
        reads = int(getattr(info.load_factory(), "STATE_FORMAT", 1))
        if int(member.get("state_format", 1)) != reads:
            raise ProfileError(
                f"{directory}: expert {name!r} was saved in state format {member.get('state_format')} and "
                f"{info.distribution} {info.version} reads format {reads}; refit: {refit}"
            )


def load_profile(directory: str | Path) -> Profile:
    """Load a profile written by :func:`save_profile` (checked first: :func:`read_profile_record`)."""
    from myriad.errors import ConfigError
    from myriad.fusion import load_detector
    from myriad.verdict import VerdictCalibration

    directory = Path(directory)
    record = read_profile_record(directory)
    _check_members(directory, record)
    try:
        detector = load_detector(directory / DETECTOR_DIR)
    except WeightsError as exc:
        raise ProfileError(f"{directory}: {exc}") from exc
    verdict = None
    if (directory / VERDICT_FILE).is_file():
        data = _read_json(directory / VERDICT_FILE, "the verdict's calibration")
        try:
            verdict = VerdictCalibration.from_dict(data["calibration"])
        except (KeyError, TypeError, ValueError, ConfigError) as exc:
            raise ProfileError(f"{directory / VERDICT_FILE}: invalid verdict calibration: {exc}") from None
    rules = None
    if (directory / RULES_FILE).is_file():
        from pydantic import ValidationError

        from myriad.acceptance import AcceptanceRules

        data = _read_json(directory / RULES_FILE, "the acceptance rules")
        if data.get("ignore_mask"):
            data["ignore_mask"] = str(directory / str(data["ignore_mask"]))
        try:
            rules = AcceptanceRules.model_validate(data)
        except ValidationError as exc:
            raise ProfileError(f"{directory / RULES_FILE}: invalid acceptance rules: {exc.errors()[0].get('msg')}") from None
    return Profile(directory, record, detector, verdict, rules)


def describe(record: dict[str, Any]) -> list[str]:
    """What a profile holds, one fact per line (``myriad profile show``)."""

    def percent(rate: Any) -> str:
        return "unknown" if rate is None else f"{100 * float(rate):.2g} %"

    lines = [
        f"expert: {record.get('expert')} ({record.get('mode')}), fitted on {record.get('num_normals')} normal images",
        f"expected false alarms: {percent(record.get('false_alarm_rate'))} of good images"
        + (f" (target {percent(record['false_alarm_rate_target'])})" if record.get("false_alarm_rate_target") else ""),
    ]
    if record.get("verdict_rule"):
        lmm = record.get("verdict_lmm") or {}
        lines.append(f"Myriad's verdict: rule {record['verdict_rule']}, expected false alarms "
                     f"{percent(record.get('verdict_false_alarm_rate'))}, calibrated with LMM {lmm.get('name')}"
                     + (f" (sha256 {str(lmm['sha256'])[:12]})" if lmm.get("sha256") else ""))
    else:
        lines.append("Myriad's verdict: not calibrated (the expert's decision, or the LMM's own answer with --verdict lmm)")
    if record.get("rules"):
        lines.append(f"acceptance rules: {record['rules']}")
    for member in record.get("members", []):
        config = member.get("config", {})
        backbone = config.get("backbone")
        lines.append(
            f"member {member.get('name')}: {member.get('distribution')} {member.get('version')}, state format "
            f"{member.get('state_format')}, mode {member.get('mode')}" + (f", backbone {backbone}" if backbone else "")
        )
    lines.append(f"made by myriad-iad {record.get('myriad_version')} on {record.get('created')}")
    if record.get("command"):
        lines.append(f"refit with: {record['command']}")
    return lines
