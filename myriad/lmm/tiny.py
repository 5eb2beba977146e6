"""Offline stand-ins for tests and benchmarks: a tiny BPE tokenizer and a tiny ``paper`` config.

Nothing is downloaded: the tokenizer is trained in memory (byte-level BPE, Llama-style
special ids ``<unk>``=0, ``<s>``=1, ``</s>``=2) on the prompt strings, so it encodes any
text and decodes it back exactly. The tiny config keeps the ``paper`` code path (EVA
ViT as ``Blip2VisionModel``, BLIP-2 Q-Former, ``LlamaForCausalLM``, 224 x 224 maps, 49
VPG and 18 TPG tokens) and shrinks only widths and depths.
"""

from __future__ import annotations

from typing import Any

from myriad.lmm.config import REFERENCE_QUESTION, MyriadConfig, paper_config

__all__ = ["TINY_CORPUS", "build_tiny_tokenizer", "tiny_paper_config"]

TINY_CORPUS = [
    "###Human: <Img><ImageHere></Img>" + REFERENCE_QUESTION + " ###Assistant: ",
    "No, there exists no anomalies in the image.###",
    "Yes, there exists anomalies in the image.###",
    "Describe the defect in detail. Where is the scratch, crack, hole or stain? What could cause it?",
    "The surface shows a small dark scratch near the top left corner of the metal part.",
    "<|im_start|>user\n<|im_end|>\n<|im_start|>assistant\n",
]


def build_tiny_tokenizer(vocab_size: int = 384, with_chat_template: bool = True) -> Any:
    """A ``PreTrainedTokenizerFast`` (byte-level BPE) trained in memory on :data:`TINY_CORPUS`."""
    from myriad.lmm.extra import require_lmm_extra

    require_lmm_extra()
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TINY_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>"
    )
    if with_chat_template:
        fast.chat_template = (
            "{% for m in messages %}{{ '<s>' + m['role'] + '\\n' + m['content'] + '</s>\\n' }}{% endfor %}"
            "{% if add_generation_prompt %}{{ '<s>assistant\\n' }}{% endif %}"
        )
    return fast


def tiny_paper_config(vocab_size: int, **changes: object) -> MyriadConfig:
    """The ``paper`` preset at toy sizes (float32), for CPU tests of the real-weights code path."""
    base = paper_config(
        vision={"hidden_size": 32, "num_layers": 2, "num_heads": 4, "intermediate_size": 64, "image_size": 28, "patch_size": 14},
        qformer={"hidden_size": 32, "num_layers": 2, "num_heads": 4, "intermediate_size": 64, "num_query_tokens": 4},
        llm={
            "name": "tiny-llama",
            "hidden_size": 64,
            "num_layers": 2,
            "num_heads": 4,
            "num_kv_heads": 2,
            "intermediate_size": 128,
            "vocab_size": vocab_size,
            "max_position_embeddings": 512,
        },
        prompt_generators={"trunk_channels": (1, 2, 4, 4, 8, 8)},
        vision_dtype="float32",
        llm_dtype="float32",
        max_new_tokens=12,
    )
    return base.replace(**changes) if changes else base
