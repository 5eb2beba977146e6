"""Texture-wide ("global") expert for Myriad (distribution ``myriad-experts-global``).

Importing this package is cheap; the expert (torch, timm, scikit-learn) lives in
:mod:`myriad_experts_global.expert` and loads when the expert is first used.
"""

__version__ = "0.1.0"
