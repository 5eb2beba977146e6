"""The Myriad multimodal model: VE-guided vision encoder + TPG + a LLaMA causal LM.

One class serves both presets. Input embeddings, in the published order::

    [BOS (training; optional at inference)] + emb(text before <ImageHere>)
      + projected Q-Former outputs (query tokens, then VPG queries) + TPG tokens
      + emb(text after <ImageHere>) + answer + end symbol

Training loss: causal-LM cross-entropy on the answer (and end symbol) only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import torch
from torch import nn

from myriad.lmm.config import PART_NAMES, MyriadConfig
from myriad.lmm.errors import ConfigError, InputError, PromptTooLongError, WeightsError
from myriad.lmm.generation import GenerationResult, PrefixCache, generate_from_embeds, left_pad
from myriad.lmm.inputs import check_pixels, prepare_maps, preprocess_images
from myriad.lmm.modules import TextualPromptGenerator, count_parameters
from myriad.lmm.prompting import Conversation, Label, Turn, answer_decided, parse_answer, render_prompt, stop_string
from myriad.lmm.vision import VEGuidedVisionEncoder, module_dtype

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

__all__ = ["IGNORE_INDEX", "MyriadLMM", "MyriadOutput", "build_language_model", "llama_config"]

IGNORE_INDEX = -100
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

#: Where each part lives in the model's state dict.
PART_PREFIXES = {
    "backbone": "vision_encoder.backbone.",
    "lorra": "vision_encoder.lorra.",
    "ln_vision": "vision_encoder.ln_vision.",
    "vpg": "vision_encoder.vpg.",
    "query_tokens": "vision_encoder.query_tokens",
    "qformer": "vision_encoder.qformer.",
    "language_projection": "vision_encoder.language_projection.",
    "tpg": "tpg.",
    "language_model": "language_model.",
}


@dataclass
class MyriadOutput:
    """Training output: mean answer-token cross-entropy, the logits and the labels used.

    ``logits`` covers only the last ``logits.shape[1]`` positions (the window that predicts
    the answers): ``logits[:, i]`` predicts ``labels[:, L - W + i + 1]`` for ``L`` = ``labels.shape[1]``.
    """

    loss: torch.Tensor
    logits: torch.Tensor
    labels: torch.Tensor
    attention_mask: torch.Tensor


def llama_config(config: MyriadConfig) -> Any:
    """The transformers ``LlamaConfig`` of ``config.llm``."""
    from myriad.lmm._hf import llama

    LlamaConfig, _ = llama()
    s = config.llm
    return LlamaConfig(
        hidden_size=s.hidden_size,
        intermediate_size=s.intermediate_size,
        num_hidden_layers=s.num_layers,
        num_attention_heads=s.num_heads,
        num_key_value_heads=s.num_kv_heads,
        vocab_size=s.vocab_size,
        max_position_embeddings=s.max_position_embeddings,
        rope_theta=s.rope_theta,
        rms_norm_eps=s.rms_norm_eps,
        tie_word_embeddings=s.tie_word_embeddings,
        bos_token_id=s.bos_token_id,
        eos_token_id=s.eos_token_id,
        pad_token_id=s.pad_token_id,
    )


def build_language_model(config: MyriadConfig) -> nn.Module:
    """A randomly initialised (or meta) ``LlamaForCausalLM`` with ``config.llm`` dimensions."""
    from myriad.lmm._hf import llama

    _, LlamaForCausalLM = llama()
    return LlamaForCausalLM(llama_config(config))


def _restore_float32_rotary(language_model: nn.Module) -> None:
    """``.to(float16)`` also rounds the rotary ``inv_freq`` buffers; rebuild them in float32 (as from_pretrained keeps them)."""
    inner = getattr(language_model, "model", None)
    rotary = getattr(inner, "rotary_emb", None)
    buffers = list(rotary.buffers()) if rotary is not None else []
    if not buffers or buffers[0].is_meta or buffers[0].dtype == torch.float32:
        return
    with torch.device(buffers[0].device):
        inner.rotary_emb = type(rotary)(config=language_model.config)


def _build_tpg(config: MyriadConfig) -> TextualPromptGenerator:
    pg = config.prompt_generators
    return TextualPromptGenerator(
        config.llm.hidden_size, pg.trunk_channels, pg.map_size, pg.tpg_kernel, pg.tpg_base_prompts, pg.tpg_base_prompt_std, pg.init,
        pg.tpg_head_bias_std, pg.head_gain, pg.map_shift, pg.map_scale, pg.tpg_token_norm,
    )


class MyriadLMM(nn.Module):
    """Myriad: vision-expert-guided LMM for industrial anomaly detection.

    Build with random weights (``MyriadLMM(config, tokenizer)``), on the meta device for
    counting or loading (``MyriadLMM.empty(config)`` then :meth:`load_part` for every
    part and :meth:`finalize`), or with real mini weights (:meth:`mini`).
    """

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
        self.tpg = _build_tpg(config) if config.use_tpg else None
        if language_model is None:
            language_model = build_language_model(config)
        else:
            self._check_language_model(language_model)
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
        language_model, tokenizer = load_smollm2(cache_dir=cache_dir, dtype=_DTYPES[config.llm_dtype])
        model = cls(config, tokenizer, language_model=language_model)
        model.vision_encoder.backbone.load_embedded_weights()
        model._cast_frozen_parts()
        return model.eval()

    def _check_language_model(self, lm: nn.Module) -> None:
        s = self.config.llm
        c = getattr(lm, "config", None)
        got = {
            "hidden_size": getattr(c, "hidden_size", None),
            "num_layers": getattr(c, "num_hidden_layers", None),
            "vocab_size": getattr(c, "vocab_size", None),
        }
        want = {"hidden_size": s.hidden_size, "num_layers": s.num_layers, "vocab_size": s.vocab_size}
        if got != want:
            raise ConfigError(f"language model does not match config.llm ({s.name}): expected {want}, got {got}")

    def _cast_frozen_parts(self) -> None:
        self.vision_encoder.backbone.to(_DTYPES[self.config.vision_dtype])
        self.language_model.to(_DTYPES[self.config.llm_dtype])
        _restore_float32_rotary(self.language_model)

    # ------------------------------------------------------------------ parts, freezing
    def parts(self) -> dict[str, nn.Module | nn.Parameter | None]:
        """The named parts (``None`` for ablated ones), in pipeline order."""
        ve = self.vision_encoder
        return {
            "backbone": ve.backbone,
            "lorra": ve.lorra,
            "ln_vision": ve.ln_vision,
            "vpg": ve.vpg,
            "query_tokens": ve.query_tokens,
            "qformer": ve.qformer,
            "language_projection": ve.language_projection,
            "tpg": self.tpg,
            "language_model": self.language_model,
        }

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
        prefixes = tuple(PART_PREFIXES[n] for n in self.config.trainable if self.parts().get(n) is not None)
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
        parts = self.parts()
        if name not in parts:
            raise WeightsError(f"unknown part {name!r}; parts are {list(PART_NAMES)}")
        part = parts[name]
        if part is None:
            raise WeightsError(f"part {name!r} is switched off in this config (use_{name}=False)")
        if isinstance(part, nn.Parameter):
            tensor = state["query_tokens"] if isinstance(state, Mapping) else state
            if tuple(tensor.shape) != tuple(part.shape):
                raise WeightsError(f"query_tokens: expected shape {tuple(part.shape)}, got {tuple(tensor.shape)}")
            if part.is_meta:
                new = nn.Parameter(tensor.detach().to(device="cpu", dtype=part.dtype).clone())
                new.requires_grad_(part.requires_grad)
                self.vision_encoder.query_tokens = new
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
        ve = self.vision_encoder
        factories = {
            "lorra": lambda: setattr(ve, "lorra", ve.build_lorra(self.config)),
            "ln_vision": lambda: setattr(ve, "ln_vision", ve.build_ln_vision(self.config)),
            "vpg": lambda: setattr(ve, "vpg", ve.build_vpg(self.config)),
            "query_tokens": lambda: setattr(ve, "query_tokens", ve.build_query_tokens(self.config)),
            "qformer": lambda: setattr(ve, "qformer", ve.build_qformer(self.config)),
            "language_projection": lambda: setattr(ve, "language_projection", ve.build_language_projection(self.config)),
            "tpg": lambda: setattr(self, "tpg", _build_tpg(self.config)),
        }
        for name in names:
            if name not in factories:
                raise ConfigError(f"cannot initialise part {name!r} here; load it with load_part()")
            if self.parts()[name] is None and name in ("lorra", "vpg", "tpg"):
                continue
            with torch.device("cpu"):
                factories[name]()
        self._apply_freezing()

    def finalize(self) -> "MyriadLMM":
        """After loading an ``empty`` model: rebuild non-persistent buffers and refuse parts still on meta."""
        inner = getattr(self.language_model, "model", None)
        rotary = getattr(inner, "rotary_emb", None)
        if rotary is not None and any(b.is_meta for b in rotary.buffers()):
            with torch.device("cpu"):
                inner.rotary_emb = type(rotary)(config=self.language_model.config)
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
    #: ``None`` (float weights) or the scheme :meth:`quantize_language_model` applied.
    llm_quantization: str | None = None
    #: Reuse the KV cache of the prompt text before the image across calls (same answers, shorter prefill).
    use_prefix_cache: bool = True

    def quantize_language_model(self, scheme: str = "int8") -> "MyriadLMM":
        """Dynamically quantise the frozen LLM's linear layers for CPU inference (in place).

        ``int8``: weights stored as int8 per output channel, activations quantised on the fly
        (``torch.ao.quantization.quantize_dynamic``), for every linear layer except the MLP
        output projections (``down_proj``): their inputs carry SmolLM2's outlier activations,
        and quantising them turned most trained answers into ``unknown`` text (measured). The
        model can no longer be trained afterwards.
        """
        if scheme != "int8":
            raise ConfigError(f"unknown LLM quantisation {scheme!r}; supported: 'int8'")
        if self.llm_quantization is not None:
            return self
        if self.device.type != "cpu":
            raise ConfigError(f"int8 dynamic quantisation runs on the CPU; the model is on {self.device}")
        if module_dtype(self.language_model) != torch.float32:
            raise ConfigError("int8 quantisation needs a float32 language model (llm_dtype='float32')")
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao's deprecation notice (the API still works)
            from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

            spec = {
                name: per_channel_dynamic_qconfig
                for name, module in self.language_model.named_modules()
                if isinstance(module, nn.Linear) and not name.endswith("down_proj")
            }
            self.language_model = quantize_dynamic(self.language_model, spec, dtype=torch.qint8, inplace=True)
        self.llm_quantization = scheme
        return self

    # ------------------------------------------------------------------ helpers
    @property
    def device(self) -> torch.device:
        return self.language_model.get_input_embeddings().weight.device

    def _require_tokenizer(self) -> Any:
        if self.tokenizer is None:
            raise ConfigError("this model has no tokenizer; pass one to MyriadLMM(config, tokenizer)")
        return self.tokenizer

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

    def _tokens(self, text: str) -> list[int]:
        if not text:
            return []
        return list(self._require_tokenizer()(text, add_special_tokens=False)["input_ids"])

    def _embed_ids(self, ids: list[int]) -> torch.Tensor:
        emb = self.language_model.get_input_embeddings()
        return emb(torch.tensor(ids, dtype=torch.long, device=emb.weight.device))

    def _bos(self, training: bool) -> list[int]:
        if self.config.template != "reference":
            return []  # a chat template writes its own start tokens
        wanted = self.config.bos_in_training if training else self.config.bos_at_inference
        if not wanted:
            return []
        bos = getattr(self.tokenizer, "bos_token_id", None)
        return [bos if bos is not None else self.config.llm.bos_token_id]

    @property
    def stop(self) -> str:
        """The stop string of answers: ``###`` (reference template) or the EOS text (chat)."""
        return stop_string(self.config.template, self.tokenizer, self.config.end_sym)

    def _prompt_ids(self, turns: list[Turn], training: bool) -> tuple[list[int], list[int]]:
        before, after = render_prompt(turns, self.config.template, self._require_tokenizer())
        return self._bos(training) + self._tokens(before), self._tokens(after)

    def _instructions(self, instructions: str | Sequence[str] | None, batch: int) -> list[str]:
        if instructions is None:
            return [self.config.question] * batch
        if isinstance(instructions, str):
            return [instructions] * batch
        instructions = list(instructions)
        if len(instructions) != batch:
            raise InputError(f"instructions: expected {batch} (one per image), got {len(instructions)}")
        return instructions

    # ------------------------------------------------------------------ encoding
    def encode_image(
        self,
        pixel_values: torch.Tensor,
        anomaly_maps: Any = None,
        use_vpg: bool | None = None,
        use_tpg: bool | None = None,
    ) -> torch.Tensor:
        """The image's LLM tokens ``B x K x H``: projected Q-Former outputs, then TPG tokens."""
        use_vpg, use_tpg = self._switches(use_vpg, use_tpg)
        pixels = check_pixels(pixel_values, self.config.vision.image_size, self.device)
        maps = None
        if use_vpg or use_tpg:
            maps = prepare_maps(anomaly_maps, pixels.shape[0], self.config.prompt_generators.map_size, self.device)
        visual = self.vision_encoder(pixels, maps, use_vpg=use_vpg)
        pieces = [visual]
        if use_tpg:
            pieces.append(self.tpg(maps).to(visual.dtype))
        embeds = torch.cat(pieces, dim=1)
        return embeds.to(module_dtype(self.language_model))

    def _context_check(self, length: int, what: str) -> None:
        limit = self.config.llm.max_position_embeddings
        if length > limit:
            raise PromptTooLongError(f"{what} needs {length} positions, the LLM context holds {limit}; shorten the instruction")

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
    ) -> MyriadOutput:
        """Causal-LM loss on the answers (+ end symbol); prompt, image and padding positions are ignored.

        ``decision_weight``: weight of each answer's first token (the Yes/No the parse rule
        reads) in the mean; 1.0 is the plain token mean of the published code.
        """
        if self.llm_quantization is not None and torch.is_grad_enabled():
            raise ConfigError(f"the language model is quantised ({self.llm_quantization}) for inference; train a float model")
        image = self.encode_image(pixel_values, anomaly_maps, use_vpg, use_tpg)
        batch, k = image.shape[0], image.shape[1]
        if len(answers) != batch:
            raise InputError(f"answers: expected {batch} (one per image), got {len(answers)}")
        questions = self._instructions(instructions, batch)
        end = self.stop
        seqs, labels = [], []
        for i in range(batch):
            pre, post = self._prompt_ids([Turn(questions[i])], training=True)
            answer = self._tokens(answers[i] + end)[: self.config.max_txt_len]
            total = len(pre) + k + len(post) + len(answer)
            self._context_check(total, f"training sample {i} (prompt {len(pre) + k + len(post)} + answer {len(answer)})")
            seqs.append(torch.cat([self._embed_ids(pre), image[i], self._embed_ids(post + answer)]))
            labels.append([IGNORE_INDEX] * (len(pre) + k + len(post)) + answer)
        longest = max(s.shape[0] for s in seqs)
        embeds = image.new_zeros(batch, longest, image.shape[-1])
        mask = torch.zeros(batch, longest, dtype=torch.long, device=image.device)
        target = torch.full((batch, longest), IGNORE_INDEX, dtype=torch.long, device=image.device)
        for i, (s, lab) in enumerate(zip(seqs, labels)):
            embeds[i, : s.shape[0]] = s
            mask[i, : s.shape[0]] = 1
            target[i, : len(lab)] = torch.tensor(lab, device=image.device)
        # The LM head runs only on the window that predicts answer tokens (from the position
        # before the earliest answer to the end): ~5x fewer head FLOPs than on every position.
        starts = [next(j for j, t in enumerate(lab) if t != IGNORE_INDEX) for lab in labels]
        window = longest - (min(starts) - 1)
        out = self.language_model(inputs_embeds=embeds, attention_mask=mask, use_cache=False, logits_to_keep=window)
        logits = out.logits
        shifted = target[:, longest - window + 1 :]
        per_token = nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]).float(), shifted.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
        ).view(shifted.shape)
        weights = (shifted != IGNORE_INDEX).float()
        if decision_weight != 1.0:
            for i, s0 in enumerate(starts):
                weights[i, s0 - (longest - window + 1)] = decision_weight
        loss = (per_token * weights).sum() / weights.sum()
        return MyriadOutput(loss=loss, logits=logits, labels=target, attention_mask=mask)

    # ------------------------------------------------------------------ inference
    def _generate(
        self,
        image_embeds: torch.Tensor,
        conversations: list[list[Turn]],
        *,
        max_new_tokens: int | None = None,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        generator: torch.Generator | None = None,
        stop_fn: Any = None,
        min_new_tokens: int = 0,
    ) -> GenerationResult:
        tokenizer = self._require_tokenizer()
        max_new = self.config.max_new_tokens if max_new_tokens is None else max_new_tokens
        prompts = [self._prompt_ids(turns, training=False) for turns in conversations]
        for i, (pre, post) in enumerate(prompts):
            length = len(pre) + image_embeds.shape[1] + len(post)
            self._context_check(length + max_new, f"prompt {i} ({length} tokens) + {max_new} new tokens")
        # The text before the image is the same for every row (template + system turn): its
        # KV cache is computed once and reused, instead of being re-encoded for every image.
        prefix = self._prefix_cache(prompts[0][0]) if all(p[0] == prompts[0][0] for p in prompts) else None
        seqs = []
        for i, (pre, post) in enumerate(prompts):
            head = [] if prefix is not None else [self._embed_ids(pre)]
            seqs.append(torch.cat([*head, image_embeds[i], self._embed_ids(post)]))
        embeds, mask = left_pad(seqs)
        eos = getattr(tokenizer, "eos_token_id", None)
        return generate_from_embeds(
            self.language_model,
            tokenizer,
            embeds,
            mask,
            max_new_tokens=max_new,
            stop=self.stop,
            eos_token_id=eos if eos is not None else self.config.llm.eos_token_id,
            do_sample=do_sample,
            temperature=temperature,
            top_p=top_p,
            generator=generator,
            stop_fn=stop_fn,
            min_new_tokens=min_new_tokens,
            prefix=prefix,
        )

    def _prefix_cache(self, ids: list[int]) -> PrefixCache | None:
        """The shared prompt prefix's KV cache (built once per prefix), or None where it may not be reused."""
        if not self.use_prefix_cache or len(ids) < 2 or any(p.requires_grad for p in self.language_model.parameters()):
            return None
        embedding = self.language_model.get_input_embeddings().weight
        key = (tuple(ids), id(self.language_model), self.llm_quantization, embedding.device, embedding.dtype)
        cache = self.__dict__.setdefault("_prefix_caches", {})
        if key not in cache:
            if len(cache) >= 8:
                cache.clear()
            cache[key] = PrefixCache(self.language_model, self._embed_ids(ids))
        return cache[key]

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
        **generation: Any,
    ) -> list[str] | GenerationResult:
        """Answer one instruction per image (default: the reference question); greedy unless ``do_sample``.

        ``generation``: ``max_new_tokens``, ``min_new_tokens``, ``do_sample``, ``temperature``,
        ``top_p``, ``generator``, ``stop_fn`` (see :func:`~myriad.lmm.generation.generate_from_embeds`).
        """
        image = self.encode_image(pixel_values, anomaly_maps, use_vpg, use_tpg)
        questions = self._instructions(instructions, image.shape[0])
        result = self._generate(image, [[Turn(q)] for q in questions], **generation)
        return result if return_result else result.texts

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
        self, pixel_values: torch.Tensor, anomaly_map: Any = None, *, use_vpg: bool | None = None, use_tpg: bool | None = None
    ) -> Conversation:
        """Encode one image (and its map) once; ask questions with :meth:`chat`."""
        image = self.encode_image(pixel_values, anomaly_map, use_vpg, use_tpg)
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
            result = self._generate(conversation.image_embeds, [conversation.turns], **generation)
        except Exception:
            conversation.turns.pop()
            raise
        conversation.answer(result.texts[0])
        return result.texts[0]
