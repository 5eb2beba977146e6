"""The Myriad multimodal model: VE-guided vision encoder + TPG + a LLaMA causal LM.

One class serves both presets. It builds and holds the parts (listed once in
:mod:`myriad.lmm.parts`), loads, freezes and counts them, and encodes an image with its
anomaly map into the LLM's image tokens. The rest lives apart and is called from here:

* prompt assembly (the image-token splice): :mod:`myriad.lmm.prompt_assembly`
* training loss: :mod:`myriad.lmm.loss`; generation: :mod:`myriad.lmm.generation`
* int8 quantisation: :mod:`myriad.lmm.quantization`; the LLM's build: :mod:`myriad.lmm.language_model`
* LoRRA, VPG, TPG: :mod:`myriad.lmm.lorra`, :mod:`myriad.lmm.vpg`, :mod:`myriad.lmm.tpg`
* checkpoint files and key maps: :mod:`myriad.lmm.checkpoints`

Input embeddings, in the published order::

    [BOS (training; optional at inference)] + emb(text before <ImageHere>)
      + projected Q-Former outputs (query tokens, then VPG queries) + TPG tokens
      + emb(text after <ImageHere>) + answer + end symbol

``IGNORE_INDEX``, ``MyriadOutput`` (from :mod:`myriad.lmm.loss`), ``llama_config`` and
``build_language_model`` (from :mod:`myriad.lmm.language_model`) are re-exported here, where
tests and earlier code import them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import torch
from torch import nn

from myriad.lmm.config import MyriadConfig
from myriad.lmm.errors import ConfigError, InputError, WeightsError
from myriad.lmm.generation import GenerationResult, generate_answers
from myriad.lmm.inputs import check_pixels, prepare_maps, preprocess_images
from myriad.lmm.language_model import (
    DTYPES,
    build_language_model,
    check_language_model,
    llama_config,
    materialise_rotary,
    restore_float32_rotary,
)
from myriad.lmm.loss import IGNORE_INDEX, MyriadOutput, answer_loss
from myriad.lmm.parts import PART_NAMES, PARTS, count_parameters, get_part
from myriad.lmm.prompt_assembly import instructions_for, stop_text
from myriad.lmm.prompting import Conversation, Label, Turn, answer_decided, parse_answer
from myriad.lmm.tpg import build_tpg
from myriad.lmm.vision import VEGuidedVisionEncoder, module_dtype

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

__all__ = ["IGNORE_INDEX", "MyriadLMM", "MyriadOutput", "build_language_model", "llama_config"]


class MyriadLMM(nn.Module):
    """Myriad: vision-expert-guided LMM for industrial anomaly detection.

    Build with random weights (``MyriadLMM(config, tokenizer)``), on the meta device for
    counting or loading (``MyriadLMM.empty(config)`` then :meth:`load_part` for every
    part and :meth:`finalize`), or with real mini weights (:meth:`mini`).
    """

    #: ``None`` (float weights) or the scheme :meth:`quantize_language_model` applied.
    llm_quantization: str | None = None
    #: Reuse the KV cache of the prompt text before the image across calls (same answers, shorter prefill).
    use_prefix_cache: bool = True

    def __init__(
        self,
        config: MyriadConfig,
        tokenizer: Any = None,
        *,
        language_model: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        self.vision_encoder = VEGuidedVisionEncoder(config)
        self.tpg = build_tpg(config) if config.use_tpg else None
        if language_model is None:
            language_model = build_language_model(config)
        else:
            check_language_model(config, language_model)
        self.language_model = language_model
        self._cast_frozen_parts()
        self._apply_freezing()

    # ------------------------------------------------------------------ construction
    @classmethod
    def empty(cls, config: MyriadConfig, tokenizer: Any = None) -> "MyriadLMM":
        """All parameters on the meta device (no memory, no init): count, or load every part then :meth:`finalize`."""
        with torch.device("meta"):
            return cls(config, tokenizer)

    @classmethod
    def mini(cls, config: MyriadConfig | None = None, cache_dir: str | None = None) -> "MyriadLMM":
        """The ``mini`` preset with real frozen weights: embedded Lite0 + cached SmolLM2-135M-Instruct.

        The trainable parts (LoRRA, ln_vision, VPG, query tokens, Q-Former, projection, TPG)
        start from their initialisation; load trained ones with :meth:`load_trainable_state_dict`.
        """
        from myriad.lmm.config import mini_config
        from myriad.lmm.extra import require_lmm_extra
        from myriad.lmm.smollm2 import load_smollm2

        require_lmm_extra(smollm2=True)
        config = config or mini_config()
        if config.vision.kind != "lite0":
            raise ConfigError(f"MyriadLMM.mini needs a lite0 vision backbone, the config has {config.vision.kind!r}")
        language_model, tokenizer = load_smollm2(cache_dir=cache_dir, dtype=DTYPES[config.llm_dtype])
        model = cls(config, tokenizer, language_model=language_model)
        model.vision_encoder.backbone.load_embedded_weights()
        model._cast_frozen_parts()
        return model.eval()

    def _cast_frozen_parts(self) -> None:
        self.vision_encoder.backbone.to(DTYPES[self.config.vision_dtype])
        self.language_model.to(DTYPES[self.config.llm_dtype])
        restore_float32_rotary(self.language_model)

    # ------------------------------------------------------------------ parts, freezing
    def parts(self) -> dict[str, nn.Module | nn.Parameter | None]:
        """The named parts (``None`` for ablated ones), in pipeline order."""
        return {p.name: p.get(self) for p in PARTS}

    def part_parameter_counts(self) -> dict[str, int]:
        """Parameters per part (0 for ablated parts); works on the meta device."""
        counts = {}
        for name, part in self.parts().items():
            if isinstance(part, nn.Parameter):
                counts[name] = part.numel()
            else:
                counts[name] = count_parameters(part)
        return counts

    def _apply_freezing(self) -> None:
        for name, part in self.parts().items():
            if part is not None:
                part.requires_grad_(name in self.config.trainable)

    def train(self, mode: bool = True) -> "MyriadLMM":
        """Like ``nn.Module.train`` but frozen parts always stay in eval mode (dropout off, BN stats fixed)."""
        super().train(mode)
        for name, part in self.parts().items():
            if isinstance(part, nn.Module) and name not in self.config.trainable:
                part.eval()
        return self

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only the trainable parts' tensors, with their full model keys (what a Myriad checkpoint holds)."""
        prefixes = tuple(get_part(n).prefix for n in self.config.trainable if self.parts().get(n) is not None)
        return {k: v for k, v in self.state_dict().items() if k.startswith(prefixes)}

    def load_trainable_state_dict(self, state: Mapping[str, torch.Tensor], strict: bool = True) -> None:
        """Load a :meth:`trainable_state_dict`; missing, unexpected or mis-shaped keys raise WeightsError."""
        expected = self.trainable_state_dict()
        self._load_checked(expected, state, "trainable parameters", strict=strict)

    def load_part(self, name: str, state: Mapping[str, torch.Tensor] | torch.Tensor, strict: bool = True) -> None:
        """Load one part from a state dict with the part's own keys (e.g. ``encoder.layers.0...`` for backbone).

        A part built on the meta device takes the given tensors (cast to its dtype; they
        are not copied); a materialised part copies them in. ``query_tokens`` takes a
        tensor (or ``{"query_tokens": t}``).
        Missing, unexpected or mis-shaped keys raise :class:`WeightsError` naming them.
        """
        row = get_part(name)
        if row is None:
            raise WeightsError(f"unknown part {name!r}; parts are {list(PART_NAMES)}")
        part = self.parts()[name]
        if part is None:
            raise WeightsError(f"part {name!r} is switched off in this config ({row.switch}=False)")
        if isinstance(part, nn.Parameter):
            tensor = state["query_tokens"] if isinstance(state, Mapping) else state
            if tuple(tensor.shape) != tuple(part.shape):
                raise WeightsError(f"query_tokens: expected shape {tuple(part.shape)}, got {tuple(tensor.shape)}")
            if part.is_meta:
                new = nn.Parameter(tensor.detach().to(device="cpu", dtype=part.dtype).clone())
                new.requires_grad_(part.requires_grad)
                row.set(self, new)
            else:
                with torch.no_grad():
                    part.copy_(tensor)
            return
        expected = dict(part.state_dict())
        if name == "language_model" and self.config.llm.tie_word_embeddings and "lm_head.weight" not in state:
            expected.pop("lm_head.weight", None)  # tied to model.embed_tokens.weight; finalize() re-ties
        self._load_checked(expected, state, f"part {name!r}", strict=strict, module=part)
        if name == "language_model" and self.config.llm.tie_word_embeddings and hasattr(part, "tie_weights"):
            part.tie_weights()

    def _load_checked(
        self,
        expected: Mapping[str, torch.Tensor],
        state: Mapping[str, torch.Tensor],
        what: str,
        strict: bool,
        module: nn.Module | None = None,
    ) -> None:
        if not isinstance(state, Mapping):
            raise WeightsError(f"{what}: expected a state dict, got {type(state).__name__}")
        missing = [k for k in expected if k not in state]
        unexpected = [k for k in state if k not in expected]
        shapes = [
            f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
            for k in expected
            if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
        ]
        if shapes:
            raise WeightsError(f"{what}: {len(shapes)} tensor(s) have the wrong shape, e.g. {shapes[:3]}")
        if (missing or unexpected) and strict:
            raise WeightsError(
                f"{what}: {len(missing)} missing key(s) (e.g. {missing[:4]}), "
                f"{len(unexpected)} unexpected key(s) (e.g. {unexpected[:4]})"
            )
        target = module if module is not None else self
        # Meta tensors are replaced by the given ones (cast to the model's dtype); real
        # tensors are copied into, so the caller's state dict is never shared.
        on_meta = any(t.is_meta for t in list(target.parameters()) + list(target.buffers()))
        if on_meta:
            cast = {k: state[k].to(dtype=expected[k].dtype) if state[k].is_floating_point() else state[k] for k in expected if k in state}
        else:
            cast = {k: state[k] for k in expected if k in state}
        target.load_state_dict(cast, strict=False, assign=on_meta)
        self._apply_freezing()

    def init_parts(self, names: Iterable[str]) -> None:
        """Fresh, randomly initialised CPU weights for the named parts (e.g. new modules of an ``empty`` model)."""
        for name in names:
            row = get_part(name)
            if row is None or row.builder is None:
                raise ConfigError(f"cannot initialise part {name!r} here; load it with load_part()")
            if row.switch is not None and self.parts()[name] is None:
                continue
            with torch.device("cpu"):
                row.set(self, row.build(self.config))
        self._apply_freezing()

    def finalize(self) -> "MyriadLMM":
        """After loading an ``empty`` model: rebuild non-persistent buffers and refuse parts still on meta."""
        materialise_rotary(self.language_model)
        if self.config.llm.tie_word_embeddings and hasattr(self.language_model, "tie_weights"):
            self.language_model.tie_weights()
        unloaded = []
        for name, part in self.parts().items():
            if part is None:
                continue
            tensors = [part] if isinstance(part, nn.Parameter) else list(part.parameters()) + list(part.buffers())
            if any(t.is_meta for t in tensors):
                unloaded.append(name)
        if unloaded:
            raise WeightsError(f"parts without weights (still on the meta device): {unloaded}; load_part() or init_parts() them")
        self._apply_freezing()
        return self

    # ------------------------------------------------------------------ inference precision
    def quantize_language_model(self, scheme: str = "int8") -> "MyriadLMM":
        """Dynamically quantise the frozen LLM's linear layers for CPU inference (in place); see
        :func:`myriad.lmm.quantization.quantize_language_model`. The model can no longer be trained."""
        from myriad.lmm.quantization import quantize_language_model

        return quantize_language_model(self, scheme)

    # ------------------------------------------------------------------ helpers
    @property
    def device(self) -> torch.device:
        return self.language_model.get_input_embeddings().weight.device

    def preprocess(self, images: Sequence["np.ndarray | str"]) -> torch.Tensor:
        """RGB arrays / image paths -> the backbone's normalised ``B x 3 x S x S`` batch."""
        return preprocess_images(images, self.config.vision)

    def _switches(self, use_vpg: bool | None, use_tpg: bool | None) -> tuple[bool, bool]:
        vpg = self.config.use_vpg if use_vpg is None else use_vpg
        tpg = self.config.use_tpg if use_tpg is None else use_tpg
        if vpg and self.vision_encoder.vpg is None:
            raise ConfigError("use_vpg=True but the model was built with use_vpg=False")
        if tpg and self.tpg is None:
            raise ConfigError("use_tpg=True but the model was built with use_tpg=False")
        return vpg, tpg

    @property
    def stop(self) -> str:
        """The stop string of answers: ``###`` (reference template) or the EOS text (chat)."""
        return stop_text(self)

    # ------------------------------------------------------------------ encoding
    def encode_image(
        self,
        pixel_values: torch.Tensor,
        anomaly_maps: Any = None,
        use_vpg: bool | None = None,
        use_tpg: bool | None = None,
        false_alarm_rates: Sequence[float | None] | None = None,
    ) -> torch.Tensor:
        """The image's LLM tokens ``B x K x H``: projected Q-Former outputs, then TPG tokens.

        ``false_alarm_rates``: the map's expert's expected false-alarm rate per image
        (:attr:`myriad.detector.Detector.false_alarm_rate`; None where unknown), read by a TPG built
        with ``tpg_rate_film`` and ignored otherwise.
        """
        use_vpg, use_tpg = self._switches(use_vpg, use_tpg)
        pixels = check_pixels(pixel_values, self.config.vision.image_size, self.device)
        maps = None
        if use_vpg or use_tpg:
            maps = prepare_maps(anomaly_maps, pixels.shape[0], self.config.prompt_generators.map_size, self.device)
        visual = self.vision_encoder(pixels, maps, use_vpg=use_vpg)
        pieces = [visual]
        if use_tpg:
            pieces.append(self.tpg(maps, _rates(false_alarm_rates, pixels.shape[0], self.device)).to(visual.dtype))
        embeds = torch.cat(pieces, dim=1)
        return embeds.to(module_dtype(self.language_model))

    # ------------------------------------------------------------------ training
    def forward(
        self,
        pixel_values: torch.Tensor,
        anomaly_maps: Any,
        answers: Sequence[str],
        instructions: str | Sequence[str] | None = None,
        use_vpg: bool | None = None,
        use_tpg: bool | None = None,
        decision_weight: float = 1.0,
        false_alarm_rates: Sequence[float | None] | None = None,
    ) -> MyriadOutput:
        """Causal-LM loss on the answers (+ end symbol); prompt, image and padding positions are ignored.

        ``decision_weight``: weight of each answer's first token (the Yes/No the parse rule
        reads) in the mean; 1.0 is the plain token mean of the published code. See :mod:`myriad.lmm.loss`.
        """
        if self.llm_quantization is not None and torch.is_grad_enabled():
            raise ConfigError(f"the language model is quantised ({self.llm_quantization}) for inference; train a float model")
        image = self.encode_image(pixel_values, anomaly_maps, use_vpg, use_tpg, false_alarm_rates)
        return answer_loss(self, image, answers, instructions, decision_weight)

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def generate(
        self,
        pixel_values: torch.Tensor,
        anomaly_maps: Any = None,
        instructions: str | Sequence[str] | None = None,
        *,
        use_vpg: bool | None = None,
        use_tpg: bool | None = None,
        return_result: bool = False,
        false_alarm_rates: Sequence[float | None] | None = None,
        **generation: Any,
    ) -> list[str] | GenerationResult:
        """Answer one instruction per image (default: the reference question); greedy unless ``do_sample``.

        ``generation``: ``max_new_tokens``, ``min_new_tokens``, ``do_sample``, ``temperature``,
        ``top_p``, ``generator``, ``stop_fn`` (see :func:`~myriad.lmm.generation.generate_from_embeds`).
        """
        image = self.encode_image(pixel_values, anomaly_maps, use_vpg, use_tpg, false_alarm_rates)
        questions = instructions_for(self, instructions, image.shape[0])
        result = generate_answers(self, image, [[Turn(q)] for q in questions], **generation)
        return result if return_result else result.texts

    @torch.no_grad()
    def answer_with_margin(
        self,
        pixel_values: torch.Tensor,
        anomaly_maps: Any = None,
        instructions: str | Sequence[str] | None = None,
        *,
        false_alarm_rates: Sequence[float | None] | None = None,
        **generation: Any,
    ) -> tuple[list[str], torch.Tensor]:
        """Answers (as :meth:`generate`) and each one's verdict margin ``log P(yes) - log P(no)`` of its first
        token (:mod:`myriad.lmm.verdict`), from the same forward pass."""
        from myriad.lmm.generation import GenerationResult
        from myriad.lmm.prompt_assembly import require_tokenizer
        from myriad.lmm.verdict import verdict_margins, verdict_token_ids

        yes, no = verdict_token_ids(require_tokenizer(self))
        result = self.generate(
            pixel_values, anomaly_maps, instructions, return_result=True, false_alarm_rates=false_alarm_rates,
            score_ids=yes + no, **generation,
        )
        assert isinstance(result, GenerationResult) and result.first_scores is not None
        return result.texts, verdict_margins(result.first_scores, len(yes))

    @torch.no_grad()
    def classify(
        self,
        pixel_values: torch.Tensor,
        anomaly_maps: Any = None,
        instructions: str | Sequence[str] | None = None,
        *,
        max_new_tokens: int = 8,
        **kwargs: Any,
    ) -> list[Label]:
        """``anomalous`` / ``normal`` / ``unknown`` per image by :func:`parse_answer`.

        Decoding stops as soon as the parse rule is decided (the first word), so this
        costs a few tokens instead of a full answer.
        """
        result = self.generate(
            pixel_values, anomaly_maps, instructions, return_result=True, max_new_tokens=max_new_tokens, stop_fn=answer_decided, **kwargs
        )
        assert isinstance(result, GenerationResult)
        return [parse_answer(t) for t in result.texts]

    @torch.no_grad()
    def start_conversation(
        self,
        pixel_values: torch.Tensor,
        anomaly_map: Any = None,
        *,
        use_vpg: bool | None = None,
        use_tpg: bool | None = None,
        false_alarm_rate: float | None = None,
    ) -> Conversation:
        """Encode one image (and its map) once; ask questions with :meth:`chat`."""
        image = self.encode_image(pixel_values, anomaly_map, use_vpg, use_tpg, [false_alarm_rate])
        if image.shape[0] != 1:
            raise InputError(f"a conversation is about one image, got a batch of {image.shape[0]}")
        return Conversation(image_embeds=image)

    @torch.no_grad()
    def chat(self, conversation: Conversation, question: str | None = None, **generation: Any) -> str:
        """Ask ``question`` (default for the first turn: the reference question) and record the answer."""
        if question is None:
            if conversation.turns:
                raise InputError("a follow-up needs a question")
            question = self.config.question
        conversation.ask(question)
        try:
            result = generate_answers(self, conversation.image_embeds, [conversation.turns], **generation)
        except Exception:
            conversation.turns.pop()
            raise
        conversation.answer(result.texts[0])
        return result.texts[0]


def _rates(rates: Sequence[float | None] | None, batch: int, device: torch.device) -> torch.Tensor | None:
    """Per-image false-alarm rates as a float tensor (NaN where unknown); None when none are given."""
    if rates is None:
        return None
    rates = list(rates)
    if len(rates) != batch:
        raise InputError(f"false_alarm_rates: expected {batch} (one per image), got {len(rates)}")
    return torch.tensor([float("nan") if r is None else float(r) for r in rates], dtype=torch.float32, device=device)
