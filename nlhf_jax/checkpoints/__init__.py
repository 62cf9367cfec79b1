"""Reading and writing model weights in formats shared with other libraries.

`hf` converts HuggingFace T5 checkpoints (config.json + safetensors) and `t5x` T5X
checkpoints (msgpack + zarr) to and from the parameter tree of
`nlhf_jax.models.EncoderDecoder`; `nlhf convert` (`nlhf_jax.run_convert`) goes between them.
"""

from nlhf_jax.checkpoints.hf import load_t5
from nlhf_jax.checkpoints.hf import save_t5
from nlhf_jax.checkpoints.t5x import load_t5x
from nlhf_jax.checkpoints.t5x import save_t5x

__all__ = ["load_t5", "load_t5x", "save_t5", "save_t5x"]
