"""PatchCore expert for Myriad (distribution ``myriad-experts-patchcore``).

Importing this package is cheap; the expert (torch, timm, faiss) lives in
:mod:`myriad_experts_patchcore.expert` and loads when the expert is first used.
"""

__version__ = "0.1.0"
