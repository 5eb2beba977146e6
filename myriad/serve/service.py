"""The inspection service shared by the API and the page.

It holds what is loaded once (the Myriad LMM, or none), the store of profiles and sessions,
the limits, and one lock around every model call: experts and the LMM are not re-entrant, so
inference runs one request at a time while uploads, decoding and rendering run in parallel.
It calls only the public :class:`myriad.inspection.Inspector` API.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from myriad.serve.errors import BadImageError, ConflictError, ForbiddenError, NotFoundError, ServeError
from myriad.serve.limits import Limits, check_count, check_file_size, load_checked_image
from myriad.inspection import DEFAULT_PRECISION
from myriad.serve.profiles import Profile, ProfileStore, Session, check_profile_name

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np


class InspectionService:
    """Fits profiles, inspects images and answers follow-ups with one shared model."""

    def __init__(
        self,
        model: Any = None,
        *,
        lmm_label: str | None = None,
        default_expert: str = "patchcore",
        device: str = "cpu",
        limits: Limits | None = None,
        store: ProfileStore | None = None,
        data_root: str | Path | None = None,
    ) -> None:
        self.model = model
        self.lmm_label = lmm_label or ("none" if model is None else "injected")
        self.default_expert = default_expert
        self.device = device
        self.limits = limits or Limits()
        self.store = store or ProfileStore()
        self.data_root = Path(data_root).resolve() if data_root is not None else None
        self.started = time.time()
        self._inference = threading.Lock()

    @classmethod
    def load(cls, lmm: str | Path | None = "mini", device: str = "cpu", precision: str = DEFAULT_PRECISION, **kwargs: Any) -> "InspectionService":
        """Load the LMM once (``"mini"``, a weights path, or ``"none"``) and build the service.

        Raises :class:`myriad.errors.WeightsError` with a clear message when the weights are missing.
        """
        from myriad.inspection import load_lmm

        model = load_lmm(lmm, device, precision)
        label = "none" if model is None else str(lmm)
        return cls(model, lmm_label=label, device=device, **kwargs)

    @property
    def has_lmm(self) -> bool:
        """Whether answers and follow-ups come from the Myriad LMM."""
        return self.model is not None

    # -- experts ----------------------------------------------------------------------
    def experts(self) -> list[dict[str, Any]]:
        """The installed experts (as ``myriad experts --json`` lists them)."""
        from myriad.plugins import list_experts

        return [
            {
                "name": info.name,
                "modes": [m.value for m in info.modes],
                "distribution": info.distribution,
                "version": info.version,
                "description": info.description,
            }
            for info in list_experts()
        ]

    def expert_names(self) -> list[str]:
        """Names of the installed experts."""
        return [e["name"] for e in self.experts()]

    # -- profiles ---------------------------------------------------------------------
    def fit_profile(
        self, name: str, images: Sequence["np.ndarray"], expert: str | None = None, config: dict[str, Any] | None = None
    ) -> Profile:
        """Fit ``expert`` (default: the server's) on normal ``images`` and keep it as profile ``name``.

        A zero-shot-only expert (e.g. ``musc``) may be given no images: it is used unfitted.
        """
        from myriad.experts import Mode
        from myriad.inspection import Inspector
        from myriad.plugins import get_expert_info

        check_profile_name(name)
        expert = expert or self.default_expert
        config = dict(config or {})
        info = get_expert_info(expert)  # unknown expert: 404 listing the installed ones
        check_count(len(images), "normal images", self.limits)
        inspector = Inspector(expert, config, lmm="none", device=self.device, model=self.model)
        fit_ms = 0.0
        if images:
            with self._inference:
                start = time.perf_counter()
                inspector.fit(list(images))
                fit_ms = (time.perf_counter() - start) * 1000
            mode = inspector.mode
        elif info.modes == (Mode.ZERO_SHOT,):
            mode = Mode.ZERO_SHOT.value
        else:
            modes = ", ".join(m.value for m in info.modes)
            raise BadImageError(f"no normal images given: expert {expert!r} ({modes}) needs normal reference images")
        profile = Profile(
            name=name, expert=expert, config=config, mode=mode, num_normal=len(images), inspector=inspector, fit_ms=fit_ms
        )
        self.store.put_profile(profile)
        return profile

    def folder_images(self, folder: str) -> list["np.ndarray"]:
        """The normal images of a server-side folder under ``data_root`` (not recursive)."""
        from myriad.images import list_images

        if self.data_root is None:
            raise ForbiddenError("server-side folders are disabled: start the server with --data-root DIR to allow them")
        path = (self.data_root / folder).resolve()
        if not path.is_relative_to(self.data_root):
            raise ForbiddenError(f"{folder}: outside the server's data root")
        if not path.is_dir():
            raise NotFoundError(f"{folder}: no such folder under the server's data root")
        files = list_images(path)
        if not files:
            raise BadImageError(f"{folder}: no image files in this folder")
        check_count(len(files), f"images in {folder}", self.limits)
        images = []
        for file in files:
            shown = str(file.relative_to(self.data_root))
            check_file_size(file, shown, self.limits)
            images.append(load_checked_image(file, shown, self.limits))
        return images

    # -- inspection -------------------------------------------------------------------
    def inspect(self, profile: str | Profile, image: "np.ndarray", name: str, ask: str | None = None) -> Session:
        """Inspect one image with a profile; returns a new session holding the result and its overlay."""
        from myriad.serve.render import overlay_png

        if isinstance(profile, str):
            profile = self.store.get_profile(profile)
        inspector = profile.inspector
        with self._inference:
            (result,) = inspector.inspect([image], ask=ask or None, names=[name])
        start = time.perf_counter()
        png = overlay_png(result)
        result.timings_ms["overlay"] = (time.perf_counter() - start) * 1000
        session = Session(id=Session.new_id(), profile=profile.name, result=result, overlay_png=png, inspector=inspector)
        self.store.add_session(session)
        return session

    def ask(self, session_id: str, question: str) -> str:
        """Answer a follow-up question about a session's image; the conversation continues."""
        question = question.strip()
        if not question:
            raise ServeError("a follow-up needs a question", status=422)
        session = self.store.get_session(session_id)
        if not self.has_lmm or session.inspector.model is None:
            raise ConflictError("follow-up questions need the Myriad LMM; this server runs expert-only (--lmm none)")
        with self._inference:
            answer, session.conversation = session.inspector.follow_up(session.result, question, session.conversation)
            session.turns.append((question, answer))
        return answer

    def health(self) -> dict[str, Any]:
        """Liveness and what is loaded."""
        from myriad import __version__

        return {
            "status": "ok",
            "version": __version__,
            "lmm": self.lmm_label,
            "default_expert": self.default_expert,
            "device": self.device,
            "uptime_s": round(time.time() - self.started, 1),
            **self.store.counts(),
        }
