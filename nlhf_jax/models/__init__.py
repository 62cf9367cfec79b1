"""T5-family networks. See `t5.py` for the calling convention."""

from nlhf_jax.models.t5 import DecoderOnly
from nlhf_jax.models.t5 import EncoderDecoder
from nlhf_jax.models.t5 import T5Config
from nlhf_jax.models.t5 import init_params
from nlhf_jax.models.t5 import init_variables

__all__ = ["DecoderOnly", "EncoderDecoder", "T5Config", "init_params", "init_variables"]
