"""seqio vocabularies: the world's own and users' T5 models.

Why this module exists: the default T5 vocabulary lives on a cloud bucket that a
fresh machine cannot reach, and the embedded world needs no 32k-piece vocabulary
anyway. So the world generator trains a small SentencePiece model on the world's
corpus, in the T5 id layout (`world/vocab_training.py`), so that the same code paths
serve the world and real T5 checkpoints; this module opens it (generating the world
first if needed) as a seqio vocabulary. Real-data tasks take the path of a user's
``spiece.model``.
"""

import os
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    import seqio

# seqio imports TensorFlow (seconds). Generating the world and training its
# tokenizer need neither, so seqio is imported only when a seqio vocabulary is built.


def sentencepiece_vocabulary(path: str, extra_ids: int = 0) -> "seqio.SentencePieceVocabulary":
    """A seqio vocabulary over a local SentencePiece file (e.g. a T5 ``spiece.model``).

    Args:
      path: the ``.model`` file. T5 checkpoints use it with ``extra_ids=100``.
      extra_ids: sentinel ids appended after the pieces.

    Returns:
      The vocabulary (loaded lazily, on first use).

    Raises:
      FileNotFoundError: if `path` does not exist.
    """
    import seqio

    if not os.path.isfile(path):
        raise FileNotFoundError(f"no SentencePiece model at {path}")
    return seqio.SentencePieceVocabulary(path, extra_ids=extra_ids)


def world_vocabulary(
    data_dir: Optional[str] = None, config=None
) -> "seqio.SentencePieceVocabulary":
    """The embedded world's vocabulary, generating the world first if needed.

    Args:
      data_dir: the world's directory; None: `generator.default_data_dir(seed)`.
      config: the world's `generator.WorldConfig`. None: use the world already in
        `data_dir` whatever its config, or generate the default world there.

    Returns:
      A `seqio.SentencePieceVocabulary` over ``DATA_DIR/vocab/world.model``.
    """
    import seqio

    from nlhf_jax.data.world import generator

    if config is not None:
        data_dir = generator.ensure_world(data_dir, config)
    else:
        data_dir = generator.world_dir(data_dir)
    return seqio.SentencePieceVocabulary(generator.vocab_path(data_dir))


def _define_lazy_world_vocabulary() -> type:
    import seqio

    class LazyWorldVocabulary(seqio.SentencePieceVocabulary):
        """A world vocabulary whose model file is generated on first use.

        Registering the world tasks on import must not write anything; this
        vocabulary defers `generator.ensure_world` to the moment seqio first loads
        the model.
        """

        def __init__(self, data_dir: str, config):
            from nlhf_jax.data.world import generator

            self._world_dir = data_dir
            self._world_config = config
            super().__init__(generator.vocab_path(data_dir))

        def _model_context(self):
            if self._model is None:
                from nlhf_jax.data.world import generator

                generator.ensure_world(self._world_dir, self._world_config)
            return super()._model_context()

    # Module-level identity, so pickling (gin deep-copies vocabularies) finds it.
    LazyWorldVocabulary.__module__ = __name__
    LazyWorldVocabulary.__qualname__ = "LazyWorldVocabulary"
    return LazyWorldVocabulary


def __getattr__(name: str):
    # PEP 562: `vocab.LazyWorldVocabulary` is defined (importing seqio) on first access.
    if name == "LazyWorldVocabulary":
        cls = _define_lazy_world_vocabulary()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
