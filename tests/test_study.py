"""The Optuna journal file a search keeps: written without an fsync per line, still Optuna's format.

Real Optuna studies in real files, written by real processes; Optuna's own backend reads them back.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from toolkit.search.study import study_storage

_WRITER = textwrap.dedent("""
    import sys
    import optuna
    from toolkit.search.study import study_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    path, tag, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    study = optuna.load_study(study_name="shared", storage=study_storage(path))
    for i in range(n):
        trial = study.ask()
        trial.suggest_int("n_clusters", 2, 8)
        trial.set_user_attr("writer", tag)
        study.tell(trial, float(i))
""")


def test_two_drivers_append_to_one_journal_that_optuna_reads(tmp_path):
    """Two processes write one study at once through the toolkit's backend (its lock is Optuna's
    lock file); Optuna's stock file backend then reads every trial, complete and intact."""
    path = str(tmp_path / "optuna.log")
    optuna.create_study(study_name="shared", storage=study_storage(path), direction="maximize")
    writers = [subprocess.Popen([sys.executable, "-c", _WRITER, path, tag, "60"]) for tag in ("a", "b")]
    try:
        assert [w.wait(timeout=120) for w in writers] == [0, 0]
    finally:
        for w in writers:
            w.kill()
    stock = optuna.load_study(study_name="shared", storage=JournalStorage(JournalFileBackend(path)))
    trials = stock.get_trials(deepcopy=False)
    assert len(trials) == 120
    assert sorted(t.number for t in trials) == list(range(120))
    assert {t.state for t in trials} == {TrialState.COMPLETE}
    by_writer = {tag: sorted(t.value for t in trials if t.user_attrs["writer"] == tag) for tag in ("a", "b")}
    assert by_writer == {"a": [float(i) for i in range(60)], "b": [float(i) for i in range(60)]}
    assert all(2 <= t.params["n_clusters"] <= 8 for t in trials)


def test_journal_fsync_switch(tmp_path, monkeypatch):
    """By default the journal appends without fsync; KMEANS_LIFECYCLE_JOURNAL_FSYNC=1 gives
    Optuna's own backend (fsync per line) on the same file."""
    path = str(tmp_path / "optuna.log")
    monkeypatch.delenv("KMEANS_LIFECYCLE_JOURNAL_FSYNC", raising=False)
    fast = study_storage(path)._backend
    assert isinstance(fast, JournalFileBackend) and type(fast) is not JournalFileBackend
    monkeypatch.setenv("KMEANS_LIFECYCLE_JOURNAL_FSYNC", "1")
    assert type(study_storage(path)._backend) is JournalFileBackend
    # Either way the same file: a study created by one is loaded by the other.
    optuna.create_study(study_name="s", storage=study_storage(path)).enqueue_trial({"x": 1})
    monkeypatch.delenv("KMEANS_LIFECYCLE_JOURNAL_FSYNC")
    assert len(optuna.load_study(study_name="s", storage=study_storage(path)).trials) == 1
