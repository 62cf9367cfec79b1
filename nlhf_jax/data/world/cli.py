"""``nlhf world``: describe the embedded world's game, or write its datasets.

Why this module exists: the expected outcome of the deep experiments should be one
command away (``nlhf world --describe``), and so should the files every training stage
reads (``nlhf world --generate --out DIR``).
"""

import argparse
import dataclasses
import sys
from typing import Optional


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nlhf world", description="Describe or generate the embedded summarization world."
    )
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument(
        "--describe",
        action="store_true",
        help="print the style game and the predicted outcome of NLHF vs RLHF",
    )
    mode.add_argument("--generate", action="store_true",
                      help="write the datasets and the vocabulary to --out")  # fmt: skip
    p.add_argument("--out", help="output directory for --generate")
    p.add_argument("--seed", type=int, default=0, help="the world's seed (default 0)")
    p.add_argument("--posts", type=int, default=256,
                   help="posts over which --describe measures the game (default 256)")  # fmt: skip
    p.add_argument("--n-sft", type=int, nargs=3, metavar=("TRAIN", "VALID", "TEST"),
                   help="SFT pairs per split (default 20000 500 500)")  # fmt: skip
    p.add_argument("--n-comparisons", type=int, nargs=3, metavar=("TRAIN", "VALID", "TEST"),
                   help="comparison pairs per split (default 90000 1000 1000)")  # fmt: skip
    p.add_argument("--n-prompts", type=int, help="fresh training prompts (default 5000)")
    p.add_argument("--n-style-comparisons", type=int, metavar="N",
                   help="extra train comparisons of two reference-quality summaries of distinct "
                        "styles, appended after the others (default 0; 30000 lets the PM "
                        "learn the style game, docs/results-world.md)")  # fmt: skip
    return p


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of ``nlhf world``; returns the exit status."""
    args = _parser().parse_args(argv)
    from nlhf_jax.data.world import generator  # after parsing: --help stays cheap

    config = generator.WorldConfig(seed=args.seed)
    overrides = {}
    if args.n_sft:
        overrides["n_sft"] = tuple(args.n_sft)
    if args.n_comparisons:
        overrides["n_comparisons"] = tuple(args.n_comparisons)
    if args.n_prompts is not None:
        overrides["n_prompts_train"] = args.n_prompts
    if args.n_style_comparisons is not None:
        overrides["n_style_comparisons"] = args.n_style_comparisons
    config = dataclasses.replace(config, **overrides)
    if args.describe:
        from nlhf_jax.data.world import describe

        print(describe.format_report(describe.describe_world(config, n_posts=args.posts)))
        return 0
    if not args.out:
        print("nlhf world: --generate needs --out DIR", file=sys.stderr)
        return 2
    hashes = generator.generate(config, args.out)
    print(f"wrote {len(hashes)} files to {args.out} (seed {config.seed}):")
    for rel in sorted(hashes):
        print(f"  {rel}  sha256 {hashes[rel][:16]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
