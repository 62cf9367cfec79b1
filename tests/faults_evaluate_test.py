"""`nlhf evaluate` refuses bad arguments before it samples anything.

Sampling every policy takes most of an evaluation (24 s with the demo's policies), so a
wrong judge spec, a directory that is not a finished run, a policy trained on another
vocabulary or a nonsensical number must stop the command first, with exit code 2 and a
message naming the argument, the file and both values. Every test here replaces the
sampling functions with ones that fail the test if called.
"""

import json
import os

import orbax.checkpoint as ocp
import pytest

from nlhf_jax import checkpointing
from nlhf_jax import run_evaluate
from nlhf_jax import testing
from nlhf_jax.data import pairwise
from nlhf_jax.data.world import generator
from nlhf_jax.evaluation import sampling
from nlhf_jax.models import t5

TINY_WORLD = generator.WorldConfig(n_sft=(4, 2, 4), n_comparisons=(4, 2, 2), n_prompts_train=2)
# The demo's policies pad the world's vocabulary (under 300 pieces) to 320 rows.
GOOD_VOCAB = 320


def _finished_run(model_dir: str, vocab_size: int) -> str:
    """What `nlhf train` leaves behind: model_config.json and an orbax checkpoint."""
    config = testing.tiny_t5_config(vocab_size=vocab_size, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
                                    num_encoder_layers=1, num_decoder_layers=1)  # fmt: skip
    checkpointing.save_model_config(model_dir, config)
    params = testing.random_params(t5.EncoderDecoder(config))
    ocp.PyTreeCheckpointer().save(os.path.join(model_dir, "checkpoints", "1", "default"), {"params": params})
    return model_dir


def _judge_run(model_dir: str, world: str, kind: str, vocab_size: int) -> str:
    """A PM or RM run directory: a finished run plus judge.json and its vocabulary copy."""
    template = pairwise.WORLD_PM_TEMPLATE if kind == "pm" else pairwise.WORLD_RM_TEMPLATE
    fmt = pairwise.InputFormat(template, pairwise.WORLD_TARGET_TOKEN, 144, 32)
    pairwise.save_judge_spec(model_dir, pairwise.PairEncoder(fmt, pairwise.Tokenizer(generator.vocab_path(world))))
    return _finished_run(model_dir, vocab_size)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("eval_world") / "w")
    generator.generate(TINY_WORLD, out)
    return out


@pytest.fixture(scope="module")
def pieces(world):
    return pairwise.Tokenizer(generator.vocab_path(world)).vocab_size


@pytest.fixture(scope="module")
def runs(tmp_path_factory, world):
    root = tmp_path_factory.mktemp("eval_runs")
    return {
        "sft": _finished_run(str(root / "sft"), GOOD_VOCAB),
        "nash": _finished_run(str(root / "nash"), GOOD_VOCAB),
        "pm": _judge_run(str(root / "pm"), world, "pm", GOOD_VOCAB),
        "rm": _judge_run(str(root / "rm"), world, "rm", GOOD_VOCAB),
    }


@pytest.fixture
def no_sampling(monkeypatch):
    """Sampling fails the test; returns the calls that reached it (must stay empty)."""
    calls = []

    def refuse(*args, **kwargs):
        calls.append((args, kwargs))
        raise AssertionError("sampling started before the arguments were validated")

    monkeypatch.setattr(sampling, "sample_policies", refuse)
    monkeypatch.setattr(sampling, "sample_texts", refuse)
    return calls


def _evaluate(tmp_path, world, runs, *extra, policies=("sft", "nash"), judge="world"):
    argv = [f"--policy={n}={runs[n]}" for n in policies]
    argv += [f"--judge={judge}", f"--world_dir={world}", "--num_prompts=4", "--max_decode_len=4",
             f"--out={tmp_path / 'eval'}", *extra]
    return run_evaluate.main(argv)


def _refused(capsys, call) -> str:
    """Runs `call`, expects argparse's exit code 2, returns what it wrote to stderr."""
    with pytest.raises(SystemExit) as e:
        call()
    assert e.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("spec,expected", [
    ("oracle", "--judge 'oracle': unknown kind 'oracle'"),
    ("pm", "--judge 'pm': pm needs a directory"),
    ("pm:", "--judge 'pm:': pm needs a directory"),
    ("world:runs/x", "--judge 'world:runs/x': the world judge takes no directory"),
])
def test_a_malformed_judge_spec_is_refused_before_sampling(spec, expected, tmp_path, world, runs, no_sampling,
                                                            capsys):
    err = _refused(capsys, lambda: _evaluate(tmp_path, world, runs, judge=spec))
    assert expected in err and "expected world, pm:DIR, rm:DIR or ptau:DIR" in err
    assert not no_sampling


def test_a_judge_directory_must_hold_a_judge_of_the_right_kind(tmp_path, world, runs, no_sampling, capsys):
    missing = str(tmp_path / "no_such_pm")
    err = _refused(capsys, lambda: _evaluate(tmp_path, world, runs, judge=f"pm:{missing}"))
    assert f"--judge pm:{missing}: no directory {missing}" in err
    # A policy run is no judge: it has no judge.json.
    err = _refused(capsys, lambda: _evaluate(tmp_path, world, runs, judge=f"rm:{runs['sft']}"))
    assert f"--judge rm:{runs['sft']}: no {os.path.join(runs['sft'], pairwise.JUDGE_FILE)}" in err
    # A reward model asked for as a preference model.
    err = _refused(capsys, lambda: _evaluate(tmp_path, world, runs, judge=f"pm:{runs['rm']}"))
    assert f"--judge pm:{runs['rm']}: a reward model (judge.json kind 'reward')" in err
    assert f"use --judge rm:{runs['rm']}" in err
    # judge.json without the model it describes.
    bare = str(tmp_path / "bare_pm")
    _judge_run(bare, world, "pm", GOOD_VOCAB)
    os.remove(os.path.join(bare, checkpointing.MODEL_CONFIG_FILE))
    err = _refused(capsys, lambda: _evaluate(tmp_path, world, runs, judge=f"pm:{bare}"))
    assert f"--judge pm:{bare}: no {os.path.join(bare, checkpointing.MODEL_CONFIG_FILE)}" in err
    assert not no_sampling


def test_a_policy_directory_must_be_a_finished_run(tmp_path, world, runs, no_sampling, capsys):
    empty = str(tmp_path / "empty_run")
    os.makedirs(empty)
    err = _refused(capsys, lambda: _evaluate(tmp_path, world, {**runs, "x": empty}, policies=("sft", "x")))
    assert f"--policy x={empty}: no {os.path.join(empty, checkpointing.MODEL_CONFIG_FILE)}" in err
    assert "no checkpoint" in err  # every problem of the directory at once
    missing = str(tmp_path / "no_such_run")
    err = _refused(capsys, lambda: _evaluate(tmp_path, world, {**runs, "x": missing}, policies=("sft", "x")))
    assert f"--policy x={missing}: no directory {missing}" in err
    config_only = str(tmp_path / "config_only")
    checkpointing.save_model_config(config_only, testing.tiny_t5_config(vocab_size=GOOD_VOCAB))
    err = _refused(capsys, lambda: _evaluate(tmp_path, world, {**runs, "x": config_only}, policies=("sft", "x")))
    assert f"--policy x={config_only}: no checkpoint" in err
    assert f"no {os.path.join(config_only, checkpointing.MODEL_CONFIG_FILE)}" not in err
    assert not no_sampling


@pytest.mark.parametrize("vocab_size,why", [
    (32, "the prompts' token ids would index past its embedding table"),
    (32128, "it was trained on another vocabulary"),
])
def test_a_policy_on_another_vocabulary_is_refused_before_sampling(vocab_size, why, tmp_path, world, runs, pieces,
                                                                   no_sampling, capsys):
    other = _finished_run(str(tmp_path / f"vocab{vocab_size}"), vocab_size)
    err = _refused(capsys, lambda: _evaluate(tmp_path, world, {**runs, "other": other}, policies=("sft", "other")))
    assert f"--policy other={other}: vocab_size {vocab_size}" in err
    assert f"the world's vocabulary has {pieces} pieces" in err and why in err
    assert runs["sft"] not in err  # the good policy is not blamed
    assert not no_sampling


def test_a_learned_judge_whose_vocabulary_exceeds_its_model_is_refused(tmp_path, world, runs, pieces, no_sampling,
                                                                       capsys):
    # Judges re-tokenise the decoded texts with their own vocabulary copy (judge.json),
    # so what must agree is that copy and the judge's own embedding table.
    small = _judge_run(str(tmp_path / "small_pm"), world, "pm", 256)
    err = _refused(capsys, lambda: _evaluate(tmp_path, world, runs, judge=f"pm:{small}"))
    vocab_file = os.path.join(small, pairwise.VOCAB_FILE)
    assert f"--judge pm:{small}: vocab_size 256" in err
    assert f"its vocabulary {vocab_file} has {pieces} pieces" in err
    assert not no_sampling


@pytest.mark.parametrize("flag,expected", [
    ("--num_prompts=0", "--num_prompts 0: must be at least 1"),
    ("--max_decode_len=0", "--max_decode_len 0: must be at least 1"),
    ("--temperature=0", "--temperature 0.0: must be > 0"),
    ("--temperature=nan", "--temperature nan: must be > 0"),
    ("--tau=-0.1", "--tau -0.1: must be >= 0"),
])
def test_numeric_arguments_are_checked_before_sampling(flag, expected, tmp_path, world, runs, no_sampling, capsys):
    err = _refused(capsys, lambda: _evaluate(tmp_path, world, runs, flag))
    assert expected in err
    assert not no_sampling


def test_policy_names_must_be_distinct(tmp_path, world, runs, no_sampling, capsys):
    err = _refused(capsys, lambda: run_evaluate.main(
        [f"--policy=a={runs['sft']}", f"--policy=a={runs['nash']}", f"--world_dir={world}",
         f"--out={tmp_path / 'eval'}"]))
    assert "--policy a: named twice" in err
    assert not no_sampling


def test_the_world_directory_and_splits_are_checked_before_sampling(tmp_path, world, runs, no_sampling, capsys):
    not_a_world = tmp_path / "not_a_world"
    not_a_world.mkdir()
    (not_a_world / "notes.txt").write_text("hello")
    err = _refused(capsys, lambda: run_evaluate.main(
        [f"--policy=sft={runs['sft']}", f"--world_dir={not_a_world}", f"--out={tmp_path / 'eval'}"]))
    assert f"--world_dir {not_a_world}: no {not_a_world / 'world.json'}" in err
    # A missing directory is not silently filled with a freshly generated default world.
    missing = tmp_path / "no_world"
    err = _refused(capsys, lambda: _evaluate(tmp_path, str(missing), runs))
    assert f"--world_dir {missing}: no directory {missing}" in err and not missing.exists()
    err = _refused(capsys, lambda: _evaluate(tmp_path, world, runs, "--split=valid+heldout"))
    assert f"--split 'heldout': no {generator.split_path(world, 'prompts', 'heldout')}" in err
    assert not no_sampling


def test_valid_arguments_reach_sampling_with_the_judge_loaded_first(tmp_path, world, runs, monkeypatch):
    """The checks do not refuse a correct evaluation; the judge's model is loaded before
    sampling, so its failures also come before the long part."""
    from nlhf_jax import judges

    loaded, sampled = [], []
    real_load = judges.load_judge
    monkeypatch.setattr(judges, "load_judge", lambda d, **kw: loaded.append(d) or real_load(d, **kw))

    class Stop(Exception):
        pass

    def sample(policies, prompts, vocabulary, cfg, seed=0, reference_dir=None):
        sampled.append((list(policies), prompts.shape, cfg, reference_dir))
        raise Stop

    monkeypatch.setattr(sampling, "sample_policies", sample)
    # vocab_size 512 = the size the world asked SentencePiece for: a legitimate choice.
    wide = _finished_run(str(tmp_path / "wide"), 512)
    with pytest.raises(Stop):
        _evaluate(tmp_path, world, {**runs, "wide": wide}, policies=("sft", "wide"), judge=f"ptau:{runs['pm']}")
    assert loaded == [runs["pm"]]
    (policies, shape, cfg, ref), = sampled
    assert policies == [("sft", runs["sft"]), ("wide", wide)] and ref == runs["sft"]
    assert shape[0] == 4 and cfg.max_decode_len == 4
    assert json.load(open(os.path.join(world, "world.json")))["fingerprint"] == TINY_WORLD.fingerprint()


def test_judge_diagnostics_arguments_are_checked_before_sampling(tmp_path, world, runs, no_sampling, capsys):
    """--judge_diagnostics PM_DIR[,RM_DIR] names its argument and the directory at fault."""
    missing = str(tmp_path / "no_such_pm")
    err = _refused(capsys, lambda: _evaluate(tmp_path, world, runs, f"--judge_diagnostics={missing}"))
    assert f"--judge_diagnostics {missing} (PM_DIR): no directory {missing}" in err
    spec = f"{runs['pm']},{missing}"
    err = _refused(capsys, lambda: _evaluate(tmp_path, world, runs, f"--judge_diagnostics={spec}"))
    assert f"--judge_diagnostics {spec} (RM_DIR): no directory {missing}" in err
    assert "(PM_DIR)" not in err  # the good PM is not blamed
    # The two swapped: each is the other kind of model.
    spec = f"{runs['rm']},{runs['pm']}"
    err = _refused(capsys, lambda: _evaluate(tmp_path, world, runs, f"--judge_diagnostics={spec}"))
    assert f"--judge_diagnostics {spec} (PM_DIR): a reward model (judge.json kind 'reward')" in err
    assert f"--judge_diagnostics {spec} (RM_DIR): a preference model" in err
    for spec in (f"{runs['pm']},", f",{runs['rm']}", f"{runs['pm']},{runs['rm']},{runs['rm']}"):
        err = _refused(capsys, lambda: _evaluate(tmp_path, world, runs, f"--judge_diagnostics={spec}"))
        assert f"--judge_diagnostics {spec}: expected PM_DIR or PM_DIR,RM_DIR" in err
    for flag, expected in (("--tau_nash=0", "--tau_nash 0.0: must be > 0"),
                           ("--tau_rlhf=inf", "--tau_rlhf inf: must be > 0")):
        assert expected in _refused(capsys, lambda: _evaluate(tmp_path, world, runs, flag))
    assert not no_sampling


def test_judge_diagnostics_models_are_loaded_before_sampling(tmp_path, world, runs, monkeypatch):
    from nlhf_jax import judges

    loaded = []
    monkeypatch.setattr(judges, "load_judge", lambda d, **kw: loaded.append(d) or object())

    class Stop(Exception):
        pass

    def sample(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(sampling, "sample_policies", sample)
    with pytest.raises(Stop):
        _evaluate(tmp_path, world, runs, f"--judge_diagnostics={runs['pm']},{runs['rm']}")
    assert loaded == [runs["pm"], runs["rm"]]
