"""Data for NLHF: the embedded summarization world, real-data readers, seqio tasks.

Why this package exists: every training stage reads prompts, SFT pairs and labelled
comparisons through one set of formats and seqio tasks, whether the data is generated
here (`world`) or brought by the user (TL;DR / OpenAI JSONL files, TFDS datasets).

Modules: `world` (generator, parser, rater population, exact game), `vocab`
(SentencePiece), `templates` (prompt format), `jsonl` (validated readers), `tasks`
(seqio registration; importing it imports TensorFlow, so it is not imported here).
"""
