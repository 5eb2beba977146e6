"""The MuSc expert: zero-shot and transductive (it scores a batch of images against each other).

``predict(images)`` needs at least two images: every image is scored by its patches'
distances to the OTHER images of the same batch, so a single image has nothing to be
compared with and raises :class:`myriad.errors.MyriadError`. Give it the whole test
set of one product (the paper scores each MVTec class's test split at once); results
depend on the batch. Nothing is fitted and nothing is saved but the config.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from myriad.api import Expert, Prediction
from myriad_experts_musc.plugin import MuScConfig

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch

    from myriad_experts_musc.backbones import CnnTokens, OpenClipTokens, TimmVitTokens


class MuScExpert(Expert):
    """Zero-shot MuSc: LNAMD + mutual scoring + RsCIN over one batch."""

    Config = MuScConfig
    transductive = True
    min_batch = 2

    def __init__(self, config: MuScConfig) -> None:
        super().__init__(config, config.mode)
        self._backbone: "CnnTokens | OpenClipTokens | TimmVitTokens | None" = None

    # -- pieces -------------------------------------------------------------------
    @property
    def backbone(self) -> "CnnTokens | OpenClipTokens | TimmVitTokens":
        """The token backbone, built (and its weights loaded) on first use."""
        if self._backbone is None:
            from myriad_experts_musc.backbones import build_backbone

            self._backbone = build_backbone(self.config)
        return self._backbone

    @property
    def image_size(self) -> int:
        """Square size images are resized to."""
        backbone = self.backbone
        return int(self.config.image_size or getattr(backbone, "image_size", None) or backbone.default_image_size)

    @property
    def r_list(self) -> list[int]:
        """The LNAMD degrees in use (the config's, else the backbone's default)."""
        chosen = self.config.r_list
        return list(chosen) if chosen is not None else list(self.backbone.default_r_list)

    @property
    def rscin_k(self) -> list[int]:
        """The RsCIN k-list in use (the config's, else the backbone's default; empty: off)."""
        chosen = self.config.rscin_k
        return list(chosen) if chosen is not None else list(self.backbone.default_rscin_k)

    def extract(self, images: list["np.ndarray"]) -> tuple[list["torch.Tensor"], "torch.Tensor"]:
        """Per-layer grids (``N x C x h x w``, float16 on the CPU) and ``N x D`` image embeddings."""
        import torch

        from myriad.api import to_tensor

        backbone, size, step = self.backbone, self.image_size, self.config.batch_size
        layers: list[list[torch.Tensor]] = []
        embeddings = []
        with self.progress_stage("MuSc features", len(images), unit="img", terminal_only=False) as stage:
            for start in range(0, len(images), step):
                chunk = images[start : start + step]
                grids, embedding = backbone(to_tensor(chunk, size, backbone.normalisation, interpolation="bicubic"))
                if not layers:
                    layers = [[] for _ in grids]
                for store, grid in zip(layers, grids):
                    store.append(grid.detach().to("cpu", torch.float16))
                embeddings.append(embedding.detach().float().cpu())
                stage.advance(len(chunk))
        return [torch.cat(store) for store in layers], torch.cat(embeddings)

    def score_maps(self, grids: list["torch.Tensor"]) -> "torch.Tensor":
        """``N x h x w`` patch-score maps: mutual scoring averaged over layers, then over ``r``."""
        import torch

        from myriad_experts_musc.scoring import lnamd, mutual_scores, num_pairs

        cfg = self.config
        device = torch.device(cfg.device)
        n = grids[0].shape[0]
        grid = tuple(int(s) for s in grids[0].shape[-2:])  # the shallowest layer's grid
        r_list = self.r_list
        total = len(r_list) * len(grids) * num_pairs(n, cfg.references)
        per_r = []
        with self.progress_stage("MuSc mutual scoring", total, unit="pair", terminal_only=False) as stage:
            for r in r_list:
                per_layer = torch.zeros(n, grid[0] * grid[1], dtype=torch.float64)
                for raw in grids:
                    z = torch.empty(n, grid[0] * grid[1], raw.shape[1], dtype=torch.float32, device=device)
                    for start in range(0, n, cfg.batch_size):  # LNAMD in chunks: bounded memory
                        part = raw[start : start + cfg.batch_size].to(device)
                        z[start : start + part.shape[0]] = lnamd(part, r, grid)
                    per_layer += mutual_scores(
                        z, cfg.topmin, cfg.chunk_mb * 2**20,
                        progress=stage.advance, references=cfg.references, seed=cfg.seed,
                    ).double().cpu()
                    del z
                per_r.append(per_layer / len(grids))
        return (torch.stack(per_r).mean(dim=0)).float().reshape(n, *grid)

    # -- the expert contract ----------------------------------------------------------
    def _predict(self, images: list["np.ndarray"]) -> list[Prediction]:
        import numpy as np
        import torch
        import torch.nn.functional as F

        from myriad_experts_musc.plugin import POSITION_BASELINE_MIN_IMAGES
        from myriad_experts_musc.scoring import position_baseline, rscin

        grids, embeddings = self.extract(images)
        maps = self.score_maps(grids)
        if len(images) >= POSITION_BASELINE_MIN_IMAGES:
            maps = position_baseline(maps, self.config.position_baseline)
        # Image score: the maximum of the map (bilinear, align_corners=True keeps the grid maximum), then RsCIN.
        scores = rscin(maps.flatten(1).amax(dim=1).double(), embeddings, self.rscin_k)
        out = []
        for image, grid_map, score in zip(images, maps, scores):
            h, w = image.shape[:2]
            full = F.interpolate(grid_map[None, None], size=(h, w), mode="bilinear", align_corners=True)[0, 0]
            out.append(Prediction(anomaly_map=full.numpy().astype(np.float32), score=float(score)))
        return out
