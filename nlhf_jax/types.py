"""Shared type aliases and the logical axis names of the whole project.

Parameters and activations carry *logical* axis names; `partitioning.default_rules()`
is the one place that maps them onto the mesh axes `('data', 'fsdp', 'model')`.
Keeping the names as constants here means a typo is an ImportError, not a silently
replicated tensor.
"""

from typing import Any

import jax

Array = jax.Array
PRNGKey = jax.Array
PyTree = Any
Shape = tuple[int, ...]
DType = Any

# Parameter axes (t5x naming).
VOCAB = "vocab"
EMBED = "embed"
MLP = "mlp"
HEADS = "heads"
KV = "kv"
JOINED_KV = "joined_kv"
RELPOS_BUCKETS = "relpos_buckets"
LAYERS = "layers"  # the stacked axis of scanned layers

# Activation axes (kept distinct from parameter axes, MaxText style).
ACT_BATCH = "act_batch"
ACT_LENGTH = "act_length"
ACT_EMBED = "act_embed"
ACT_HEADS = "act_heads"
ACT_KV = "act_kv"
ACT_MLP = "act_mlp"
ACT_VOCAB = "act_vocab"

PARAM_AXES = (VOCAB, EMBED, MLP, HEADS, KV, JOINED_KV, RELPOS_BUCKETS, LAYERS)
ACTIVATION_AXES = (ACT_BATCH, ACT_LENGTH, ACT_EMBED, ACT_HEADS, ACT_KV, ACT_MLP, ACT_VOCAB)

# Mesh axes.
DATA = "data"
FSDP = "fsdp"
MODEL = "model"
MESH_AXES = (DATA, FSDP, MODEL)

# Token conventions shared with T5: 0 pads and starts the decoder, 1 ends a sequence.
PAD_ID = 0
EOS_ID = 1
