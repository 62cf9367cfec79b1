"""Evaluation: sample policies, compare them under a judge, and summarise.

  stats     win rates under a judge: Clopper-Pearson intervals, `Comparison`,
            `win_rate_matrix` (Table 1), `ptau_cells` (Table 2), style distances.
  sampling  one response per policy per prompt (`sample_policies`), with the
            sequence log-probs P_tau needs.
  tables    the outputs: matrix.md/.csv/.json and heatmap.png, style and quality tables.
  findings  the paper's findings checked on a matrix, what the run measured about
            each that fails, and whether the run shows the world's mechanism.
  report    the demo's report (`write_demo_report`): both matrices, the findings,
            the judges, training curves.

Entry points (`nlhf evaluate` in run_evaluate.py, `nlhf demo`) use these modules;
nothing here imports an entry point. The package exports the statistics and the
markdown matrix; import the submodules for the rest.
"""

from nlhf_jax.evaluation.stats import Comparison
from nlhf_jax.evaluation.stats import clopper_pearson
from nlhf_jax.evaluation.stats import compare
from nlhf_jax.evaluation.stats import style_distribution
from nlhf_jax.evaluation.stats import total_variation
from nlhf_jax.evaluation.stats import win_rate_matrix
from nlhf_jax.evaluation.tables import matrix_markdown

__all__ = ["Comparison", "clopper_pearson", "compare", "matrix_markdown", "style_distribution", "total_variation",
           "win_rate_matrix"]
