"""Where a generated world keeps its files, and reading them back as plain data.

Why this module exists: the generator writes a world directory and the raters read
their population and posts from one; with the layout and the readers here, both
import this module (which imports neither), and no module of the world imports one
that imports it back. See `generator.py` for what each file holds.
"""

import json
import os

SPLITS = ("train", "valid", "test")
WORLD_FILE = "world.json"


def split_path(data_dir: str, kind: str, split: str) -> str:
    """DATA_DIR/{sft,comparisons,prompts}/{train,valid,test}.jsonl."""
    return os.path.join(data_dir, kind, f"{split}.jsonl")


def vocab_path(data_dir: str) -> str:
    """DATA_DIR/vocab/world.model."""
    return os.path.join(data_dir, "vocab", "world.model")


def read_config_fields(data_dir: str) -> dict:
    """The `WorldConfig` fields a world was written with, as JSON values (its world.json).

    `generator.load_config` makes them a `WorldConfig`; the rater population is
    ``["population"]`` (`raters.RaterPopulation.from_dict`)."""
    with open(os.path.join(data_dir, WORLD_FILE), encoding="utf-8") as f:
        return json.load(f)["config"]


def load_posts(data_dir: str) -> dict[str, str]:
    """Post id -> post text for every post of a generated world (for `raters.RaterPanel`)."""
    posts: dict[str, str] = {}
    for kind in ("sft", "prompts"):
        for split in SPLITS:
            with open(split_path(data_dir, kind, split), encoding="utf-8") as f:
                for line in f:
                    row = json.loads(line)
                    posts[row["id"]] = row["post"]
    for split in SPLITS:
        with open(split_path(data_dir, "comparisons", split), encoding="utf-8") as f:
            for line in f:
                info = json.loads(line)["info"]
                posts[info["id"]] = info["post"]
    return posts
