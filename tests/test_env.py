"""Versions and requirements a model records: distribution names found through import names."""

from __future__ import annotations

from importlib.metadata import version

from toolkit import env
from toolkit.registry import flavor


def test_cuda_versions_written_as_people_write_them():
    assert env.cuda_version_text(12090) == "12.9"
    assert env.cuda_version_text(13000) == "13.0"
    assert env.cuda_version_text(12080) == "12.8"


def test_requirements_pin_the_distribution_behind_an_import_name():
    # PyYAML is imported as yaml: the requirement names the distribution, pinned, with the extra.
    assert env.gpu_requirements(("yaml",), extras={"yaml": "x"}) == [f"PyYAML[x]=={version('PyYAML')}"]
    assert env.gpu_requirements(("no_such_module_here",)) == []
    assert env.gpu_versions(("yaml",))["PyYAML"] == version("PyYAML")


def test_gpu_model_requirements_name_a_cuda_flavour_of_cuml():
    reqs = flavor._requirements("gpu", flavor.KMEANS_NPY)
    assert any(r.startswith(("cuml-cu12[dask]", "cuml-cu13[dask]")) for r in reqs), reqs
    assert "cuml-cu12[dask]" not in reqs  # never the unpinned CUDA 12 name by default
    assert not any(r.startswith("cuml-cu") for r in flavor._requirements("cpu", flavor.KMEANS_NPY))
