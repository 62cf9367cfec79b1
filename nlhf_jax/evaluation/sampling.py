"""One response per policy per prompt, and the log-probs P_tau needs.

Every policy answers the same prompts; row i of policy k is drawn with the key
fold_in(key(seed + 7919 k), i), so results depend neither on the batch size nor on the
other policies (two copies of one policy are two independent samples).
"""

import dataclasses
import functools
from typing import Optional, Sequence

import jax
import numpy as np

from nlhf_jax import decoding
from nlhf_jax import policy
from nlhf_jax import types

PyTree = types.PyTree


@dataclasses.dataclass
class PolicySamples:
    name: str
    model_dir: str
    texts: list
    tokens: np.ndarray
    lengths: np.ndarray
    seq_logp: Optional[np.ndarray] = None  # log pi(y | x) [N]
    seq_ref_logp: Optional[np.ndarray] = None  # log mu(y | x) [N]


def sample_texts(
    model,
    params: PyTree,
    prompts: np.ndarray,
    vocabulary,
    cfg: decoding.SamplingConfig,
    seed: int = 0,
    batch_size: int = 128,
    progress: bool = False,
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Samples one response per prompt, in batches, jitted once.

    Row i's key is fold_in(key(seed), i): results do not depend on the batch size.

    Args:
      model: EncoderDecoder; params: its parameters.
      prompts: int [N, K].
      vocabulary: to decode the responses.
      cfg: decoding settings (recorded by callers with the results).

    Returns:
      (texts [N], tokens int32 [N, L], lengths int32 [N]).
    """
    from nlhf_jax.data import arrays

    n = len(prompts)
    base = jax.random.key(seed)
    fn = jax.jit(functools.partial(policy.sample, model, cfg=cfg))
    toks, lens = [], []
    starts = range(0, n, batch_size)
    if progress:
        from tqdm import auto as tqdm

        starts = tqdm.tqdm(starts, desc="sampling", leave=False)
    for start in starts:
        idx = np.arange(start, start + batch_size)
        real = min(batch_size, n - start)
        rows = np.minimum(idx, n - 1)
        keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(idx)
        out = jax.device_get(fn(params, prompts[rows], keys))
        toks.append(np.asarray(out.tokens)[:real])
        lens.append(np.asarray(out.lengths)[:real])
    tokens, lengths = np.concatenate(toks), np.concatenate(lens)
    return arrays.decode_tokens(vocabulary, tokens, lengths), tokens, lengths


def sample_policies(
    policies: Sequence[tuple[str, str]],
    prompts: np.ndarray,
    vocabulary,
    cfg: decoding.SamplingConfig,
    seed: int = 0,
    reference_dir: Optional[str] = None,
) -> list[PolicySamples]:
    """One response per policy per prompt; with `reference_dir`, also the sequence
    log-probs under each policy and under mu (for the P_tau judge)."""
    from nlhf_jax import partitioning
    from nlhf_jax import trainer

    mesh = partitioning.make_mesh(partitioning.MeshConfig())
    rules = partitioning.default_rules()
    ref = trainer.load_frozen(reference_dir, mesh, rules) if reference_dir else None
    out = []
    for i, (name, model_dir) in enumerate(policies):
        _, net, params = trainer.load_frozen(model_dir, mesh, rules)
        # independent samples per policy (two copies of one policy are two samples)
        texts, toks, lens = sample_texts(net, params, prompts, vocabulary, cfg, seed=seed + 7919 * i)
        s = PolicySamples(name, model_dir, texts, toks, lens)
        if ref is not None:
            lp = jax.jit(lambda p, x, t, n, m=net: policy.token_logprobs(m, p, x, t, n, cfg))
            s.seq_logp = np.asarray(lp(params, prompts, toks, lens)).sum(-1)
            lp_ref = jax.jit(lambda p, x, t, n, m=ref[1]: policy.token_logprobs(m, p, x, t, n, cfg))
            s.seq_ref_logp = np.asarray(lp_ref(ref[2], prompts, toks, lens)).sum(-1)
        out.append(s)
    return out
