"""Prompt and target templates shared by every summarisation task.

Why this module exists: the policy, the reference, the preference model and the reward
model must all see a post in exactly the same words, whether it comes from the embedded
world, the TL;DR JSONL files or a TFDS dataset. A prompt is kept in two parts, a *body*
and a fixed *suffix* (``\\n\\nTL;DR:``), so that the token-level truncation rule in
`tasks.py` can shorten the body and still end every prompt with the cue the model was
trained on.
"""

TLDR_SUFFIX = "\n\nTL;DR:"


def tldr_body(subreddit: str, title: str, post: str) -> str:
    """The Reddit prompt without its suffix (the usual TL;DR format)."""
    return f"SUBREDDIT: r/{subreddit}\n\nTITLE: {title}\n\nPOST: {post}"


def tldr_prompt(subreddit: str, title: str, post: str) -> str:
    """``SUBREDDIT: r/{subreddit}\\n\\nTITLE: {title}\\n\\nPOST: {post}\\n\\nTL;DR:``."""
    return tldr_body(subreddit, title, post) + TLDR_SUFFIX


def post_prompt(record) -> str:
    """The TL;DR prompt of a post record (a mapping with ``subreddit``, ``title`` and
    ``post``, as the JSONL readers return it).

    The one place a judge's input prompt is built: the SFT and prompt datasets, the PM
    and RM training pairs and every judge call of a policy run, `nlhf evaluate` and the
    report take the prompt from here, so a learned judge reads the same bytes in use
    as in training.
    """
    return tldr_prompt(record["subreddit"], record["title"], record["post"])


def news_body(document: str) -> str:
    """Body of a news-article prompt (XSum, CNN/DailyMail): the article itself."""
    return f"ARTICLE: {document}"


def news_prompt(document: str) -> str:
    """``ARTICLE: {document}\\n\\nTL;DR:``."""
    return news_body(document) + TLDR_SUFFIX


def summary_target(summary: str) -> str:
    """The decoder target: a leading space, then the summary (OpenAI convention).

    SentencePiece strips the leading space when encoding, so the tokens are the same
    with or without it; it is kept so decoded text matches the published data.
    """
    return " " + summary.strip()
