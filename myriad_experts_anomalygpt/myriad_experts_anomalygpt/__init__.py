"""AnomalyGPT's vision expert for Myriad (one-class decoder, few-shot memory). See README.md."""

__all__: list[str] = []
