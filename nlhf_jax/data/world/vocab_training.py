"""Trains the embedded world's SentencePiece model, deterministically.

Why this module exists: the generator writes the world's vocabulary with the rest of
its files, and `data/vocab.py` opens it as a seqio vocabulary (generating the world
first if needed), so the trainer lives apart from both: the generator imports it, and
nothing here imports the generator back. Training is deterministic (one thread, fixed
seed, no input sampling or shuffling), in the T5 id layout (pad 0, eos 1, unk 2, no
bos), so that the same code paths serve the world and real T5 checkpoints.
"""

import io
import os
from typing import Iterable

import sentencepiece as spm

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2


def train_sentencepiece(
    lines: Iterable[str],
    model_path: str,
    *,
    vocab_size: int = 512,
    seed: int = 0,
    user_symbols: Iterable[str] = (),
) -> str:
    """Trains a unigram SentencePiece model; same inputs give a byte-identical file.

    Args:
      lines: training sentences (the whole corpus is used, in the given order).
      model_path: where to write the ``.model`` file (parent directories are made).
      vocab_size: at most this many pieces, including pad/eos/unk (a small corpus
        may support fewer: the limit is soft).
      seed: SentencePiece's random seed.
      user_symbols: strings that must always be single pieces.

    Returns:
      `model_path`.
    """
    spm.set_random_generator_seed(seed)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(lines)),
        model_writer=model,
        model_type="unigram",
        vocab_size=vocab_size,
        pad_id=PAD_ID,
        eos_id=EOS_ID,
        unk_id=UNK_ID,
        bos_id=-1,
        character_coverage=1.0,
        num_threads=1,
        input_sentence_size=0,
        shuffle_input_sentence=False,
        user_defined_symbols=list(user_symbols),
        hard_vocab_limit=False,  # a closed world has fewer pieces than asked for
        minloglevel=2,
    )
    os.makedirs(os.path.dirname(os.path.abspath(model_path)), exist_ok=True)
    with open(model_path, "wb") as f:
        f.write(model.getvalue())
    return model_path
