"""Likely causes per defect kind: a curated table with its sources, never invented per answer.

:data:`LIKELY_CAUSES` maps each kind of :data:`myriad.defect_kinds.KINDS` to the causes that
general references on surface imperfections and on fabric inspection name most often for it,
and :data:`SOURCES` lists those references (``docs/findings.md`` shows the table). The table is
generic: it says what *usually* produces a defect that looks like this, not what produced this
one. Answers therefore say "likely" and name the kind's causes only when the kind itself was
measured (:func:`myriad.defect_kinds.estimate_kind`); a process engineer's knowledge of the
line always wins over it.
"""

from __future__ import annotations

__all__ = ["LIKELY_CAUSES", "SOURCES", "likely_causes"]

#: References the table was curated from (numbers used in :data:`LIKELY_CAUSES`).
SOURCES: dict[int, str] = {
    1: "ISO 8785:1998, Geometrical product specifications (GPS) - Surface imperfections - Terms, definitions "
    "and parameters (the imperfection types: scratch, crack, pore / hole, inclusion, stain, ...).",
    2: "A. Kumar, Computer-vision-based fabric defect detection: a survey, IEEE Transactions on Industrial "
    "Electronics 55(1), 348-363, 2008 (woven-fabric defects and the process faults behind them).",
    3: "H. Y. T. Ngan, G. K. H. Pang, N. H. C. Yung, Automated fabric defect detection - a review, Image and "
    "Vision Computing 29(7), 442-458, 2011.",
    4: "J. Campbell, Complete Casting Handbook, Butterworth-Heinemann, 2011 (gas and shrinkage porosity, "
    "inclusions, cracks from restrained contraction).",
    5: "P. Bergmann, M. Fauser, D. Sattlegger, C. Steger, MVTec AD - a comprehensive real-world dataset for "
    "unsupervised anomaly detection, CVPR 2019 (defect kinds on industrial objects and textures).",
}

#: kind -> (likely causes, most common first; the numbers of the :data:`SOURCES` they come from).
LIKELY_CAUSES: dict[str, tuple[tuple[str, ...], tuple[int, ...]]] = {
    "scratch": (
        (
            "contact with a hard edge, tool or particle during handling, transport or machining",
            "abrasive debris trapped between moving surfaces",
        ),
        (1, 5),
    ),
    "crack": (
        (
            "mechanical overload or impact",
            "stress from uneven cooling or shrinkage (thermal stress)",
            "fatigue from repeated loading",
        ),
        (1, 4),
    ),
    "hole": (
        (
            "gas trapped in the material (porosity, pinholes in coatings or castings)",
            "a puncture by a sharp object, or a broken or missing yarn in a fabric",
        ),
        (1, 2, 4),
    ),
    "stain": (
        (
            "oil, grease or lubricant from machinery",
            "liquid or residue left on the surface (water, dye, cleaning agent)",
        ),
        (1, 2, 3),
    ),
    "contamination / foreign particle": (
        (
            "dust or debris in the production environment",
            "fibres, fluff or material fragments carried in from an earlier step",
            "inclusions of foreign material (slag, sand) in the bulk",
        ),
        (1, 2, 4),
    ),
    "missing or extra material": (
        (
            "incomplete filling or flow of material in moulding or casting",
            "a misplaced, missing or extra component in assembly",
        ),
        (4, 5),
    ),
    "deformation": (
        (
            "impact or excessive clamping force",
            "distortion from heat or uneven stress release",
        ),
        (4, 5),
    ),
    "texture change": (
        (
            "drift of a process setting (tension, speed, pressure or temperature)",
            "a worn or misadjusted tool (in weaving: reed, heald or take-up faults, wrong pick density)",
            "a change of raw-material batch",
        ),
        (2, 3),
    ),
    "colour change": (
        (
            "uneven dyeing, pigment or coating thickness",
            "overheating, oxidation or ageing of the surface",
            "a change of raw-material or dye batch",
        ),
        (2, 3),
    ),
}


def likely_causes(kind: str) -> tuple[str, ...]:
    """The curated likely causes of ``kind`` (KeyError names the known kinds when it is not one)."""
    try:
        return LIKELY_CAUSES[kind][0]
    except KeyError:
        raise KeyError(f"no causes for kind {kind!r}; known kinds: {', '.join(LIKELY_CAUSES)}") from None
