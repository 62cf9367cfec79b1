"""Shared by the benchmark scripts in this directory (Python puts it on the path when
it runs one of them): what they print about the machine, and the model size flags."""

import os
import platform


def cpu_model() -> str:
    """The CPU's model name, from /proc/cpuinfo where there is one."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def load() -> str:
    """The 1, 5 and 15 minute load averages: a figure taken under load is labelled so."""
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def add_t5_small_args(parser) -> None:
    """--d_model ... --vocab_size, defaulting to google/t5-v1_1-small's dimensions."""
    parser.add_argument("--d_model", type=int, default=512)
    parser.add_argument("--d_ff", type=int, default=1024)
    parser.add_argument("--num_heads", type=int, default=6)
    parser.add_argument("--d_kv", type=int, default=64)
    parser.add_argument("--num_layers", type=int, default=8, help="layers per stack")


def hf_generate(model, input_ids, attention_mask, decode_len: int):
    """HF `generate` sampling exactly `decode_len` new tokens per row (temperature 1, no
    top-k / top-p, KV cache on): the setting both benchmarks compare our sampler with.

    Args:
      model: a transformers T5ForConditionalGeneration.
      input_ids, attention_mask: torch int64 [B, K].
    Returns:
      torch int64 [B, 1 + decode_len] (the decoder start token, then the samples).
    """
    import torch  # only the comparison rows need it

    with torch.no_grad():
        return model.generate(
            input_ids=input_ids, attention_mask=attention_mask, do_sample=True, temperature=1.0,
            top_k=0, top_p=1.0, num_beams=1, max_new_tokens=decode_len,
            min_new_tokens=decode_len, use_cache=True, decoder_start_token_id=0,
            eos_token_id=1, pad_token_id=0,
        )
