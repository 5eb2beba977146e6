"""Sub-commands of the ``myriad`` CLI (orchestration only; compute lives elsewhere)."""
