"""The Lloyd loop on the workers (actors exchanging partial sums, issue 16): the same fit as the
driver's loop, bit for bit, and a lost worker fails it promptly as an infrastructure error."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

import dask.array as da
import numpy as np
import pytest
from distributed import Client, LocalCluster

from toolkit.cluster import scatter_rows
from toolkit.faults import is_infrastructure_error
from toolkit.kmeans_dask import DaskKMeans, lloyd_fit
from toolkit.kmeans_dask.engines import make_engine
from toolkit.kmeans_dask.lloyd import moments, origin


def _data(n: int, d: int, seed: int) -> np.ndarray:
    """Overlapping Gaussian data away from the origin (Lloyd needs tens of iterations)."""
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, d)) * rng.uniform(0.5, 2.0, size=d) + 3.0).astype(np.float32)


def _init(X: np.ndarray, k: int, seed: int) -> np.ndarray:
    return X[np.random.default_rng(seed).choice(len(X), k, replace=False)].copy()


def _persisted(client: Client, X: np.ndarray, blocks: int = 4) -> da.Array:
    return client.persist(da.from_array(X, chunks=(-(-len(X) // blocks), X.shape[1])))


def _fit(Xd: da.Array, C0: np.ndarray, client: Client, **kw) -> DaskKMeans:
    return DaskKMeans(C0.shape[0], init=C0, **kw).fit(Xd, client=client, engine="actors")


@pytest.mark.parametrize(
    ("kw", "inline"),
    [({"tol": 1e-4}, True), ({"tol": 0.0}, True), ({"tol": 0.0, "max_iter": 4}, True),
     ({"tol": 1e-6}, False)],
)
def test_worker_loop_same_fit_as_driver_loop(client, kw, inline):
    """Same centers, inertia and iterations, whichever side runs the loop (and whether the
    kernel runs on the worker's event loop or in a thread)."""
    X = _data(6000, 5, 11)
    C0 = _init(X, 6, 11)
    Xd = _persisted(client, X)
    kernels = "event_loop" if inline else "thread"
    # peers: blocks stay where they are
    on_workers = _fit(Xd, C0, client, lloyd_loop="peers", actor_kernels=kernels, **kw)
    on_driver = _fit(Xd, C0, client, lloyd_loop="driver", actor_kernels=kernels, **kw)
    np.testing.assert_array_equal(on_workers.cluster_centers_, on_driver.cluster_centers_)
    assert on_workers.inertia_ == on_driver.inertia_
    assert on_workers.n_iter_ == on_driver.n_iter_ > 3
    if "max_iter" in kw:
        assert on_workers.n_iter_ == kw["max_iter"]


def test_worker_loop_hands_empty_clusters_to_the_driver(client):
    """An iteration that leaves clusters empty stops the workers' loop; the driver re-seeds
    them (scikit-learn's rule) and the loop resumes: the same fit as the driver's loop."""
    X = _data(3000, 3, 6)
    C0 = _init(X, 6, 6)
    C0[1], C0[4] = 1e3, -1e3
    Xd = _persisted(client, X)
    on_workers = _fit(Xd, C0, client, lloyd_loop="peers")
    on_driver = _fit(Xd, C0, client, lloyd_loop="driver")
    assert on_workers.fit_info_["relocated_clusters"] >= 2
    np.testing.assert_array_equal(on_workers.cluster_centers_, on_driver.cluster_centers_)
    assert on_workers.inertia_ == on_driver.inertia_ and on_workers.n_iter_ == on_driver.n_iter_


def test_worker_loop_on_one_worker(client):
    """All blocks on one worker: no peers, the loop runs there alone."""
    X = _data(4000, 4, 12)
    C0 = _init(X, 5, 12)
    one = _persisted(client, X, blocks=1)
    four = _persisted(client, X, blocks=4)
    a = lloyd_fit(one, C0, tol=0.0, client=client)
    b = lloyd_fit(X, C0, tol=0.0)  # NumPy: the driver's loop, in process
    np.testing.assert_allclose(a[0], b[0], rtol=1e-6, atol=1e-6 * np.abs(X).max())
    assert a[2] == b[2] and a[1] == pytest.approx(b[1], rel=1e-6)
    c = lloyd_fit(four, C0, tol=0.0, client=client)
    assert c[2] == a[2] and c[1] == pytest.approx(a[1], rel=1e-6)


def test_small_data_iterated_on_one_worker(client):
    """Small data: one worker takes copies of every block for the loop and runs it on as many
    threads as there are workers holding blocks: the same fit as the peers' loop."""
    X = _data(5000, 4, 14)
    C0 = _init(X, 5, 14)
    Xd = scatter_rows(X, client, 625)  # 8 blocks, 4 on each worker
    engine, _ = make_engine(Xd, client, "actors")
    assert len(engine.groups) == 2 and engine._home is not None and engine._threads == 2
    engine.close()
    engine, _ = make_engine(Xd, client, "actors", lloyd_loop="peers")
    assert engine._home is None
    engine.close()
    gathered = _fit(Xd, C0, client, tol=0.0)
    spread = _fit(Xd, C0, client, tol=0.0, lloyd_loop="peers")
    np.testing.assert_array_equal(gathered.cluster_centers_, spread.cluster_centers_)
    assert gathered.inertia_ == spread.inertia_ and gathered.n_iter_ == spread.n_iter_


def test_lloyd_loop_and_actor_kernels_choose_the_path(client):
    """The estimator's parameters (not module constants) pick where the loop and kernels run."""
    X = _data(5000, 4, 14)
    Xd = scatter_rows(X, client, 625)  # small data over both workers: "auto" gathers it
    for loop, kernels, home, worker_loop, inline in [
        ("auto", "auto", True, True, True),
        ("gathered", "thread", True, True, False),
        ("peers", "event_loop", False, True, True),
        ("driver", "thread", False, False, False),
    ]:
        engine, _ = make_engine(Xd, client, "actors", lloyd_loop=loop, actor_kernels=kernels)
        try:
            got = (engine._home is not None, engine._worker_loop, engine._inline)
        finally:
            engine.close()
        assert got == (home, worker_loop, inline), (loop, kernels)


def test_a_model_pickled_before_the_engine_parameters_takes_their_defaults():
    import pickle

    km = DaskKMeans(2, init=np.array([[0.0, 0.0], [5.0, 5.0]])).fit(np.array([[0, 0], [5, 5.0]]))
    del km.lloyd_loop, km.actor_kernels  # as saved by an earlier release
    old = pickle.loads(pickle.dumps(km))
    assert old.get_params()["lloyd_loop"] == "auto" and old.get_params()["actor_kernels"] == "auto"
    assert old.predict(np.array([[4.9, 5.0]])).tolist() == [1]


@pytest.fixture()
def own_client():
    """A 2-worker cluster of this test's own (worker processes under nannies): ours to kill."""
    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, memory_limit="1GiB",
        dashboard_address="127.0.0.1:0", silence_logs=logging.CRITICAL,
    )
    try:
        with Client(cluster) as c:
            yield c
    finally:
        cluster.close()


@pytest.mark.slow
def test_lost_worker_fails_the_worker_loop_promptly(own_client):
    """A worker killed while the loop runs: the driver gets an infrastructure error (so the
    search places the data again and retries) instead of a loop that waits forever for the
    lost peer; the surviving worker's loop is stopped, and a fit on data placed again works."""
    client = own_client
    client.wait_for_workers(2, timeout=60)
    X = _data(40_000, 4, 13)
    C0 = _init(X, 5, 13)
    Xd = scatter_rows(X, client, 10_000)  # blocks spread evenly over the two workers
    engine, _ = make_engine(Xd, client, "actors", lloyd_loop="peers")  # one actor per worker
    assert engine.kind == "actors" and len(engine.groups) == 2
    mean, var = moments(engine)
    o = origin(mean, var)
    pids = client.run(os.getpid)
    victim = sorted(pids)[0]

    def kill() -> None:
        time.sleep(1.0)
        os.kill(pids[victim], signal.SIGKILL)

    threading.Thread(target=kill, daemon=True).start()
    start = time.monotonic()
    with pytest.raises(Exception) as info:  # any of Dask's "lost" errors
        engine.iterate(o, C0 - o.astype(np.float64), 10**9, -1.0)  # never converges
    assert time.monotonic() - start < 60
    assert is_infrastructure_error(info.value), repr(info.value)
    engine.close()

    client.wait_for_workers(2, timeout=60)  # the nanny restarts the killed worker
    again = _persisted(client, X)
    got = lloyd_fit(again, C0, tol=0.0, client=client)
    want = lloyd_fit(X, C0, tol=0.0)
    assert got[2] == want[2] and got[1] == pytest.approx(want[1], rel=1e-6)
