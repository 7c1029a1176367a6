"""vae.present.views: the job labels and progress text of the Train page (and the Tradeoff page
following only the runs it shows)."""

from __future__ import annotations

import time

from helpers import open_app, train_run

from vae.execution.listing import RunRecord
from vae.execution.local import LocalJob
from vae.learn.config import RunConfig
from vae.present.tradeoff import comparable_key, runs_of_set
from vae.present.views import (
    active_jobs,
    grouping_text,
    job_members,
    job_speed,
    progress,
    slots_text,
)


def test_stacked_group_is_one_job_with_speed_added(store, tiny_config):
    ids = [store.create_run(tiny_config) for _ in range(4)]
    for run_id, speed in zip(ids, (1000.0, 2000.0, 3000.0, 5000.0), strict=True):
        store.update_status(run_id, "running")
        line = {"epoch": 1, "images_per_s": speed, "rate": 1.0, "distortion": 2.0, "elbo": -3.0}
        line |= {"active_units": 1, "kl_per_dim": [1.0] * 4, "posterior_var": [0.5] * 4}
        store.append_metrics(run_id, {**line, "mean_cov": [0.1] * 4})  # latent_dim 4
    # JobManager.jobs: run id -> its job, one job object for all runs of a worker.
    group, single = LocalJob(store, ids[:3], 1, None), LocalJob(store, ids[3:], 2, None)
    jobs = {ids[0]: group, ids[1]: group, ids[2]: group, ids[3]: single}
    assert job_members(jobs) == [ids[:3], ids[3:]]
    groups = active_jobs(jobs, store.list_runs())
    assert [[r.run_id for r in g] for g in groups] == [ids[:3], ids[3:]]
    assert job_speed(groups[0]) == 6000.0
    assert slots_text(2, 2, 4, 1) == (
        "2 training slots: 2 in use by 2 jobs training 4 runs "
        "(a stacked sweep group is one job) · 1 queued"
    )
    assert (
        grouping_text(jobs, ids[:3], 2) == "3 runs: 1 job of 3 stacked runs (2 slots, one job each)"
    )


def test_a_running_run_outside_any_job_counts_as_its_own(store, tiny_config):
    run_id = store.create_run(tiny_config)
    store.update_status(run_id, "running", "starting")
    assert [[r.run_id for r in g] for g in active_jobs({}, store.list_runs())] == [[run_id]]
    assert grouping_text({}, [run_id], 1) == "1 run: none started yet (1 slot, one job each)"


def test_tradeoff_follows_only_the_runs_of_the_chosen_settings(monkeypatch, store, tiny_config):
    """Training of unrelated settings must not redraw the chart someone is clicking in."""
    small = train_run(store, store.create_run(tiny_config)) and store.list_runs()[0].run_id
    wide = RunConfig.from_dict({**tiny_config.to_dict(), "latent_dim": 6})
    finished_wide = store.create_run(wide)
    train_run(store, finished_wide)
    queued_small = store.create_run(RunConfig.from_dict({**tiny_config.to_dict(), "beta": 2.0}))
    records = store.list_runs()
    assert runs_of_set(records, comparable_key(store.get(small))) == [small, queued_small]
    assert runs_of_set(records, comparable_key(store.get(finished_wide))) == [finished_wide]

    at = open_app(monkeypatch, store.root, "pages/tradeoff.py")
    assert not at.exception

    def plotted() -> list[str]:
        return list(at.dataframe[-1].value["run"])  # the runs table under the chart

    assert plotted() == [finished_wide]  # the newest set comes first
    at.selectbox(key="tradeoff_set").select(comparable_key(store.get(small))).run()
    assert plotted() == [small]  # the queued run joins at its first epoch
    at.selectbox(key="tradeoff_set").select("every run").run()
    assert sorted(plotted()) == sorted([small, finished_wide])
    assert not at.exception


def test_progress_says_stalled_and_eta_from_the_record_alone(tmp_path, tiny_config):
    """Everything the text needs is in the record the listing made: no file is looked at."""
    tiny_config.epochs = 10
    last = {"epoch": 4, "images_per_s": 2000.0, "seconds": 3.0}
    record = RunRecord(
        "20260101-000000-abcdef", tmp_path / "nowhere", tiny_config, {"state": "running"},
        last_metrics=last, recent_seconds=(1.0, 2.0, 3.0), stalled_since=time.time() - 90,
    )  # fmt: skip
    fraction, text = progress(record)
    assert fraction == 0.4
    assert text.startswith("stalled: no sign of life for 1 min")
    assert "ETA 12 s" in text  # the median epoch (2 s) times the 6 epochs left
