"""Myriad's soft-stain expert: local brightness and colour at native resolution against the normals'.

Importing this package is cheap; the expert (numpy, scipy, faiss) lives in
:mod:`myriad_experts_stain.expert` and loads when the host first builds one.
"""

__all__: list[str] = []
