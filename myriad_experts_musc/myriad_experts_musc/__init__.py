"""MuSc expert for Myriad (zero-shot, transductive). See README.md for the model card."""

__all__: list[str] = []
