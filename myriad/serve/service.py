"""The inspection service shared by the API and the page.

It holds what is loaded once (the Myriad LMM, or none), the store of profiles and sessions,
the limits, and one lock around every model call: experts and the LMM are not re-entrant, so
inference runs one request at a time while uploads, decoding and rendering run in parallel.
It calls only the public :class:`myriad.inspection.Inspector` API. Every call names its *owner*
(the client, see :mod:`myriad.serve.security`); profiles and sessions are per owner. Questions,
turns per session and each answer's tokens and seconds are bounded by :class:`Limits`, and so are
the decoded pixels of one request (:class:`myriad.serve.limits.PixelBudget`). Each fitted profile and
each session is measured in bytes (:func:`myriad.serve.memory.held_bytes`, the shared LMM and the
shared model cache left out) for the store's memory budget. A session keeps no fitted model: follow-ups
are answered by a model-free inspector (the LMM, the answer route, the profile's false-alarm rate).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from myriad.defaults import DEFAULT_EXPERT
from myriad.inspection import DEFAULT_PRECISION
from myriad.serve.bounds import BoundedModel
from myriad.serve.errors import BadImageError, ConflictError, ForbiddenError, NotFoundError, ServeError, TooLargeError
from myriad.serve.experts import check_expert_name, client_config, operator_config
from myriad.serve.limits import Limits, PixelBudget, check_count, clip, decode_checked_image, open_regular_file
from myriad.serve.profiles import Profile, ProfileStore, Session, check_profile_name

DEFAULT_OWNER = "local/default"

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np


class InspectionService:
    """Fits profiles, inspects images and answers follow-ups with one shared model."""

    def __init__(
        self,
        model: Any = None,
        *,
        lmm_label: str | None = None,
        default_expert: str = DEFAULT_EXPERT,
        device: str = "cpu",
        limits: Limits | None = None,
        store: ProfileStore | None = None,
        data_root: str | Path | None = None,
        expert_config: dict[str, dict[str, Any]] | None = None,
        false_alarm_rate: float | None = None,
        answers: str = "facts",
        lmm_source: str | Path | None = None,
        state_dir: str | Path | None = None,
    ) -> None:
        from myriad.calibration import check_false_alarm_rate
        from myriad.inspection import ANSWER_ROUTES

        if answers not in ANSWER_ROUTES:
            raise ServeError(f"answers={answers!r}: choose one of {', '.join(ANSWER_ROUTES)}", status=422)
        #: how every profile's text answers are made (:class:`myriad.inspection.Inspector`)
        self.answers = answers
        self.limits = limits or Limits()
        self.raw_model = model
        self.model = None if model is None else BoundedModel(model, self.limits.max_new_tokens, self.limits.max_generation_s)
        self.lmm_label = lmm_label or ("none" if model is None else "injected")
        self.default_expert = default_expert
        self.device = device
        #: the operator's settings per expert or fusion (``--expert-config``), under every client's allowed ones
        self.expert_config = {k: dict(v) for k, v in (expert_config or {}).items()}
        #: target false-alarm rate of every profile's calibration (None: the paper's maximum held-out normal)
        self.false_alarm_rate = check_false_alarm_rate(false_alarm_rate)
        self.store = store or ProfileStore()
        self.data_root = Path(data_root).resolve() if data_root is not None else None
        self.started = time.time()
        self._inference = threading.Lock()
        #: what the LMM was loaded from (a profile's verdict calibration is kept only for the same weights)
        self.lmm_source = lmm_source
        #: where clients' fitted profiles are written (as ``myriad fit`` writes them) and read back at start
        self.state_dir = Path(state_dir) if state_dir is not None else None
        if self.state_dir is not None:
            self.state_dir.mkdir(parents=True, exist_ok=True)

    @classmethod
    def load(cls, lmm: str | Path | None = "mini", device: str = "cpu", precision: str = DEFAULT_PRECISION, **kwargs: Any) -> "InspectionService":
        """Load the LMM once (``"mini"``, a weights path, or ``"none"``) and build the service.

        Raises :class:`myriad.errors.WeightsError` with a clear message when the weights are missing.
        """
        from myriad.inspection import load_lmm

        model = load_lmm(lmm, device, precision)
        label = "none" if model is None else ("mini" if str(lmm) == "mini" else "weights file")  # never a server path
        return cls(model, lmm_label=label, device=device, lmm_source=None if model is None else lmm, **kwargs)

    @property
    def has_lmm(self) -> bool:
        """Whether answers and follow-ups come from the Myriad LMM."""
        return self.model is not None

    # -- experts ----------------------------------------------------------------------
    def experts(self) -> list[dict[str, Any]]:
        """The fusions on offer (:meth:`fusions`), then the installed experts (as ``myriad experts --json`` lists them)."""
        from myriad.plugins import list_experts

        singles = [
            {
                "name": info.name,
                "modes": [m.value for m in info.modes],
                "distribution": info.distribution,
                "version": info.version,
                "description": info.description,
                "members": None,
            }
            for info in list_experts()
        ]
        return self.fusions() + singles

    def fusions(self) -> list[dict[str, Any]]:
        """The fused experts offered by name: Myriad's default fusion and the server's default, if fused.

        Only those whose members are all installed; ``modes`` are the modes every member supports.
        (Clients may name any other fusion of installed experts too.)
        """
        from myriad.errors import UnknownExpertError
        from myriad.fusion import is_fused, member_names
        from myriad.plugins import get_expert_info

        offered = []
        for spec in dict.fromkeys((self.default_expert, DEFAULT_EXPERT)):
            if not is_fused(spec):
                continue
            try:
                infos = [get_expert_info(name) for name in member_names(spec)]
            except UnknownExpertError:
                continue
            modes = [m.value for m in infos[0].modes if all(m in info.modes for info in infos[1:])]
            role = " (the server's default)" if spec == self.default_expert else ""
            offered.append({
                "name": spec,
                "modes": modes,
                "distribution": None,
                "version": None,
                "description": f"Fused{role}: {' + '.join(i.name for i in infos)} on the calibrated scale; an image is "
                               "anomalous when any member is; give settings per member.",
                "members": [i.name for i in infos],
            })
        return offered

    def expert_names(self) -> list[str]:
        """Names of the installed experts."""
        return [e["name"] for e in self.experts()]

    # -- profiles ---------------------------------------------------------------------
    def _inspector(self, expert: str, config: dict[str, Any]) -> Any:
        from myriad.inspection import Inspector

        inspector = Inspector(
            expert, config, lmm="none", device=self.device, model=self.model, false_alarm_rate=self.false_alarm_rate,
            answers=self.answers,
        )
        inspector.lmm_source = self.lmm_source
        return inspector

    def preload(self, name: str, directory: str | Path) -> Profile:
        """Load a profile folder written by ``myriad fit`` as the operator's profile ``name``, shared by every
        client (read-only). Its verdict calibration is kept when it was made with this server's LMM weights."""
        from myriad.profiles import load_profile

        check_profile_name(name)
        profile = self._loaded(name, load_profile(directory), owner="operator")
        self.store.preload(profile)
        return profile

    def _loaded(self, name: str, saved: Any, owner: str) -> Profile:
        """A served profile from a loaded profile folder (:class:`myriad.profiles.Profile`), owned by ``owner``."""
        inspector = self._inspector(saved.expert, {}).use_profile(saved)
        return Profile(name=name, expert=saved.expert, config={}, mode=saved.detector.mode,
                       num_normal=int(saved.record.get("num_normals", 0)), inspector=inspector, owner=owner,
                       nbytes=self.held_bytes(inspector))

    def held_bytes(self, *items: Any) -> int:
        """Bytes ``items`` hold (:func:`myriad.serve.memory.held_bytes`), the shared LMM and cached models left out."""
        from myriad.model_cache import cached_models
        from myriad.serve.memory import held_bytes

        return held_bytes(*items, exclude=[self.raw_model, self.model, *cached_models()])

    def _state_folder(self, owner: str) -> Path:
        """The folder of ``owner``'s saved profiles under ``state_dir`` (named by a hash: owners are not paths)."""
        import hashlib

        assert self.state_dir is not None
        return self.state_dir / hashlib.sha256(owner.encode()).hexdigest()[:24]

    def _persist(self, profile: Profile) -> None:
        """Write a client's fitted profile under ``state_dir`` (atomically; it replaces the previous one)."""
        if self.state_dir is None or profile.mode == "zero_shot":
            return
        import json

        from myriad.io import atomic_write_text
        from myriad.profiles import save_profile

        folder = self._state_folder(profile.owner)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / "owner.json", json.dumps({"owner": profile.owner}))
        save_profile(profile.inspector, folder / profile.name, profile.num_normal, force=True)

    def restore(self) -> tuple[int, list[str]]:
        """Load every client's profile saved under ``state_dir`` (at start); ``(loaded, problems)``, one line each
        for a profile that no longer loads (kept on disk, not served)."""
        import json

        from myriad.profiles import load_profile

        if self.state_dir is None:
            return 0, []
        loaded, problems = 0, []
        for folder in sorted(p for p in self.state_dir.iterdir() if p.is_dir()):
            try:
                owner = str(json.loads((folder / "owner.json").read_text())["owner"])
            except (OSError, ValueError, KeyError, TypeError) as exc:
                problems.append(f"{folder}: no readable owner.json ({exc})")
                continue
            for path in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
                try:
                    check_profile_name(path.name)
                    self.store.put_profile(self._loaded(path.name, load_profile(path), owner))
                    loaded += 1
                except Exception as exc:  # noqa: BLE001 - one bad profile must not stop the server; it is reported
                    problems.append(f"{path}: {exc}")
        return loaded, problems

    def delete_profile(self, name: str, owner: str = DEFAULT_OWNER) -> None:
        """Forget ``owner``'s profile ``name``, and its saved copy under ``state_dir``."""
        import shutil

        self.store.delete_profile(name, owner)
        if self.state_dir is not None:
            shutil.rmtree(self._state_folder(owner) / name, ignore_errors=True)

    def fit_profile(
        self,
        name: str,
        images: Sequence["np.ndarray"],
        expert: str | None = None,
        config: dict[str, Any] | None = None,
        owner: str = DEFAULT_OWNER,
        from_folder: bool = False,
    ) -> Profile:
        """Fit ``expert`` (default: the server's) on normal ``images`` and keep it as ``owner``'s profile ``name``.

        ``expert`` may be a fusion (``"patchcore+global"``); ``config`` holds the client's settings
        (per member for a fusion): only :data:`myriad.serve.experts.CLIENT_FIELDS`, bounded, over the
        operator's. Calibration uses the server's ``false_alarm_rate`` when it has one. A zero-shot-only expert (e.g. ``musc``) may be given no
        images: it is used unfitted. Uploads are capped at ``limits.max_files`` images; a server-side
        folder (``from_folder``) is not. With a ``state_dir`` the fitted profile is also saved there.
        """
        from myriad.experts import Mode

        check_profile_name(name)
        expert = check_expert_name(expert, self.default_expert)
        client = dict(config or {})
        config = client_config(expert, client, operator_config(expert, self.expert_config))
        if not from_folder:
            check_count(len(images), "normal images", self.limits)
        self.store.check_room(owner, name)
        inspector = self._inspector(expert, config)
        fit_ms = 0.0
        if images:
            with self._inference:
                start = time.perf_counter()
                inspector.fit(list(images))
                fit_ms = (time.perf_counter() - start) * 1000
            mode = inspector.mode
        elif inspector.zero_shot_only:
            mode = Mode.ZERO_SHOT.value
        else:
            raise BadImageError(f"no normal images given: expert {expert!r} ({_modes(expert)}) needs normal reference images")
        check_one_image_at_a_time(inspector, expert, len(images))
        profile = Profile(
            name=name, expert=expert, config=client, mode=mode, num_normal=len(images), inspector=inspector, fit_ms=fit_ms,
            owner=owner, nbytes=self.held_bytes(inspector),
        )
        self.store.put_profile(profile)
        self._persist(profile)
        return profile

    def folder_images(self, folder: str) -> list["np.ndarray"]:
        """The normal images of a server-side folder under ``data_root`` (not recursive).

        The folder and every file in it are resolved (symbolic links followed) and must stay
        under ``data_root``; a file that leads outside is refused (403) by name. Each file is opened
        once, without blocking, and read only if that opened file is a regular file within the byte
        limit; the decoded pixels of the whole folder count against ``limits.max_request_pixels``.
        """
        from myriad.images import list_images

        if self.data_root is None:
            raise ForbiddenError("server-side folders are disabled: start the server with --data-root DIR to allow them")
        check_folder_name(folder)
        path = (self.data_root / folder).resolve()
        if not path.is_relative_to(self.data_root):
            raise ForbiddenError(f"{clip(folder)}: outside the server's data root")
        if not path.is_dir():
            raise NotFoundError(f"{clip(folder)}: no such folder under the server's data root")
        files = list_images(path)
        if not files:
            raise BadImageError(f"{clip(folder)}: no image files in this folder")
        if len(files) > self.limits.max_folder_images:  # not the upload cap: a bound on memory the operator sets
            raise TooLargeError(f"{len(files)} images in {clip(folder)}: the limit is {self.limits.max_folder_images} "
                                "images per folder (--max-folder-images)")
        images = []
        budget = PixelBudget(self.limits)
        for file in files:
            shown = str(file.relative_to(self.data_root))
            real = file.resolve()
            if not real.is_relative_to(self.data_root):
                raise ForbiddenError(f"{shown}: a link to a file outside the server's data root")
            with open_regular_file(real, shown, self.limits) as stream:
                images.append(decode_checked_image(stream, shown, self.limits, budget))
        return images

    # -- inspection -------------------------------------------------------------------
    def check_question(self, question: str | None, what: str = "question") -> str | None:
        """``question`` stripped (None when empty), refused (422) over ``max_question_chars``."""
        question = (question or "").strip()
        if len(question) > self.limits.max_question_chars:
            raise ServeError(f"{what}: {len(question)} characters; the limit is {self.limits.max_question_chars}", status=422)
        return question or None

    def inspect(
        self, profile: str | Profile, image: "np.ndarray", name: str, ask: str | None = None, owner: str = DEFAULT_OWNER
    ) -> Session:
        """Inspect one image with a profile of ``owner``; returns a new session holding the result and its overlay."""
        from myriad.serve.render import overlay_png

        ask = self.check_question(ask, "ask")
        if isinstance(profile, str):
            profile = self.store.get_profile(profile, owner)
        inspector = profile.inspector
        with self._inference:
            (result,) = inspector.inspect([image], ask=ask, names=[name])
        start = time.perf_counter()
        png = overlay_png(result)
        result.timings_ms["overlay"] = (time.perf_counter() - start) * 1000
        session = Session(
            id=Session.new_id(), profile=profile.name, result=result, overlay_png=png, follow=self._follow_ups(profile),
            owner=owner,
        )
        session.nbytes = self.held_bytes(session)
        self.store.add_session(session)
        return session

    def _follow_ups(self, profile: Profile) -> Any:
        """An inspector that answers a session's follow-ups without ``profile``'s fitted model (a session must not
        keep a refit or deleted profile alive): the shared LMM, the answer route, the profile's false-alarm rate."""
        follow = self._inspector(profile.expert, {})
        follow.detector = _Calibration(getattr(profile.inspector.detector, "false_alarm_rate", None))
        return follow

    def ask(self, session_id: str, question: str, owner: str = DEFAULT_OWNER) -> str:
        """Answer a follow-up question about a session's image; the conversation continues (bounded in turns)."""
        question = self.check_question(question) or ""
        if not question:
            raise ServeError("a follow-up needs a question", status=422)
        session = self.store.get_session(session_id, owner)
        if session.follow.answers == "lmm" and (not self.has_lmm or session.follow.model is None):
            raise ConflictError(
                "follow-up questions of the 'lmm' answer route need the Myriad LMM; this server runs expert-only (--lmm none)"
            )
        with self._inference:  # counted and appended under one lock: concurrent asks cannot pass the limit
            if len(session.turns) >= self.limits.max_turns:
                raise ConflictError(
                    f"this session has had its {self.limits.max_turns} follow-up questions (--max-turns): inspect the "
                    "image again for a new one"
                )
            answer, session.conversation = session.follow.follow_up(session.result, question, session.conversation)
            session.turns.append((question, answer))
        self.store.resize_session(session, self.held_bytes(session))
        return answer

    def health(self) -> dict[str, Any]:
        """Liveness and what is loaded."""
        from myriad import __version__

        return {
            "status": "ok",
            "version": __version__,
            "lmm": self.lmm_label,
            "answers": self.answers,
            "default_expert": self.default_expert,
            "false_alarm_rate": self.false_alarm_rate,
            "device": self.device,
            "uptime_s": round(time.time() - self.started, 1),
            **self.store.counts(),
        }


@dataclass(frozen=True)
class _Calibration:
    """What a follow-up reads of a profile's detector: its false-alarm rate, and nothing that holds a model."""

    false_alarm_rate: float | None


def check_one_image_at_a_time(inspector: Any, expert: str, normals: int) -> None:
    """Refuse (422) a profile that could not inspect one image: a transductive expert (MuSc scores images against
    each other) without control normals to score each image beside (:class:`myriad.detector.Detector`)."""
    from myriad.calibration import MIN_CONTROLS
    from myriad.fusion import member_names
    from myriad.plugins import get_expert_info

    if inspector.detector is None:  # a zero-shot expert given no images: nothing to score an image beside
        infos = [get_expert_info(name) for name in member_names(expert)]
        lacking = [(i.name, int(getattr(i.load_factory(), "min_batch", 2))) for i in infos if i.transductive]
    else:
        members = getattr(inspector.detector, "members", None) or [inspector.detector]
        lacking = [(m.expert_name, m.min_batch) for m in members if m.min_batch > 1 and not m.uses_controls]
    for name, min_batch in lacking:
        raise BadImageError(
            f"expert {name!r} scores images against each other (at least {min_batch} per batch) and the server "
            f"inspects one image at a time beside the profile's control normals: fit it on at least "
            f"{max(MIN_CONTROLS, min_batch)} normal images (got {normals})"
        )


def _modes(expert: str) -> str:
    """The modes of an expert, or of each member of a fusion, for messages."""
    from myriad.fusion import is_fused, member_names
    from myriad.plugins import get_expert_info

    def of(name: str) -> str:
        return ", ".join(m.value for m in get_expert_info(name).modes)

    if not is_fused(expert):
        return of(expert)
    return "; ".join(f"{name}: {of(name)}" for name in member_names(expert))


def check_folder_name(folder: str) -> None:
    """Refuse (422) a ``folder`` that cannot be a relative folder name: NUL or control characters, over-long parts."""
    if not folder or len(folder) > 1024:
        raise ServeError(f"folder: give 1 to 1024 characters (got {len(folder)})", status=422)
    if not folder.isprintable():
        raise ServeError("folder: contains NUL or other control characters", status=422)
    if any(len(part.encode()) > 255 for part in folder.replace("\\", "/").split("/")):
        raise ServeError(f"folder: {clip(folder)}: a part of the path is over 255 bytes", status=422)
