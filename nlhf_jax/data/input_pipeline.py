"""Step-indexed input: the batch of step t is a pure function of (seed, t).

Runs resume exactly (the batch after a restart is the one an uninterrupted run would
have seen) and several hosts agree on the global batch without talking to each other:
each host takes its own contiguous slice of the rows of step t.

Datasets are materialised as arrays of fixed feature lengths (the embedded world and
the TL;DR comparisons fit in host memory several times over); seqio tasks are read
once through their feature converter (`from_seqio`).
"""

import dataclasses
from typing import Mapping, Optional

import numpy as np

from nlhf_jax import types

Batch = dict[str, np.ndarray]


@dataclasses.dataclass
class ArrayDataset:
    """Named feature arrays with a shared leading example axis.

    Attributes:
      features: name -> array [N, ...].
      name: used in messages.
      meta: name -> list of N host-side values (ids, raw texts); never batched.
    """

    features: Mapping[str, np.ndarray]
    name: str = "dataset"
    meta: dict = dataclasses.field(default_factory=dict)  # per-example non-array data

    def __post_init__(self):
        sizes = {k: len(v) for k, v in self.features.items()}
        if not sizes:
            raise ValueError(f"{self.name}: no features")
        if len(set(sizes.values())) != 1:
            raise ValueError(f"{self.name}: features have different lengths {sizes}")
        if next(iter(sizes.values())) == 0:
            raise ValueError(f"{self.name}: the dataset is empty")

    def __len__(self) -> int:
        return len(next(iter(self.features.values())))

    def indices(self, step: int, batch_size: int, seed: int) -> np.ndarray:
        """Global row indices of step `step`: epoch-wise shuffles seeded by (seed, epoch).

        Returns:
          int64 [batch_size].
        """
        n = len(self)
        start = step * batch_size
        out = np.empty(batch_size, np.int64)
        filled = 0
        while filled < batch_size:
            epoch, offset = divmod(start + filled, n)
            perm = np.random.default_rng([seed, epoch]).permutation(n)
            take = min(batch_size - filled, n - offset)
            out[filled : filled + take] = perm[offset : offset + take]
            filled += take
        return out

    def batch(
        self,
        step: int,
        batch_size: int,
        seed: int = 0,
        process_index: int = 0,
        process_count: int = 1,
    ) -> Batch:
        """This host's rows of the global batch of step `step`.

        Args:
          step: the optimizer step about to run.
          batch_size: the global batch size (divisible by process_count).
          seed: data-order seed.
          process_index, process_count: this host's slice.

        Returns:
          name -> array [batch_size // process_count, ...].
        """
        if batch_size % process_count:
            raise ValueError(
                f"global batch size {batch_size} is not divisible by {process_count} processes"
            )
        local = batch_size // process_count
        idx = self.indices(step, batch_size, seed)[process_index * local : (process_index + 1) * local]
        return {k: np.asarray(v[idx]) for k, v in self.features.items()}

    def sequential(self, batch_size: int):
        """Yields every example once, in order, in batches (the last one padded by
        repeating row 0) together with the number of real rows."""
        n = len(self)
        for start in range(0, n, batch_size):
            idx = np.arange(start, min(start + batch_size, n))
            real = len(idx)
            if real < batch_size:
                idx = np.concatenate([idx, np.zeros(batch_size - real, np.int64)])
            yield {k: np.asarray(v[idx]) for k, v in self.features.items()}, real


def pad_to(seqs: list[list[int]], length: int, name: str = "sequence") -> tuple[np.ndarray, int]:
    """Right-pads with 0 (truncating to `length`, keeping the last token if it is EOS).

    Truncation rule (documented, counted): keep the first `length - 1` tokens and put
    EOS in the last slot, so a truncated sequence is still terminated.

    Returns:
      (int32 [len(seqs), length], number of truncated sequences).
    """
    out = np.zeros((len(seqs), length), np.int32)
    truncated = 0
    for i, s in enumerate(seqs):
        if len(s) > length:
            truncated += 1
            s = list(s[: length - 1]) + [types.EOS_ID]
        out[i, : len(s)] = s
    return out, truncated


def seq2seq_features(inputs: np.ndarray, targets: np.ndarray) -> Batch:
    """Encoder-decoder features in seqio's EncDecFeatureConverter naming.

    Args:
      inputs: int [N, K], 0-padded.
      targets: int [N, L], 0-padded, EOS-terminated.

    Returns:
      encoder_input_tokens, decoder_input_tokens (targets shifted right with the start
      token 0), decoder_target_tokens, decoder_loss_weights (1 on real target tokens).
    """
    decoder_inputs = np.zeros_like(targets)
    decoder_inputs[:, 1:] = targets[:, :-1]
    return {
        "encoder_input_tokens": inputs.astype(np.int32),
        "decoder_input_tokens": decoder_inputs.astype(np.int32),
        "decoder_target_tokens": targets.astype(np.int32),
        "decoder_loss_weights": (targets != types.PAD_ID).astype(np.float32),
    }


def copy_task(
    num_examples: int = 512,
    vocab_size: int = 32,
    input_len: int = 8,
    target_len: int = 8,
    seed: int = 0,
    reverse: bool = True,
) -> ArrayDataset:
    """A tiny synthetic seq2seq task (reverse a random token string).

    Used by tests and laptop smoke runs of the training machinery, where real text
    would only add tokenisation time. Tokens are drawn from [2, vocab_size).
    """
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, min(input_len, target_len - 1) + 1, size=num_examples)
    inputs, targets = [], []
    for n in lengths:
        seq = rng.integers(2, vocab_size, size=n).tolist()
        inputs.append(seq + [types.EOS_ID])
        targets.append((seq[::-1] if reverse else seq) + [types.EOS_ID])
    inp, _ = pad_to(inputs, input_len + 1)
    tgt, _ = pad_to(targets, target_len)
    return ArrayDataset(seq2seq_features(inp, tgt), name="copy_task")


def from_seqio(
    task_name: str,
    split: str,
    input_len: int,
    target_len: int,
    max_examples: Optional[int] = None,
    shuffle: bool = False,
    seed: Optional[int] = None,
) -> ArrayDataset:
    """Materialises a registered seqio task through the encoder-decoder converter.

    Args:
      task_name: a registered seqio Task or Mixture.
      split: dataset split.
      input_len, target_len: feature lengths (longer examples are truncated by
        seqio's converter, which keeps the first tokens).
      max_examples: stop after this many.
      shuffle, seed: passed to seqio.

    Returns:
      ArrayDataset with the EncDecFeatureConverter features.
    """
    import seqio  # imported here: pulls tensorflow
    from tqdm import auto as tqdm

    ds = seqio.get_dataset(
        task_name,
        task_feature_lengths={"inputs": input_len, "targets": target_len},
        dataset_split=split,
        shuffle=shuffle,
        seed=seed,
        feature_converter=seqio.EncDecFeatureConverter(pack=False),
    )
    if max_examples:
        ds = ds.take(max_examples)
    rows: dict[str, list] = {}
    for ex in tqdm.tqdm(ds.as_numpy_iterator(), desc=f"reading {task_name}:{split}", leave=False):
        for k, v in ex.items():
            rows.setdefault(k, []).append(v)
    if not rows:
        raise ValueError(f"seqio task {task_name!r} split {split!r} yielded no examples")
    feats = {k: np.stack(v) for k, v in rows.items()}
    feats["decoder_loss_weights"] = feats["decoder_loss_weights"].astype(np.float32)
    return ArrayDataset(feats, name=f"{task_name}:{split}")
