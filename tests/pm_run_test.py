"""PM and RM runs through `nlhf train`: exact resume, model dir contents, judge reload."""

import json
import os

import gin
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from nlhf_jax import gin_setup
from nlhf_jax import judges
from nlhf_jax import metrics
from nlhf_jax import run_pm
from nlhf_jax import run_train
from nlhf_jax.data import pairwise
from nlhf_jax.data.world import generator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = generator.WorldConfig(n_sft=(4, 2, 2), n_comparisons=(48, 16, 16), n_prompts_train=2)

GIN = """
from __gin__ import dynamic_registration
from nlhf_jax import train_state
from nlhf_jax.data import pairwise
from nlhf_jax.models import t5

include 'configs/models/t5_1_1_tiny.gin'
include 'configs/runs/{kind}.gin'
t5.T5Config.vocab_size = 512
t5.T5Config.emb_dim = 16
t5.T5Config.num_heads = 2
t5.T5Config.head_dim = 8
t5.T5Config.mlp_dim = 32
t5.T5Config.num_encoder_layers = 1
t5.T5Config.num_decoder_layers = 1
t5.T5Config.dropout_rate = 0.1

DATA = @pairwise.ComparisonData()
pairwise.ComparisonData.train = '{world}/comparisons/train.jsonl'
pairwise.ComparisonData.eval = %EVAL_PATH
pairwise.ComparisonData.vocab_path = '{world}/vocab/world.model'
pairwise.ComparisonData.world_dir = '{world}'
EVAL_PATH = None
pairwise.InputFormat.template = '{template}'
pairwise.InputFormat.target_token = 'first'
pairwise.InputFormat.max_input_len = 144
pairwise.InputFormat.max_summary_len = 32

BATCH_SIZE = 8
SAVE_EVERY = 2
LEARNING_RATE = 0.01
train_state.OptimizerConfig.name = "adamw"
train_state.ScheduleConfig.kind = "constant"
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("world") / "w")
    generator.generate(SMALL, out)
    return out


def _gin_file(tmp_path, kind, world):
    """kind: "pm", "rm" or "pm_decoder" (the PM's two-stack layout, y' in the decoder)."""
    template = {"pm": pairwise.WORLD_PM_TEMPLATE, "rm": pairwise.WORLD_RM_TEMPLATE,
                "pm_decoder": pairwise.WORLD_PM_ENCODER_TEMPLATE}[kind]  # fmt: skip
    text = GIN.format(kind=kind[:2], world=world, template=template)
    if kind == "pm_decoder":
        text += (f"pairwise.InputFormat.decoder_template = '{pairwise.WORLD_PM_DECODER_TEMPLATE}'\n"
                 f"pairwise.InputFormat.max_decoder_len = {pairwise.WORLD_PM_DECODER_LEN}\n")
    path = tmp_path / f"{kind}.gin"
    path.write_text(text)
    return str(path)


def _train(gin_file, model_dir, steps, *extra):
    rc = run_train.main([f"--gin_file={gin_file}", f"--gin.MODEL_DIR='{model_dir}'",
                         f"--gin.NUM_STEPS={steps}", "--gin.trainer.LoopConfig.progress=False",
                         *extra])  # fmt: skip
    gin.clear_config()
    assert rc == 0


def _params(model_dir):
    path = os.path.join(model_dir, "checkpoints")
    step = max(int(n) for n in os.listdir(path) if n.isdigit())
    restored = ocp.PyTreeCheckpointer().restore(os.path.join(path, str(step), "default"))
    return step, restored["params"]


@pytest.mark.parametrize("layout", ["pm", "rm", "pm_decoder"])
def test_run_resumes_exactly_and_leaves_a_loadable_judge(layout, world, tmp_path):
    gin_file = _gin_file(tmp_path, layout, world)
    kind = layout[:2]
    straight = str(tmp_path / "straight")
    _train(gin_file, straight, 4, f"--gin.EVAL_PATH='{world}/comparisons/valid.jsonl'")
    split = str(tmp_path / "split")
    _train(gin_file, split, 2)
    _train(gin_file, split, 4)  # resumes from its own step-2 checkpoint
    (s1, p1), (s2, p2) = _params(straight), _params(split)
    assert s1 == s2 == 4
    for a, b in zip(jax.tree_util.tree_leaves(p1), jax.tree_util.tree_leaves(p2)):
        np.testing.assert_array_equal(a, b)

    # what the run leaves behind
    with open(os.path.join(straight, pairwise.JUDGE_FILE)) as f:
        spec = json.load(f)
    assert spec["kind"] == ("preference" if kind == "pm" else "reward")
    assert spec["max_decoder_len"] == (pairwise.WORLD_PM_DECODER_LEN if layout == "pm_decoder" else 0)
    assert os.path.isfile(os.path.join(straight, "model_config.json"))
    rows = metrics.read_jsonl(os.path.join(straight, "metrics.jsonl"))
    assert f"{kind}/loss" in rows[0] and f"{kind}/bayes_agreement" in rows[0]
    final = rows[-1]
    want = {"eval/loss", "eval/accuracy", "eval/ece", "eval/bayes_agreement", "eval/bayes_accuracy",
            "eval/pstar_logloss", "eval/pstar_mae", "eval/expected_accuracy",
            "eval/bayes_expected_accuracy"}  # fmt: skip
    if kind == "pm":
        want |= {"eval/position_bias", "eval/f_accuracy"}
    assert want <= set(final), sorted(final)

    # the judge, rebuilt from the directory alone, reproduces the run's evaluation
    judge = judges.load_judge(straight)
    assert isinstance(judge, judges.PreferenceModelJudge if kind == "pm" else judges.RewardModelJudge)
    texts = pairwise.read_comparison_texts(f"{world}/comparisons/valid.jsonl", world_dir=world)
    again = judges.evaluate_texts(judge, texts)
    for key in ("loss", "accuracy", "pstar_logloss"):
        assert again[key] == pytest.approx(final[f"eval/{key}"], abs=1e-5)
    p = judge.prob(texts.prompts, texts.ys, texts.ys_alt)
    np.testing.assert_allclose(p + judge.prob(texts.prompts, texts.ys_alt, texts.ys), 1.0, atol=1e-6)


def test_run_macro_selects_the_entry_point():
    gin_setup.parse_gin([os.path.join(REPO, "configs", "experiments", "world_pm.gin")], [])
    assert run_train.entry_point() is gin.get_configurable(run_pm.train_preference_model)
    gin_setup.parse_gin([os.path.join(REPO, "configs", "experiments", "world_rm.gin")], [])
    assert run_train.entry_point() is gin.get_configurable(run_pm.train_reward_model)
    gin_setup.parse_gin([os.path.join(REPO, "configs", "experiments", "copy_sft.gin")], [])
    assert run_train.entry_point() is gin.get_configurable(run_train.train)
    gin.clear_config()


@pytest.mark.parametrize("name", ["tldr_pm", "tldr_rm"])
def test_tldr_experiments_bind_their_data(name):
    gin_setup.parse_gin(
        [os.path.join(REPO, "configs", "experiments", f"{name}.gin")],
        ["COMPARISONS = '/data/comparisons'", "VOCAB_PATH = '/ckpt/spiece.model'",
         "INITIAL_CHECKPOINT = '/ckpt/t5'", "MODEL_DIR = '/tmp/x'"],
    )  # fmt: skip
    data = gin.query_parameter("%DATA").scoped_configurable_fn()
    assert data.train == "/data/comparisons" and data.eval_splits == ("valid2",)
    assert gin.query_parameter("%INITIAL_CHECKPOINT") == "/ckpt/t5"
    gin.clear_config()
