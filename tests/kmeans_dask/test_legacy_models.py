"""Models registered before the Dask k-means moved to ``toolkit.kmeans_dask`` still load.

``tests/fixtures/dask_kmeans_v1`` holds a ``DaskKMeans`` saved by the registry's writer while the
class lived in ``toolkit.backends.dask_lloyd`` (see ``tests/fixtures/README.md``).  Its files are
logged here unchanged, with the integrity tags recorded then, and read back through the same
verified loaders as any registered model.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from toolkit.convert import to_sklearn
from toolkit.kmeans_dask import DaskKMeans
from toolkit.registry import flavor, integrity
from toolkit.serving import load_predictor
from toolkit.tracking import tracked_run

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "dask_kmeans_v1"
OLD_KEY = "toolkit.backends.dask_lloyd.DaskKMeans"


@pytest.fixture(scope="module")
def expected() -> dict:
    return json.loads((FIXTURE / "expected.json").read_text())


def _log_fixture(fmt: str, recorded: dict[str, str]) -> integrity.LoggedRef:
    """The fixture's files, byte for byte, as a LoggedModel with the tags recorded at the time."""

    def save(local: str, mlmodel: object) -> dict[str, str]:
        shutil.copytree(FIXTURE / fmt, local)
        return recorded

    with tracked_run("legacy-models", f"dask-kmeans-{fmt}") as run_id:
        return integrity.log_model_dir(run_id, "native_model", save, model_type=flavor.FLAVOR_NAME)


def test_the_old_module_path_still_names_the_class():
    from toolkit.backends import dask_lloyd

    assert dask_lloyd.DaskKMeans is DaskKMeans  # what old pickles look up
    assert flavor.LEGACY_CLASS_KEYS[OLD_KEY] == "toolkit.kmeans_dask.estimator.DaskKMeans"


@pytest.mark.parametrize("fmt", [flavor.KMEANS_NPY, flavor.PICKLE])
def test_model_saved_before_the_move_loads_and_predicts_the_recorded_labels(store, expected, fmt, monkeypatch):
    assert expected["class_key"] == OLD_KEY and expected[fmt][integrity.CLASS_TAG] == OLD_KEY
    monkeypatch.setenv("KMEANS_LIFECYCLE_ALLOW_PICKLE", "1")  # the user's opt-in to (signed) pickles
    ref = _log_fixture(fmt, expected[fmt])
    assert ref.tags[integrity.CLASS_TAG] == OLD_KEY  # the record is not rewritten
    rows = np.asarray(expected["rows"], dtype=np.float32)
    labels = np.asarray(expected["labels"], dtype=np.int32)

    model = flavor.load_model(ref.uri)
    assert type(model) is DaskKMeans
    assert np.any(model._origin != 0)  # the stored origin came back (npy) or was unpickled
    np.testing.assert_array_equal(model.predict(rows), labels)
    # Its twin and the serving path agree with the recorded labels too.
    twin = to_sklearn(model)
    np.testing.assert_array_equal(twin.predict(rows.astype(twin.cluster_centers_.dtype)), labels)
    np.testing.assert_array_equal(load_predictor(ref.uri).predict(rows), labels)


def test_a_legacy_key_does_not_vouch_for_another_class(store, expected):
    """The alias maps the old key to DaskKMeans only: files of another estimator are refused."""
    from toolkit.errors import ModelError

    ref = _log_fixture(flavor.KMEANS_NPY, {**expected[flavor.KMEANS_NPY],
                                            integrity.CLASS_TAG: "sklearn.cluster._kmeans.KMeans"})
    with pytest.raises(ModelError, match=re.escape(f"stores a {OLD_KEY} model")):
        flavor.load_model(ref.uri)
