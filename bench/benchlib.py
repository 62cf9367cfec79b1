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
