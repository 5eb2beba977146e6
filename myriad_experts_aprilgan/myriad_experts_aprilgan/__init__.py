"""AprilGAN expert for Myriad (zero-shot adapters + prompts, few-shot memory). See README.md."""

__all__: list[str] = []
