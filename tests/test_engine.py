"""vae.learn.engine: the training loop on real data (reproducible, resumable, loud about NaN), and
stacked training of a β sweep (the same numbers as one run at a time, and the same files)."""

import json

import pytest
import torch

from vae.execution.checkpoint import load_run_checkpoint, model_from_checkpoint
from vae.execution.states import RunState
from vae.execution.worker import JobControl, run_job
from vae.learn.config import RunConfig, can_train_together
from vae.learn.engine import (
    NonFiniteLossError,
    TrainCallbacks,
    bernoulli_draw,
    train,
    train_models,
)

BETAS = (0.25, 1.0, 4.0)
STEPS = 20  # digits has 4,000 training images: batch 200 makes one epoch 20 steps


def with_betas(config: RunConfig, betas=BETAS) -> list[RunConfig]:
    return [RunConfig.from_dict({**config.to_dict(), "beta": b}) for b in betas]


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-12))


class Recorder(TrainCallbacks):
    """Collects each model's metrics; stops everything after `stop_after` steps; drops models."""

    def __init__(self, stop_after=None, drop=None):
        self.metrics: dict[int, list[dict]] = {}
        self.steps, self.stop_after, self.drop = 0, stop_after, drop or {}

    def on_epoch(self, index, metrics, state):
        self.metrics.setdefault(index, []).append(metrics)

    def stop_all(self):
        self.steps += 1
        return self.stop_after is not None and self.steps > self.stop_after

    def to_drop(self):
        return {i for i, step in self.drop.items() if self.steps >= step}


def train_together(configs, callbacks=None, **kwargs):
    recorder = callbacks or Recorder()
    return train_models(configs, callbacks=recorder, **kwargs), recorder


class Control(JobControl):
    """A JobControl whose whole-job stop is a test's predicate."""

    def __init__(self, store, stop=lambda: False):
        super().__init__(store)
        self.predicate = stop

    @property
    def stop_requested(self):
        return self.predicate()

    @stop_requested.setter
    def stop_requested(self, value):
        pass


def run_alone(store, run_id, stop=lambda: False):
    return run_job(store, [run_id], Control(store, stop))[run_id]


@pytest.mark.parametrize(
    "extra",
    [
        {},  # Bernoulli, dynamic binarisation, D + βR
        {"dynamic_binarization": False},
        {"likelihood": "gaussian", "learn_variance": True},
        {"objective": "warmup", "warmup_steps": 10},
        {"objective": "free_bits", "free_bits": 0.2},
        {"architecture": "conv", "hidden_dims": [32]},  # stacked through torch.func
    ],
)
def test_each_model_matches_training_it_alone(tiny_config, extra):
    """Losses and parameters after 20 steps agree with a stack of one to 1e-4 relative."""
    base = RunConfig.from_dict({**tiny_config.to_dict(), "batch_size": 200, "hidden_dims": [32, 16], **extra})  # fmt: skip
    configs = with_betas(base)
    result, recorder = train_together(configs)
    together = recorder.metrics
    for i, config in enumerate(configs):
        alone = []
        state = train(config, on_epoch=lambda m, s, rows=alone: rows.append(m))
        assert state.step == result.states[i].step == STEPS
        a, b = together[i][-1], alone[-1]
        assert a.keys() == b.keys()
        for key in ("train_loss", "train_distortion", "train_rate", "elbo", "rate", "distortion"):
            assert a[key] == pytest.approx(b[key], rel=1e-4), (config.beta, key)
        assert a["kl_per_dim"] == pytest.approx(b["kl_per_dim"], rel=1e-4, abs=1e-6)
        assert a["kl_weight"] == b["kl_weight"]
        mine, theirs = result.states[i].model.state_dict(), state.model.state_dict()
        assert mine.keys() == theirs.keys()
        for name in theirs:
            assert rel_diff(mine[name], theirs[name]) < 1e-4, (config.beta, name)
        # The Adam state a checkpoint carries is the lone run's too (so the run can resume alone).
        opt_a, opt_b = result.states[i].optimizer.state_dict(), state.optimizer.state_dict()
        assert opt_a["param_groups"] == opt_b["param_groups"]
        for index, entry in opt_b["state"].items():
            assert float(opt_a["state"][index]["step"]) == float(entry["step"]) == STEPS
            for key in ("exp_avg", "exp_avg_sq"):
                assert rel_diff(opt_a["state"][index][key], entry[key]) < 1e-4
        assert torch.equal(result.states[i].generator.get_state(), state.generator.get_state())
    # different βs really trained different models
    assert together[0][-1]["train_rate"] != together[2][-1]["train_rate"]


def test_can_train_together(tiny_config):
    configs = with_betas(tiny_config)
    assert can_train_together(configs)
    named = [RunConfig.from_dict({**c.to_dict(), "name": f"run {i}", "threads": i}) for i, c in enumerate(configs)]  # fmt: skip
    assert can_train_together(named)  # labels and thread counts do not change the numbers
    assert not can_train_together(configs[:1])  # nothing to batch
    assert not can_train_together([])
    for field, value in [
        ("seed", 1), ("latent_dim", 5), ("hidden_dims", [32]), ("lr", 1e-4), ("epochs", 2),
        ("batch_size", 128), ("likelihood", "gaussian"), ("objective", "free_bits"),
        ("dynamic_binarization", False), ("dataset", "shapes32"),
    ]:  # fmt: skip
        other = RunConfig.from_dict({**configs[1].to_dict(), field: value})
        assert not can_train_together([configs[0], other]), field
    conv = {"architecture": "conv", "hidden_dims": [32]}
    assert can_train_together(with_betas(RunConfig.from_dict({**tiny_config.to_dict(), **conv})))
    assert not can_train_together(
        [configs[0], RunConfig.from_dict({**configs[1].to_dict(), **conv})]
    )
    bad = RunConfig.from_dict({**configs[1].to_dict(), "beta": -1.0})
    assert not can_train_together([configs[0], bad])


def test_nan_fails_like_a_lone_run(tiny_config):
    """A NaN pixel makes every model's loss NaN: each fails at the step a lone run reports."""
    from dataclasses import replace

    from vae.learn.data import load_dataset

    clean = load_dataset("digits")
    x = clean.train.x.clone()
    x[123, 0, 14, 14] = float("nan")
    corrupt = replace(clean, train=replace(clean.train, x=x))
    configs = with_betas(RunConfig.from_dict({**tiny_config.to_dict(), "likelihood": "gaussian"}))
    result, recorder = train_together(configs, dataset=corrupt)
    with pytest.raises(NonFiniteLossError) as alone:
        train(configs[0], dataset=corrupt)
    assert recorder.metrics == {}
    for error in result.errors:
        assert isinstance(error, NonFiniteLossError)
        assert error.step == alone.value.step and error.epoch == alone.value.epoch


def _read_lines(store, run_id):
    return [
        json.loads(line) for line in store.path(run_id, "metrics.jsonl").read_text().splitlines()
    ]


def test_run_job_writes_each_runs_files(store, tiny_config):
    config = RunConfig.from_dict({**tiny_config.to_dict(), "epochs": 2})
    run_ids = [store.create_run(c, group="sweep-test") for c in with_betas(config)]
    reference = store.create_run(with_betas(config)[1])  # β = 1 trained alone, for comparison
    assert run_alone(store, reference) == RunState.FINISHED

    outcomes = run_job(store, run_ids, Control(store), threads=1)
    assert list(outcomes.values()) == [RunState.FINISHED] * 3
    expected = _read_lines(store, reference)
    for run_id, beta in zip(run_ids, BETAS, strict=True):
        status = store.read_status(run_id)
        assert status["state"] == "finished" and status["epoch"] == 2
        assert status["group"] == "sweep-test" and "job" not in status
        lines = _read_lines(store, run_id)
        assert [m["epoch"] for m in lines] == [1, 2]
        assert [m.keys() for m in lines] == [m.keys() for m in expected]
        for name in ("model.pt", "final.pt"):
            checkpoint = torch.load(store.path(run_id, name), weights_only=True, map_location="cpu")
            assert checkpoint["epoch"] == 2 and checkpoint["config"]["beta"] == beta
            model = model_from_checkpoint(checkpoint)
            assert sum(p.numel() for p in model.parameters()) > 0
        assert "optimizer_state" in torch.load(store.path(run_id, "model.pt"), weights_only=True)
        assert load_run_checkpoint(store, run_id)["metrics"] == lines[-1]
        assert store.read_eval(run_id) is not None
    grouped = _read_lines(store, run_ids[1])
    for key in ("train_loss", "elbo", "rate"):
        assert grouped[-1][key] == pytest.approx(expected[-1][key], rel=1e-4)


def test_a_member_resumed_alone_continues_bit_exactly(store, tiny_config):
    """A sweep member cancelled after epoch 1 resumes alone: epoch 2 equals an unbroken run's."""
    config = RunConfig.from_dict({**tiny_config.to_dict(), "epochs": 2})
    run_ids = [store.create_run(c, group="g") for c in with_betas(config)]
    first = run_ids[0]
    assert run_alone(store, first, lambda: bool(store.read_metrics(first))) == "cancelled"
    assert store.read_status(first)["reason"] == "cancelled after epoch 1"
    store.update_status(first, RunState.QUEUED, "resumed")  # as JobManager.resume does
    outcomes = run_job(store, run_ids, Control(store), threads=1)
    assert list(outcomes.values()) == [RunState.FINISHED] * 3
    unbroken = store.create_run(with_betas(config)[0])
    assert run_alone(store, unbroken) == RunState.FINISHED
    for run_id in run_ids:
        assert [m["epoch"] for m in store.read_metrics(run_id)] == [1, 2]
        assert store.read_status(run_id)["state"] == "finished"
    resumed, straight = store.read_metrics(first)[-1], store.read_metrics(unbroken)[-1]
    for key in ("train_loss", "rate", "distortion", "kl_per_dim"):
        assert resumed[key] == straight[key], key


def test_stopping_the_job_cancels_every_member_at_its_last_epoch(store, tiny_config):
    config = RunConfig.from_dict({**tiny_config.to_dict(), "epochs": 3})
    run_ids = [store.create_run(c) for c in with_betas(config)]
    # stop once the first epoch's files are written: every run is cancelled after epoch 1
    control = Control(store, stop=lambda: bool(store.read_metrics(run_ids[-1])))
    assert list(run_job(store, run_ids, control).values()) == [RunState.CANCELLED] * 3
    for run_id in run_ids:
        status = store.read_status(run_id)
        assert status["state"] == "cancelled" and "epoch 1" in status["reason"]
        assert load_run_checkpoint(store, run_id, final=False)["epoch"] == 1
        store.update_status(run_id, RunState.QUEUED, "resumed")
    # the three stand at the same place, so they resume as one stack again
    stacks = []
    real = train_models
    import vae.execution.worker as worker

    def spy(configs, **kwargs):
        stacks.append(len(configs))
        return real(configs, **kwargs)

    worker.train_models, saved = spy, worker.train_models
    try:
        outcomes = run_job(store, run_ids, Control(store))
    finally:
        worker.train_models = saved
    assert stacks == [3] and list(outcomes.values()) == [RunState.FINISHED] * 3
    assert [m["epoch"] for m in store.read_metrics(run_ids[1])] == [1, 2, 3]


def test_cancelling_one_member_stops_only_it(store, tiny_config):
    """A cancel note for one run of a stack: it stops at its last epoch; the others finish."""
    config = RunConfig.from_dict({**tiny_config.to_dict(), "epochs": 3})
    run_ids = [store.create_run(c) for c in with_betas(config)]
    victim = run_ids[1]

    class CancelAfterFirstEpoch(Control):
        asked = False

        def cancelled(self, ids):
            if store.read_metrics(victim) and not self.asked:
                self.asked = True
                store.request_cancel(victim)  # as JobManager.cancel does
                self._look_now = True
            return super().cancelled(ids)

    outcomes = run_job(store, run_ids, CancelAfterFirstEpoch(store))
    assert outcomes == {
        run_ids[0]: RunState.FINISHED,
        victim: RunState.CANCELLED,
        run_ids[2]: RunState.FINISHED,
    }
    assert store.read_status(victim)["reason"] == "cancelled after epoch 1"
    assert not store.cancel_requested(victim)  # the note is consumed
    assert [m["epoch"] for m in store.read_metrics(victim)] == [1]
    for other in (run_ids[0], run_ids[2]):
        assert [m["epoch"] for m in store.read_metrics(other)] == [1, 2, 3]
    # the others computed what they would have computed with the victim in the stack
    reference = store.create_run(with_betas(config)[2])
    assert run_alone(store, reference) == RunState.FINISHED
    assert store.read_metrics(run_ids[2])[-1]["train_loss"] == pytest.approx(
        store.read_metrics(reference)[-1]["train_loss"], rel=1e-4
    )
    # and the cancelled run resumes alone to its end
    store.update_status(victim, RunState.QUEUED, "resumed")
    assert run_alone(store, victim) == RunState.FINISHED
    assert [m["epoch"] for m in store.read_metrics(victim)] == [1, 2, 3]


def test_a_member_whose_files_cannot_be_written_fails_alone_and_stays_failed(store, tiny_config):
    """The epoch's files are written behind the step loop: a run whose write fails (its
    metrics.jsonl turned into a folder after epoch 1) fails with the store's words, no queued
    write lands after its final status, and the others train to their end."""
    from vae.execution.lease import is_held

    config = RunConfig.from_dict({**tiny_config.to_dict(), "epochs": 3})
    run_ids = [store.create_run(c) for c in with_betas(config)]
    victim = run_ids[1]

    def break_victim(run_id, metrics):
        if run_id == victim and metrics["epoch"] == 1:
            path = store.path(victim, "metrics.jsonl")
            path.unlink(missing_ok=True)
            path.mkdir()

    outcomes = run_job(store, run_ids, Control(store), threads=1, progress=break_victim)
    assert outcomes == {
        run_ids[0]: RunState.FINISHED,
        victim: RunState.FAILED,
        run_ids[2]: RunState.FINISHED,
    }
    status = store.read_status(victim)
    assert status["state"] == "failed" and "could not save metrics" in status["reason"], status
    assert not is_held(store.run_dir(victim))
    for other in (run_ids[0], run_ids[2]):
        assert [m["epoch"] for m in store.read_metrics(other)] == [1, 2, 3]
        assert store.read_status(other)["state"] == "finished"


def test_compatible_runs_train_as_one_stack_others_one_by_one(store, tiny_config, monkeypatch):
    import vae.execution.worker as worker

    stacks = []
    real = worker.train_models
    monkeypatch.setattr(worker, "train_models", lambda configs, **k: stacks.append([c.beta for c in configs]) or real(configs, **k))  # fmt: skip
    run_ids = [store.create_run(c) for c in with_betas(tiny_config, (1.0, 2.0))]
    assert worker.main(["--store", str(store.root), "--threads", "1", *run_ids]) == 0
    assert stacks == [[1.0, 2.0]]
    other = RunConfig.from_dict({**tiny_config.to_dict(), "seed": 3})
    mixed = [store.create_run(tiny_config), store.create_run(other)]
    assert worker.main(["--store", str(store.root), "--threads", "1", *mixed]) == 0
    assert stacks == [[1.0, 2.0], [1.0], [1.0]]  # different seeds: one by one
    assert all(store.read_status(r)["state"] == "finished" for r in run_ids + mixed)


def test_fast_bernoulli_draw_is_torch_bernoulli_bit_for_bit():
    """vae.learn.engine draws binarised pixels with rand < p: the same pixels and generator state."""
    from vae.learn.data import binarize, load_dataset

    x = load_dataset("digits").train.x[:500]
    for seed in (0, 7):
        g1, g2 = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        assert torch.equal(bernoulli_draw(x, g1), binarize(x, g2))
        assert torch.equal(g1.get_state(), g2.get_state())
    bad = x.clone()
    bad[3, 0, 5, 5] = float("nan")
    with pytest.raises(RuntimeError):  # as torch.bernoulli: probabilities must be in [0, 1]
        bernoulli_draw(bad, torch.Generator().manual_seed(0))


def test_stopping_mid_epoch_leaves_each_model_where_a_lone_run_would_be(tiny_config):
    configs = with_betas(tiny_config, (0.5, 2.0))

    def after(steps):
        calls = []
        return lambda: len(calls) >= steps or calls.append(1)

    result, _ = train_together(configs, callbacks=Recorder(stop_after=5))
    assert result.stopped
    for i, config in enumerate(configs):
        alone = train(config, should_stop=after(5))
        assert alone.stopped and alone.step == result.states[i].step == 6
        assert result.states[i].epoch == alone.epoch == 0
        mine, theirs = result.states[i].model.state_dict(), alone.model.state_dict()
        for name in theirs:
            assert rel_diff(mine[name], theirs[name]) < 1e-4, name


def test_a_model_that_turns_nan_fails_alone(tiny_config, monkeypatch):
    """NaN in one model's loss (here: its β) stops that run only; the others are unaffected."""
    import vae.learn.engine
    from vae.learn.objective import BetaVAE

    real = vae.learn.engine.make_objective

    def poisoned(config, beta=None):
        if isinstance(beta, torch.Tensor):  # the stacked objective: the β = 1 model gets NaN
            return BetaVAE(torch.where(beta == 1.0, float("nan"), beta))
        return real(config, beta)

    monkeypatch.setattr(vae.learn.engine, "make_objective", poisoned)
    configs = with_betas(tiny_config)
    result, recorder = train_together(configs)
    epochs = sorted(recorder.metrics)
    assert isinstance(result.errors[1], NonFiniteLossError) and result.errors[1].step == 1
    assert result.errors[0] is None and result.errors[2] is None and epochs == [0, 2]
    for i in (0, 2):
        alone = train(configs[i])
        mine, theirs = result.states[i].model.state_dict(), alone.model.state_dict()
        for name in theirs:
            assert rel_diff(mine[name], theirs[name]) < 1e-4, name


def test_metrics_per_epoch_are_complete(tiny_config):
    config = RunConfig.from_dict({**tiny_config.to_dict(), "epochs": 2})
    rows, state = collect(config)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert state.epoch == 2 and state.step == 2 * -(-4000 // 256)
    m = rows[-1]
    assert len(m["kl_per_dim"]) == len(m["posterior_var"]) == len(m["mean_cov"]) == 4
    assert m["rate"] == pytest.approx(sum(m["kl_per_dim"]))
    assert m["elbo"] == pytest.approx(-(m["rate"] + m["distortion"]))
    assert 0 <= m["active_units"] <= 4
    assert rows[1]["train_loss"] < rows[0]["train_loss"]  # it learns


def test_same_seed_same_numbers_different_seed_different(tiny_config):
    a, _ = collect(tiny_config)
    b, _ = collect(tiny_config)
    c, _ = collect(RunConfig.from_dict({**tiny_config.to_dict(), "seed": 1}))
    keys = ("train_loss", "rate", "distortion", "kl_per_dim")
    assert [a[0][k] for k in keys] == [b[0][k] for k in keys]
    assert a[0]["train_loss"] != c[0]["train_loss"]


def test_resume_continues_exactly(tiny_config):
    config = RunConfig.from_dict({**tiny_config.to_dict(), "epochs": 2})
    straight, _ = collect(config)
    first = RunConfig.from_dict({**tiny_config.to_dict(), "epochs": 1})
    _, state = collect(first)
    resumed, _ = collect(config, state=state)
    assert resumed[0]["epoch"] == 2
    assert resumed[0]["train_loss"] == straight[1]["train_loss"]
    assert resumed[0]["kl_per_dim"] == straight[1]["kl_per_dim"]


def test_nan_loss_stops_with_step_and_settings(tiny_config):
    """A corrupt pixel (NaN in the data) makes the loss NaN: the run stops, nothing is saved."""
    from dataclasses import replace

    from vae.learn.data import load_dataset

    clean = load_dataset("digits")
    x = clean.train.x.clone()
    x[123, 0, 14, 14] = float("nan")
    corrupt = replace(clean, train=replace(clean.train, x=x))
    config = RunConfig.from_dict({**tiny_config.to_dict(), "likelihood": "gaussian"})
    saved = []
    with pytest.raises(NonFiniteLossError) as info:
        train(config, dataset=corrupt, on_epoch=lambda m, s: saved.append(m))
    assert "lr=0.001" in str(info.value) and "beta=1" in str(info.value)
    assert 1 <= info.value.step <= 16  # somewhere in the first epoch, where image 123 came up
    assert saved == []  # the epoch with a NaN never reached on_epoch (nothing saved)


def test_should_stop_ends_early_without_an_epoch(tiny_config):
    calls = []
    state = train(tiny_config, should_stop=lambda: len(calls) > 3 or calls.append(1))
    assert state.stopped and state.epoch == 0 and state.step == 5


def test_gaussian_and_objectives_run(tiny_config):
    for extra in (
        {"likelihood": "gaussian", "learn_variance": True},
        {"objective": "capacity", "capacity_steps": 10},
        {"objective": "warmup", "warmup_steps": 10},
        {"objective": "free_bits", "free_bits": 0.2},
        {"architecture": "conv", "hidden_dims": [32], "batch_size": 512},
    ):
        rows, _ = collect(RunConfig.from_dict({**tiny_config.to_dict(), **extra}))
        assert torch.isfinite(torch.tensor(rows[0]["elbo"])), extra
    assert (
        "capacity"
        in collect(RunConfig.from_dict({**tiny_config.to_dict(), "objective": "capacity"}))[0][0]
    )


def collect(config, **kwargs):
    rows = []
    state = train(config, on_epoch=lambda m, s: rows.append(m), **kwargs)
    return rows, state
