"""Configuration of the Myriad multimodal model: one schema, two presets.

``paper_config()`` reproduces the published architecture (EVA ViT-g, BLIP-2 Q-Former,
Vicuna-7B); ``mini_config()`` runs on a laptop CPU (embedded EfficientNet-Lite0,
a small Q-Former trained from scratch, SmolLM2-135M-Instruct). Both build the same
:class:`~myriad.lmm.model.MyriadLMM` class; only numbers and the trainable set differ.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from myriad.errors import ConfigError
from myriad.lmm.parts import PART_NAMES  # re-exported: the part names live in myriad.lmm.parts

#: The question of the published code (asked after the image slot, no space after ``</Img>``).
REFERENCE_QUESTION = (
    "This image may be simulated by photo editing. According to IAD expert opinions and "
    "corresponding visual descriptions, find out if there are defects in this image."
)

Preset = Literal["paper", "mini"]
DType = Literal["float32", "float16", "bfloat16"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VisionSettings(_Strict):
    """The frozen image backbone that produces the visual tokens."""

    kind: Literal["eva_vit", "lite0"] = "eva_vit"
    image_size: int = 224
    #: ``clip`` for EVA ViT-g (BLIP-2 preprocessing), ``half`` for the embedded Lite0.
    normalisation: Literal["clip", "imagenet", "half"] = "clip"
    # --- eva_vit (transformers Blip2VisionConfig) ---
    hidden_size: int = 1408
    num_layers: int = 39
    num_heads: int = 16
    intermediate_size: int = 6144
    patch_size: int = 14
    layer_norm_eps: float = 1e-6
    qkv_bias: bool = True
    #: eps of ``ln_vision`` (after LoRRA): LAVIS builds it as a plain LayerNorm (1e-5), while the
    #: ViT's own norms use ``layer_norm_eps`` (1e-6).
    ln_vision_eps: float = 1e-5
    # --- lite0 (timm tf_efficientnet_lite0 feature stages) ---
    #: timm ``out_indices``; the first stage sets the token grid, later ones are resized onto it.
    lite0_stages: tuple[int, ...] = (3, 4)
    #: Prepend a CLS-like token (the mean of all grid tokens), as the ViT has one.
    lite0_cls_token: bool = True

    @property
    def token_dim(self) -> int:
        """Width of every visual token (the LoRRA / ln_vision / cross-attention width)."""
        if self.kind == "eva_vit":
            return self.hidden_size
        channels = {0: 16, 1: 24, 2: 40, 3: 112, 4: 320}
        return sum(channels[s] for s in self.lite0_stages)

    @property
    def num_tokens(self) -> int:
        """Number of visual tokens per image (CLS included)."""
        if self.kind == "eva_vit":
            return (self.image_size // self.patch_size) ** 2 + 1
        stride = {0: 2, 1: 4, 2: 8, 3: 16, 4: 32}[self.lite0_stages[0]]
        return (self.image_size // stride) ** 2 + int(self.lite0_cls_token)


class QFormerSettings(_Strict):
    """The Q-Former (transformers ``Blip2QFormerConfig``) and its learned query tokens."""

    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    cross_attention_frequency: int = 2
    num_query_tokens: int = 32
    dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    #: Init std of a from-scratch ``language_projection`` (zero bias); ``None``: PyTorch's default
    #: (pretrained projections are loaded, so this only matters when it is trained from scratch).
    projection_init_std: float | None = None


class LLMSettings(_Strict):
    """A LLaMA-architecture causal LM (transformers ``LlamaConfig``)."""

    name: str = "vicuna-7b-v0"
    hidden_size: int = 4096
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 32
    intermediate_size: int = 11008
    vocab_size: int = 32000
    max_position_embeddings: int = 2048
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    bos_token_id: int = 1
    eos_token_id: int = 2
    pad_token_id: int | None = None


class PromptGeneratorSettings(_Strict):
    """VPG and TPG: 5 x [conv3x3, ReLU, maxpool2] over the anomaly map, then a head conv."""

    map_size: int = 224
    trunk_channels: tuple[int, ...] = (1, 4, 16, 64, 256, 1024)
    #: TPG head kernel (no padding): a 7x7 trunk output gives (7-5+1)^2 = 9 expert tokens.
    tpg_kernel: int = 5
    #: Code default: 9 learnable base prompts (randn, std 1) prepended -> 18 TPG tokens.
    #: ``False`` is the paper's text (9 expert tokens, no base prompts).
    tpg_base_prompts: bool = True
    #: Std of the base prompts' N(0, std) init (published code: 1.0, i.e. norm ~64 at 4096
    #: wide vs ~1 for Vicuna's token embeddings; ~24 vs ~3.2 for SmolLM2's).
    tpg_base_prompt_std: float = 1.0
    #: Trunk init: ``torch`` (PyTorch's default, the published code) or ``kaiming`` (He-normal,
    #: zero bias): with ``torch`` the map barely changes the tokens at the start of training.
    init: Literal["torch", "kaiming"] = "torch"
    #: Head conv: weight scaled by ``head_gain``; bias N(0, std) when set (``None``: PyTorch's init).
    head_gain: float = 1.0
    vpg_head_bias_std: float | None = None
    tpg_head_bias_std: float | None = None
    #: The trunks see ``(map - map_shift) * map_scale``; the published code feeds the map as is.
    #: For calibrated maps (threshold 0.5), shift 0.5 and scale 2 centre them on the decision.
    map_shift: float = 0.0
    map_scale: float = 1.0
    #: L2 norm every TPG map token is rescaled to (``None``: free, the published code).
    #: Unbounded, training grew the mini model's to ~550-1500 vs ~3.2 for SmolLM2's words,
    #: which broke answers to other instructions and int8 inference.
    tpg_token_norm: float | None = Field(None, gt=0)
    #: Condition the TPG on the expert's expected false-alarm rate (``Detector.false_alarm_rate``: about
    #: 1 / (n + 1) per member for the paper's threshold over n held-out normals): a FiLM of the trunk's
    #: features by ``log10(rate) + 1``, zero-initialised (not in the paper or the published code).
    tpg_rate_film: bool = False


class LoRRASettings(_Strict):
    """Low-rank residual adapter on every visual token, before ``ln_vision``."""

    rank: int = 4
    #: ``normal``: both maps N(0, std) as in the published code; ``zero``: up map zero (identity at start).
    init: Literal["normal", "zero"] = "normal"
    init_std: float = 0.02


class MyriadConfig(_Strict):
    """Everything needed to build a :class:`~myriad.lmm.model.MyriadLMM`."""

    preset: Preset = "paper"
    vision: VisionSettings = Field(default_factory=VisionSettings)
    qformer: QFormerSettings = Field(default_factory=QFormerSettings)
    llm: LLMSettings = Field(default_factory=LLMSettings)
    prompt_generators: PromptGeneratorSettings = Field(default_factory=PromptGeneratorSettings)
    lorra: LoRRASettings = Field(default_factory=LoRRASettings)

    # Ablation switches of the paper's Table 6 (modules that are off are not built).
    use_tpg: bool = True
    use_lorra: bool = True
    use_vpg: bool = True

    #: ``reference``: ``###Human: ... ###Assistant: `` (the published code); ``chat``: the tokenizer's chat template.
    template: Literal["reference", "chat"] = "reference"
    question: str = REFERENCE_QUESTION
    #: Prepend the tokenizer's BOS in training (published code: yes) / at inference (published code: no).
    bos_in_training: bool = True
    bos_at_inference: bool = False
    #: Answers are cut to this many tokens in training (the published code's ``max_txt_len``).
    max_txt_len: int = 160
    max_new_tokens: int = 90
    #: End symbol of an answer with the reference template (a stop string at inference).
    end_sym: str = "###"

    #: Parts whose parameters are trained; all others are frozen and kept in eval mode.
    trainable: tuple[str, ...] = ("lorra", "vpg", "tpg")
    #: Storage dtypes of the two big frozen parts (the small modules stay float32).
    vision_dtype: DType = "float32"
    llm_dtype: DType = "float32"

    @model_validator(mode="after")
    def _check(self) -> "MyriadConfig":
        unknown = sorted(set(self.trainable) - set(PART_NAMES))
        if unknown:
            raise ValueError(f"unknown trainable part(s) {unknown}; known: {list(PART_NAMES)}")
        pg = self.prompt_generators
        blocks = len(pg.trunk_channels) - 1
        if pg.trunk_channels[0] != 1 or blocks < 1:
            raise ValueError(f"trunk_channels must start with 1 (one anomaly-map channel), got {pg.trunk_channels}")
        if pg.map_size % (2**blocks):
            raise ValueError(f"map_size {pg.map_size} is not divisible by 2**{blocks} (one maxpool per block)")
        if pg.map_size // (2**blocks) < pg.tpg_kernel:
            raise ValueError(f"TPG kernel {pg.tpg_kernel} is larger than the {pg.map_size // 2**blocks} trunk grid")
        if self.vision.kind == "eva_vit" and self.vision.image_size % self.vision.patch_size:
            raise ValueError("image_size must be a multiple of patch_size")
        if self.qformer.hidden_size % self.qformer.num_heads:
            raise ValueError("qformer hidden_size must be divisible by num_heads")
        if self.llm.hidden_size % self.llm.num_heads or self.llm.num_heads % self.llm.num_kv_heads:
            raise ValueError("llm hidden_size / num_heads / num_kv_heads are inconsistent")
        return self

    # ----------------------------------------------------------------- derived sizes
    @property
    def vpg_tokens(self) -> int:
        """Expert query tokens the VPG adds to the Q-Former (49 = 7x7 at paper dims)."""
        pg = self.prompt_generators
        grid = pg.map_size // 2 ** (len(pg.trunk_channels) - 1)
        return grid * grid

    @property
    def tpg_tokens(self) -> int:
        """Expert tokens the TPG gives the LLM (18 with base prompts, 9 without)."""
        pg = self.prompt_generators
        grid = pg.map_size // 2 ** (len(pg.trunk_channels) - 1) - pg.tpg_kernel + 1
        return grid * grid * (2 if pg.tpg_base_prompts else 1)

    @property
    def image_tokens(self) -> int:
        """LLM input tokens standing for the image: Q-Former outputs (+ VPG queries) + TPG tokens."""
        q = self.qformer.num_query_tokens + (self.vpg_tokens if self.use_vpg else 0)
        return q + (self.tpg_tokens if self.use_tpg else 0)

    def replace(self, **changes: object) -> "MyriadConfig":
        """A validated copy with some fields changed (nested settings accept dicts of changes)."""
        data = self.model_dump()
        for key, value in changes.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key] = {**data[key], **value}
            elif isinstance(value, BaseModel):
                data[key] = value.model_dump()
            else:
                data[key] = value
        try:
            return MyriadConfig.model_validate(data)
        except ValueError as exc:
            raise ConfigError(f"invalid Myriad configuration: {exc}") from exc


def paper_config(**changes: object) -> MyriadConfig:
    """The published architecture: EVA ViT-g + BLIP-2 Q-Former + Vicuna-7B, fp16 frozen parts."""
    base = MyriadConfig(preset="paper", vision_dtype="float16", llm_dtype="float16")
    return base.replace(**changes) if changes else base


#: Dimensions of SmolLM2-135M-Instruct (checked against the cached config when loading).
SMOLLM2_135M = LLMSettings(
    name="SmolLM2-135M-Instruct",
    hidden_size=576,
    num_layers=30,
    num_heads=9,
    num_kv_heads=3,
    intermediate_size=1536,
    vocab_size=49152,
    max_position_embeddings=8192,
    rope_theta=100000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=2,
)


def mini_config(**changes: object) -> MyriadConfig:
    """A CPU-sized Myriad: Lite0 tokens, a 4-layer 384-wide Q-Former, SmolLM2-135M-Instruct.

    Lite0 stages 3 and 4 (112 + 320 channels) on the 14 x 14 grid of stage 3, plus a
    mean token: 197 tokens of width 432. The Q-Former, its 16 query tokens (32 in the
    paper; the LLM prefill dominates CPU latency, so fewer tokens), the projection and
    ln_vision have no pretrained weights at these sizes, so they train with the prompt
    generators and LoRRA. The LLM sees 16 + 49 VPG + 18 TPG = 83 image tokens.
    """
    base = MyriadConfig(
        preset="mini",
        vision=VisionSettings(kind="lite0", normalisation="half", lite0_stages=(3, 4), lite0_cls_token=True, ln_vision_eps=1e-6),
        qformer=QFormerSettings(
            hidden_size=384,
            num_layers=4,
            num_heads=6,
            intermediate_size=1536,
            cross_attention_frequency=2,
            num_query_tokens=16,
            dropout=0.1,
            # Q-Former outputs are layer-normed (norm ~sqrt(384) = 19.6); 0.007 makes the
            # projected tokens' norm ~3, like SmolLM2's token embeddings (PyTorch's default: ~14).
            projection_init_std=0.007,
        ),
        # He-init trunks (the map must move the tokens from the first step) and base prompts
        # at SmolLM2's embedding std (0.135) rather than the code's 1.0 (7x a token's norm).
        # Head bias at the width's token scale and a 0.3 head gain: every token has a stable norm
        # (SmolLM2's embeddings: ~3.2) that the map modulates, never a near-zero vector.
        prompt_generators=PromptGeneratorSettings(
            init="kaiming",
            tpg_base_prompt_std=0.135,
            head_gain=0.3,
            tpg_head_bias_std=0.135,
            vpg_head_bias_std=0.05,
            map_shift=0.5,
            map_scale=2.0,
            # Map tokens at a word embedding's norm (SmolLM2: mean 3.2), whatever training does.
            tpg_token_norm=3.2,
            # The expert's expected false-alarm rate conditions the TPG (version 5 on; docs/lmm.md, item 11).
            tpg_rate_film=True,
        ),
        llm=SMOLLM2_135M,
        # SmolLM2's own chat template: held-out accuracy 0.93 vs 0.46 for the reference
        # "###Human:" template after the same 110 training steps (docs/lmm.md, Template comparison).
        template="chat",
        trainable=("lorra", "ln_vision", "vpg", "query_tokens", "qformer", "language_projection", "tpg"),
        max_new_tokens=60,
    )
    return base.replace(**changes) if changes else base


PRESETS = {"paper": paper_config, "mini": mini_config}


def preset_config(name: str, **changes: object) -> MyriadConfig:
    """The named preset (``paper`` or ``mini``), optionally with changes."""
    try:
        factory = PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
    return factory(**changes)
