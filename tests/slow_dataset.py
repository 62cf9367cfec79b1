"""A dataset that sleeps per batch, so a test can kill a run in the middle.

Imported by gin files that tests write (the subprocess gets this directory on
PYTHONPATH); not part of the package.
"""

import time

from nlhf_jax import input_pipeline


class SlowDataset(input_pipeline.ArrayDataset):
    delay: float = 0.2

    def batch(self, *args, **kwargs):
        time.sleep(self.delay)
        return super().batch(*args, **kwargs)


def slow_copy_task(**kwargs):
    ds = input_pipeline.copy_task(**kwargs)
    return SlowDataset(ds.features, name="slow_copy_task")
