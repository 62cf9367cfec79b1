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

    def resume(self, step: int) -> dict[str, float]:
        """Prepares the file for a run resumed at `step`: records after `step` were written
        by the interrupted run after its last checkpoint and will be written again, so they
        are dropped (no step appears twice). Returns the scalars recorded at `step` itself
        (the final metrics, when the run had already finished)."""
        if not self.enabled or not os.path.exists(self.path):
            return {}
        self._file.close()
        with open(self.path, encoding="utf-8") as f:
            lines = [line for line in f if line.strip()]
        keep, at_step, dropped = [], {}, 0
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a kill
                dropped += 1
                continue
            if record.get("step", 0) > step:
                dropped += 1
                continue
            keep.append(json.dumps(record) + "\n")
            if record.get("step") == step:
                at_step.update({k: v for k, v in record.items()
                                if k != "step" and isinstance(v, (int, float))})
        if dropped:
            logging.info("%s: dropped %d records after step %d (written after the last "
                         "checkpoint of the interrupted run)", self.path, dropped, step)
            tmp = self.path + ".tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                f.writelines(keep)
            os.replace(tmp, self.path)
        self._file = open(self.path, "a", encoding="utf-8")
        return at_step

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
