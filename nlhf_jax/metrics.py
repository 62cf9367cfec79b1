"""Metric sinks: one JSONL line per logged step plus TensorBoard event files.

JSONL is what scripts and the demo report read back; TensorBoard (through
`clu.metric_writers`, which writes real event files) is what people look at. Only
process 0 writes, so a multi-host run produces one log.
"""

import json
import logging
import os
from typing import Any, Mapping, Optional

import jax
import numpy as np


def _scalar(v: Any) -> float:
    return float(np.asarray(jax.device_get(v)))


class MetricWriter:
    """Writes scalars to `<model_dir>/metrics.jsonl` and TensorBoard under `<model_dir>/tb`."""

    def __init__(self, model_dir: str, tensorboard: bool = True):
        self.enabled = jax.process_index() == 0
        self.path = os.path.join(model_dir, "metrics.jsonl")
        self._tb = None
        if not self.enabled:
            return
        os.makedirs(model_dir, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")
        if tensorboard:
            try:
                from clu import metric_writers

                self._tb = metric_writers.SummaryWriter(os.path.join(model_dir, "tb"))
            except Exception as e:  # noqa: BLE001 - TensorBoard is optional at run time
                logging.warning("TensorBoard writer unavailable (%s); JSONL only", e)

    def write(self, step: int, scalars: Mapping[str, Any], texts: Optional[Mapping[str, str]] = None):
        if not self.enabled:
            return
        values = {k: _scalar(v) for k, v in scalars.items()}
        record = {"step": int(step), **values}
        if texts:
            record.update({k: str(v) for k, v in texts.items()})
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            self._tb.write_scalars(int(step), values)
            if texts:
                self._tb.write_texts(int(step), dict(texts))

    def close(self):
        if not self.enabled:
            return
        self._file.close()
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """All records of a metrics file (for reports and tests)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
