"""Where a batch run executes: one process (``myriad inspect``'s default) or a Ray cluster (:mod:`myriad.engines.ray_engine`)."""
