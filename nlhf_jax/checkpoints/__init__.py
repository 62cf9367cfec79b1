"""Reading and writing model weights in formats shared with other libraries.

`hf` converts HuggingFace T5 checkpoints (config.json + safetensors) to and from the
parameter tree of `nlhf_jax.models.EncoderDecoder`.
"""

from nlhf_jax.checkpoints.hf import load_t5
from nlhf_jax.checkpoints.hf import save_t5

__all__ = ["load_t5", "save_t5"]
