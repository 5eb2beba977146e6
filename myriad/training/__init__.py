"""Training Myriad: data (normal + NSA-synthetic images), expert maps, the loop, checkpoints.

Orchestration only: the model lives in :mod:`myriad.lmm`, the experts in their plugins.
"""
