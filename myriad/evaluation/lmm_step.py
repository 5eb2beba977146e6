"""The ``--lmm`` evaluation step: Myriad's text answers beside the expert's own decisions.

For each batch the step feeds the images and the expert's *calibrated* maps to the
model, asks the default question (or ``--ask``), stores the answer and its parse
(:func:`myriad.lmm.prompting.parse_answer`) in each record's ``extra``, and reports per
category: ``accuracy`` (parsed answers vs labels, ``unknown`` excluded, as the
published evaluation does), ``accuracy_all`` (``unknown`` counted as wrong) and
``unknown`` (how many answers could not be parsed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from myriad.datasets import Category, Sample
    from myriad.detector import Detection
    from myriad.evaluation.records import ImageRecord


@dataclass
class LMMStep:
    """Evaluation step running the Myriad LMM on every batch."""

    model: Any
    instruction: str | None = None
    device: str = "cpu"
    name: str = "lmm"
    max_new_tokens: int | None = None
    seconds: float = field(default=0.0, init=False)

    def process(
        self,
        category: "Category",
        samples: Sequence["Sample"],
        images: Sequence["np.ndarray"],
        detections: Sequence["Detection"],
        records: Sequence["ImageRecord"],
    ) -> None:
        """Answer for each image of the batch; fills ``record.extra``."""
        import time

        import numpy as np
        import torch

        from myriad.images import resize_map
        from myriad.lmm.prompting import parse_answer

        start = time.perf_counter()
        size = self.model.config.prompt_generators.map_size
        maps = torch.from_numpy(np.stack([resize_map(d.anomaly_map, size, size) for d in detections]))[:, None]
        pixels = self.model.preprocess(list(images)).to(self.device)
        kwargs = {} if self.max_new_tokens is None else {"max_new_tokens": self.max_new_tokens}
        with torch.inference_mode():
            answers = self.model.generate(
                pixels, maps.to(self.device), self.instruction,
                false_alarm_rates=[d.false_alarm_rate for d in detections], **kwargs,
            )
        for record, answer in zip(records, answers):
            record.extra["lmm_answer"] = answer
            record.extra["lmm_decision"] = parse_answer(answer)
        self.seconds += time.perf_counter() - start

    def metrics(self, records: Sequence["ImageRecord"]) -> dict[str, float | None]:
        """``accuracy`` (unknown excluded), ``accuracy_all`` and the ``unknown`` count."""
        decided = [r for r in records if r.extra.get("lmm_decision") in ("anomalous", "normal")]
        correct = sum((r.extra["lmm_decision"] == "anomalous") == bool(r.label) for r in decided)
        unknown = len(records) - len(decided)
        return {
            "accuracy": correct / len(decided) if decided else None,
            "accuracy_all": correct / len(records) if records else None,
            "unknown": float(unknown),
        }
