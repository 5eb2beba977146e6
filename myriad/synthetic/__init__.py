"""Synthetic data made offline: textures, defect painters and MVTec-AD-layout dev sets.

* :mod:`myriad.synthetic.textures`: texture sources (photos bundled with scikit-image,
  cropped and jittered, and procedural textures), each giving endless seeded normal images.
* :mod:`myriad.synthetic.defects`: named defect painters returning ``(image, mask)``; the
  kinds are split into :data:`~myriad.synthetic.defects.EVAL_DEFECTS` and a disjoint
  :data:`~myriad.synthetic.defects.TRAIN_DEFECTS`.
* :mod:`myriad.synthetic.devset`: writes a deterministic MVTec-AD-layout dataset
  (``myriad make-devset``) and :func:`~myriad.synthetic.devset.iter_defect_samples` for
  training generators.
* :mod:`myriad.synthetic.realistic_devset` (with ``realistic_photos``, ``realistic_defects`` and
  ``realistic_buckets``): ``make-devset --preset realistic``, native-resolution crops of real
  photos with subtle real-sized defects, and metrics per size/visibility/family bucket.
* :mod:`myriad.synthetic.nsa`: NSA-style (Poisson-blended patch) anomalies for training
  on real normal images; closest to the ``cut_paste``/``cut_paste_self`` family here.

Everything is numpy/scipy/scikit-image/Pillow (no torch) and deterministic for a seed.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "TEXTURES": "myriad.synthetic.textures",
    "get_texture": "myriad.synthetic.textures",
    "sample_texture": "myriad.synthetic.textures",
    "DEFECTS": "myriad.synthetic.defects",
    "EVAL_DEFECTS": "myriad.synthetic.defects",
    "TRAIN_DEFECTS": "myriad.synthetic.defects",
    "paint_defect": "myriad.synthetic.defects",
    "DevsetSpec": "myriad.synthetic.devset",
    "PRESETS": "myriad.synthetic.devset",
    "make_devset": "myriad.synthetic.devset",
    "iter_defect_samples": "myriad.synthetic.devset",
    "RealisticSpec": "myriad.synthetic.realistic_devset",
    "make_realistic_devset": "myriad.synthetic.realistic_devset",
    "REALISTIC_EVAL_KINDS": "myriad.synthetic.realistic_defects",
    "REALISTIC_TRAIN_KINDS": "myriad.synthetic.realistic_defects",
    "bucket_metrics": "myriad.synthetic.realistic_buckets",
    "render_bucket_tables": "myriad.synthetic.realistic_buckets",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'myriad.synthetic' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
