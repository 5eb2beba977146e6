"""Host defaults named once (cheap to import: the CLI reads them for ``--help``)."""

from __future__ import annotations

#: The expert ``myriad inspect``, ``myriad eval`` and ``myriad serve`` use unless told otherwise:
#: PatchCore (local defects) fused with the texture-wide ``global`` expert, chosen by measurement
#: on the realistic benchmark (docs/benchmarks.md).
DEFAULT_EXPERT = "patchcore+global"
