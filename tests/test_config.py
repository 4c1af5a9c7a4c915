"""Experiment configs: every shipped file loads; every kind of mistake is a one-line ConfigError."""

from __future__ import annotations

from pathlib import Path

import pytest

from toolkit.config import ExperimentConfig, ModelConfig, SearchConfig, load_experiment, parse_overrides
from toolkit.errors import ConfigError
from toolkit.names import BACKEND_FACTS, BACKEND_NAMES, EVAL_METRICS, HYPERPARAMETERS, INITS, OBJECTIVES

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((REPO / "experiments").glob("*.yaml"))


def _one_line(err: pytest.ExceptionInfo[ConfigError]) -> str:
    msg = str(err.value)
    assert "\n" not in msg, msg
    return msg


def _write(tmp_path: Path, text: str, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_experiments_dir_is_not_empty():
    assert {p.name for p in EXPERIMENTS} >= {"blobs.yaml", "digits.yaml"}


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_every_experiment_file_loads(path):
    cfg = load_experiment(path)
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.name == path.stem
    assert cfg.source_path == str(path)
    # Search ranges in the shipped files are usable.
    assert cfg.search.space.n_clusters.values()


def test_file_values_override_defaults():
    cfg = load_experiment(REPO / "experiments" / "blobs.yaml")
    assert cfg.model.n_clusters == 6
    assert cfg.data.chunk_rows == 25_000
    assert cfg.search.space.init == ["k-means++", "random"]
    assert cfg.experiment_name == "blobs"
    flat = cfg.flat()
    assert flat["model.n_clusters"] == 6
    assert flat["search.space.n_clusters.high"] == 10
    assert "source_path" not in flat


def test_no_path_gives_defaults():
    cfg = load_experiment(None)
    assert cfg.name == "default"
    assert cfg.backend == "sklearn"
    assert cfg.source_path is None


def test_unknown_key_in_file_names_file_and_dotted_key(tmp_path):
    path = _write(tmp_path, "name: t\ndata:\n  source: blobs\n  foo: 1\n")
    with pytest.raises(ConfigError) as err:
        load_experiment(path)
    msg = _one_line(err)
    assert str(path) in msg
    assert "data.foo" in msg


def test_unknown_top_level_key_in_file(tmp_path):
    path = _write(tmp_path, "name: t\nmodle:\n  n_clusters: 3\n")
    with pytest.raises(ConfigError) as err:
        load_experiment(path)
    msg = _one_line(err)
    assert str(path) in msg and "modle" in msg


def test_wrong_type(tmp_path):
    path = _write(tmp_path, "name: t\nmodel:\n  n_clusters: many\n")
    with pytest.raises(ConfigError) as err:
        load_experiment(path)
    msg = _one_line(err)
    assert str(path) in msg and "model.n_clusters" in msg
    assert "integer" in msg
    assert "'many'" in msg  # what was given


@pytest.mark.parametrize(
    "text, key",
    [
        ("model:\n  n_clusters: 0\n", "model.n_clusters"),
        ("data:\n  cluster_std: -1.0\n", "data.cluster_std"),
        ("metrics:\n  silhouette_sample: 1\n", "metrics.silhouette_sample"),
        ("search:\n  cv: 1\n", "search.cv"),
        ("search:\n  space:\n    n_clusters: {low: 9, high: 3}\n", "search.space.n_clusters"),
    ],
)
def test_out_of_range_value(tmp_path, text, key):
    path = _write(tmp_path, "name: t\n" + text)
    with pytest.raises(ConfigError) as err:
        load_experiment(path)
    msg = _one_line(err)
    assert str(path) in msg and key in msg


def test_literal_value_not_allowed(tmp_path):
    path = _write(tmp_path, "name: t\nmodel:\n  init: kmeans-plus-plus\n")
    with pytest.raises(ConfigError) as err:
        load_experiment(path)
    assert "model.init" in _one_line(err)


def test_bad_yaml_names_file_and_line(tmp_path):
    path = _write(tmp_path, "name: t\nmodel:\n  n_clusters: [3, 4\n")
    with pytest.raises(ConfigError) as err:
        load_experiment(path)
    msg = _one_line(err)
    assert str(path) in msg and "invalid YAML" in msg and "line" in msg


def test_top_level_not_a_mapping(tmp_path):
    path = _write(tmp_path, "- a\n- b\n")
    with pytest.raises(ConfigError) as err:
        load_experiment(path)
    assert "mapping" in _one_line(err)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as err:
        load_experiment(path)
    msg = _one_line(err)
    assert str(path) in msg and "does not exist" in msg


def test_overrides_of_nested_keys():
    cfg = load_experiment(
        REPO / "experiments" / "blobs.yaml",
        [
            "model.n_clusters=5",
            "search.space.n_clusters.low=3",
            "model.tol=1e-3",
            "data.persist=false",
        ],
    )
    assert cfg.model.n_clusters == 5
    assert cfg.search.space.n_clusters.low == 3
    assert cfg.search.space.n_clusters.high == 10  # sibling kept from the file
    assert cfg.model.tol == pytest.approx(1e-3)
    assert cfg.data.persist is False
    assert cfg.model.init == "k-means++"  # untouched keys keep the file's value


def test_override_forms_are_equivalent():
    as_list = load_experiment(None, ["model.n_clusters=5", "model.max_iter=20"])
    as_str = load_experiment(None, "model.n_clusters=5 model.max_iter=20")
    as_map = load_experiment(None, {"model.n_clusters": 5, "model.max_iter": 20})
    assert as_list.model == as_str.model == as_map.model
    assert as_list.model.n_clusters == 5 and as_list.model.max_iter == 20


def test_override_of_optional_search_range():
    cfg = load_experiment(None, "search.space.tol.low=0.001 search.space.tol.high=0.1")
    assert cfg.search.space.tol.low == pytest.approx(0.001)
    assert cfg.search.space.tol.high == pytest.approx(0.1)


def test_alias_keys():
    cfg = load_experiment(None, "n_clusters=4 n_samples=500 n_workers=3 n_trials=7 strategy=grid")
    assert cfg.model.n_clusters == 4
    assert cfg.data.n_samples == 500
    assert cfg.cluster.n_workers == 3
    assert cfg.search.n_trials == 7
    assert cfg.search.strategy == "grid"


def test_unknown_override_key():
    with pytest.raises(ConfigError) as err:
        load_experiment(REPO / "experiments" / "blobs.yaml", ["model.n_clusterz=5"])
    msg = _one_line(err)
    assert "model.n_clusterz" in msg
    assert "model.n_clusters" in msg  # the fix lists the real keys


def test_override_below_a_leaf_is_unknown():
    with pytest.raises(ConfigError) as err:
        load_experiment(None, ["model.n_clusters.low=5"])
    assert "model.n_clusters.low" in _one_line(err)


def test_the_label_column_is_never_also_a_feature():
    """Asked for as a feature too, the ground truth would be left out of the features in silence."""
    with pytest.raises(ConfigError) as err:
        load_experiment(None, ["data.source=file", "data.path=x.csv", "data.label_column=truth",
                               "data.columns=[x0,truth]"])
    assert "data.columns names the label column 'truth' (data.label_column)" in _one_line(err)
    cfg = load_experiment(None, ["data.source=file", "data.path=x.csv", "data.label_column=truth", "data.columns=[x0]"])
    assert cfg.data.columns == ["x0"] and cfg.data.label_column == "truth"


def test_override_wrong_type_and_range():
    with pytest.raises(ConfigError) as err:
        load_experiment(None, ["model.n_clusters=abc"])
    assert "model.n_clusters" in _one_line(err)
    with pytest.raises(ConfigError) as err:
        load_experiment(None, ["search.space.n_clusters.low=30"])  # above default high (12)
    assert "search.space.n_clusters" in _one_line(err)


@pytest.mark.parametrize("given, value", [("auto", "auto"), ("AUTO", "auto"), ("0", 0), ("3", 3), (2, 2)])
def test_prefetch_auto_or_a_small_count(given, value):
    assert load_experiment(None, {"search.prefetch": given}).search.prefetch == value


@pytest.mark.parametrize("given", ["9", "-1", "many", "1.5", True])
def test_prefetch_out_of_range_says_what_is_allowed(given):
    with pytest.raises(ConfigError) as err:
        load_experiment(None, {"search.prefetch": given})
    msg = _one_line(err)
    assert "search.prefetch: must be 'auto' or a whole number 0..8" in msg and repr(given) in msg
    assert "Value error" not in msg


def test_override_not_key_value():
    with pytest.raises(ConfigError) as err:
        parse_overrides("model.n_clusters")
    assert "key=value" in _one_line(err)


def test_parse_overrides_types():
    out = parse_overrides("a=5 b=1e-3 c=true d=null e=[x,y] f=text g=")
    assert out["a"] == 5 and isinstance(out["a"], int)
    assert out["b"] == pytest.approx(1e-3) and isinstance(out["b"], float)
    assert out["c"] is True
    assert out["d"] is None
    assert out["e"] == ["x", "y"]
    assert out["f"] == "text"
    assert out["g"] is None
    assert parse_overrides(None) == {} and parse_overrides("  ") == {}
    # Words that float() would turn into NaN or infinity stay words.
    assert parse_overrides("h=nan i=inf j=Infinity") == {"h": "nan", "i": "inf", "j": "Infinity"}


def test_nan_tolerance_is_rejected_with_the_key():
    with pytest.raises(ConfigError) as err:
        load_experiment(None, ["model.tol=nan"])
    assert "model.tol" in _one_line(err)


def test_unknown_backend_in_config():
    with pytest.raises(ConfigError) as err:
        load_experiment(None, ["backend=tensorflow"])
    msg = _one_line(err)
    assert "backend" in msg and "sklearn" in msg
    assert "'tensorflow'" in msg  # what was given


def test_source_needs_its_settings():
    with pytest.raises(ConfigError) as err:
        load_experiment(None, ["data.source=file"])
    assert "data.path" in _one_line(err)
    with pytest.raises(ConfigError) as err:
        load_experiment(None, ["data.source=sklearn"])
    assert "data.dataset" in _one_line(err)


@pytest.mark.parametrize("value, default, expected", [
    (None, True, True), (None, False, False), ("0", True, False), ("OFF", True, False), (" no ", True, False),
    ("1", False, True), ("True", False, True), ("on", False, True), ("maybe", True, True), ("maybe", False, False),
])
def test_env_flag(monkeypatch, value, default, expected):
    """The KMEANS_LIFECYCLE_* on/off switches: the usual spellings either way, anything else the default."""
    from toolkit.config import env_flag

    if value is None:
        monkeypatch.delenv("KMEANS_LIFECYCLE_TEST_FLAG", raising=False)
    else:
        monkeypatch.setenv("KMEANS_LIFECYCLE_TEST_FLAG", value)
    assert env_flag("KMEANS_LIFECYCLE_TEST_FLAG", default) is expected


# -- non-finite numbers, empty files, directories --------------------------------------------


@pytest.mark.parametrize(
    "override, key",
    [
        ("model.tol=inf", "model.tol"),
        ("model.tol=nan", "model.tol"),
        ("model.oversampling_factor=nan", "model.oversampling_factor"),
        ("model.oversampling_factor=Infinity", "model.oversampling_factor"),
        ("data.cluster_std=inf", "data.cluster_std"),
        ("data.cluster_std=-inf", "data.cluster_std"),
        ("search.space.tol.low=1e-4 search.space.tol.high=inf", "search.space.tol.high"),
        ("search.space.oversampling_factor.low=nan search.space.oversampling_factor.high=2",
         "search.space.oversampling_factor.low"),
        ("search.space.tol=[0.001,inf]", "search.space.tol[1]"),
        ("search.space.oversampling_factor=[nan]", "search.space.oversampling_factor[0]"),
    ],
)
def test_non_finite_override_is_rejected_with_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_experiment(None, override)
    msg = _one_line(err)
    assert f"<defaults>: {key}: Input should be a finite number" in msg
    assert "FloatRange" not in msg and "list[float]" not in msg  # no pydantic union tags


@pytest.mark.parametrize(
    "text, key",
    [
        ("model:\n  tol: .inf\n", "model.tol"),
        ("model:\n  oversampling_factor: .nan\n", "model.oversampling_factor"),
        ("data:\n  cluster_std: .inf\n", "data.cluster_std"),
        ("search:\n  space:\n    tol: {low: 0.001, high: .inf}\n", "search.space.tol.high"),
        ("search:\n  space:\n    tol: [0.001, -.inf]\n", "search.space.tol[1]"),
    ],
)
def test_non_finite_value_in_file_is_rejected_with_the_key(tmp_path, text, key):
    path = _write(tmp_path, "name: t\n" + text)
    with pytest.raises(ConfigError) as err:
        load_experiment(path)
    msg = _one_line(err)
    assert f"{path}: {key}: Input should be a finite number" in msg


def test_finite_search_lists_and_ranges_still_load():
    # (oversampling only acts with k-means||, on a backend that has it: see the refusals below)
    cfg = load_experiment(None, "backend=dask model.init=k-means|| search.space.tol=[0.001,0.01] "
                                "search.space.oversampling_factor.low=1 search.space.oversampling_factor.high=4")
    assert cfg.search.space.tol == [0.001, 0.01]
    assert cfg.search.space.oversampling_factor.high == 4.0


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n# and another\n", "---\n"])
def test_empty_config_file_is_rejected(tmp_path, text):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_experiment(path)
    msg = _one_line(err)
    assert str(path) in msg and "is empty" in msg


def test_config_path_that_is_a_directory(tmp_path):
    for name in ("c.yaml", "a.yaml", "b.yml", "d.yaml"):
        _write(tmp_path, "name: x\n", name)
    with pytest.raises(ConfigError) as err:
        load_experiment(tmp_path)
    msg = _one_line(err)
    assert f"config path {tmp_path} is a directory" in msg and "does not exist" not in msg
    assert f"{tmp_path / 'a.yaml'} or {tmp_path / 'b.yml'} or {tmp_path / 'c.yaml'}" in msg  # 3 at most
    assert "d.yaml" not in msg
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError) as err:
        load_experiment(empty)
    assert "is a directory" in _one_line(err)


def test_union_value_reports_the_member_the_user_meant():
    with pytest.raises(ConfigError) as err:
        load_experiment(None, "search.space.tol.low=-1 search.space.tol.high=1")
    msg = _one_line(err)
    assert "<defaults>: search.space.tol.low: Input should be greater than 0 (got -1) --" in msg


@pytest.mark.parametrize("value", ["127.0.0.1:0", ":8787", "0.0.0.0:0", "[::1]:8787"])
def test_dashboard_address(value):
    assert load_experiment(None, {"cluster.dashboard_address": value}).cluster.dashboard_address == value


def test_dashboard_address_defaults_to_loopback():
    assert load_experiment(None).cluster.dashboard_address == "127.0.0.1:0"


@pytest.mark.parametrize("value", ["localhost", "8787", 8787, "127.0.0.1:99999", "host:port", None])
def test_bad_dashboard_address(value):
    with pytest.raises(ConfigError) as err:
        load_experiment(None, {"cluster.dashboard_address": value})
    assert "cluster.dashboard_address: must be host:port or :port" in _one_line(err)


def test_unknown_key_inside_a_union_value():
    with pytest.raises(ConfigError) as err:
        load_experiment(None, {"search.space.tol": {"low": 0.01, "high": 0.1, "Step": 2}})
    msg = _one_line(err)
    assert "<defaults>: search.space.tol.Step: Extra inputs are not permitted" in msg
    assert "FloatRange" not in msg


# -- one home per vocabulary ------------------------------------------------------------------

CPU_BACKENDS = [name for name, facts in BACKEND_FACTS.items() if facts.device == "cpu"]


def test_config_literals_are_the_vocabularies():
    """Each accepted-values list is read from toolkit.names, not declared again."""
    fields = ExperimentConfig.model_fields
    assert fields["backend"].annotation.__args__ == BACKEND_NAMES
    assert ModelConfig.model_fields["init"].annotation.__args__ == INITS
    assert SearchConfig.model_fields["objective"].annotation.__args__ == OBJECTIVES
    assert fields["registry"].annotation.model_fields["eval_metric"].annotation.__args__ == EVAL_METRICS
    assert tuple(ModelConfig.model_fields) == HYPERPARAMETERS


def test_literal_messages_list_every_name_in_order():
    with pytest.raises(ConfigError) as err:
        load_experiment(None, ["search.objective=inertia"])
    assert ("search.objective: Input should be 'silhouette', 'davies_bouldin', 'calinski_harabasz', "
            "'adjusted_rand', 'stability' or 'prediction_strength' (got 'inertia')") in _one_line(err)
    with pytest.raises(ConfigError) as err:
        load_experiment(None, ["model.init=kpp"])
    assert "model.init: Input should be 'k-means++', 'k-means||' or 'random' (got 'kpp')" in _one_line(err)


# -- settings a backend would ignore, or an init it does not have, are refused at load -------

# A shipped file's init that a CPU backend does not have: refused at load (it always failed, later,
# when the backend validated after the cluster had started).  Anything else must load.
_SHIPPED_REFUSALS = {("blobs-large.yaml", "sklearn"): "model.init='k-means||' is not supported by backend 'sklearn'"}


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_every_experiment_file_validates_on_every_cpu_backend(path, backend):
    refusal = _SHIPPED_REFUSALS.get((path.name, backend))
    if refusal is None:
        assert load_experiment(path, {"backend": backend}).backend == backend
        return
    with pytest.raises(ConfigError) as err:
        load_experiment(path, {"backend": backend})
    msg = _one_line(err)
    assert msg.startswith(f"{path}: {refusal}") and "fix: set model.init to" in msg


@pytest.mark.parametrize(
    "overrides, key",
    [
        # sklearn has no oversampling at all
        (["model.oversampling_factor=5"], "model.oversampling_factor=5.0"),
        (["search.space.oversampling_factor=[1, 3]"], "search.space.oversampling_factor=[1.0, 3.0]"),
        (["search.space.oversampling_factor.low=1", "search.space.oversampling_factor.high=4"],
         "search.space.oversampling_factor=1..4"),
        # multi-GPU cuML too: oversampling only with k-means|| (k-means++ is fitted as k-means||)
        (["backend=cuml-dask", "model.init=random", "model.oversampling_factor=3"], "model.oversampling_factor=3.0"),
        # oversampling acts only with k-means||
        (["backend=dask", "model.oversampling_factor=5"], "model.oversampling_factor=5.0"),
        (["backend=dask-ml", "model.init=k-means||", "search.space.init=[random]",
          "search.space.oversampling_factor=[1, 3]"], "search.space.oversampling_factor=[1.0, 3.0]"),
    ],
)
def test_a_setting_the_backend_would_ignore_is_refused(overrides, key):
    with pytest.raises(ConfigError) as err:
        load_experiment(REPO / "experiments" / "blobs.yaml", ["search.space.init=null", *overrides])
    msg = _one_line(err)
    backend = next((o.split("=")[1] for o in overrides if o.startswith("backend=")), "sklearn")
    assert f"blobs.yaml: {key} would be ignored" in msg
    assert f"backend {backend!r}" in msg and "-- fix: remove " in msg


@pytest.mark.parametrize(
    "overrides",
    [
        ["model.oversampling_factor=2.0"],  # the default: what sklearn does anyway
        ["backend=dask-ml", "model.n_init=3"],  # the dask-ml adaptor runs n_init fits
        ["backend=cuml-dask", "model.init=random", "model.n_init=1"],
        ["backend=cuml-dask", "model.init=random", "search.space.n_init=[1]"],
        ["backend=dask", "model.init=k-means||", "model.oversampling_factor=5"],
        ["backend=dask", "model.oversampling_factor=5", "search.space.init=[k-means||, random]"],
        ["backend=cuml-dask", "model.init=k-means||", "search.space.init=null",
         "search.space.oversampling_factor=[1, 3]"],
    ],
)
def test_a_setting_the_backend_uses_or_leaves_at_default_loads(overrides):
    load_experiment(REPO / "experiments" / "blobs.yaml", overrides)


@pytest.mark.parametrize("backend, init", [("sklearn", "k-means||")])
def test_an_init_the_backend_does_not_have_is_refused_at_load(backend, init):
    with pytest.raises(ConfigError) as err:
        load_experiment(None, [f"backend={backend}", f"model.init={init}"])
    msg = _one_line(err)
    assert msg.startswith(f"<defaults>: model.init={init!r} is not supported by backend {backend!r}")
    others = " or ".join(BACKEND_FACTS[backend].inits)
    assert f"fix: set model.init to {others}, or choose a backend that has {init!r}" in msg


def test_constructing_a_config_directly_is_checked_too():
    with pytest.raises(ConfigError, match=r"model.oversampling_factor=5.0 would be ignored"):
        ExperimentConfig(name="x", model={"oversampling_factor": 5.0})
    cfg = ExperimentConfig(name="x", backend="dask", model={"init": "k-means||"})
    with pytest.raises(ConfigError, match=r"model.init='k-means\|\|' is not supported by backend 'sklearn'"):
        cfg.backend = "sklearn"  # validate_assignment re-checks


def test_search_space_check_refuses_what_the_backend_ignores():
    """The search's own check (after the cluster starts) applies the same rule."""
    from toolkit.backends import get_backend
    from toolkit.search.space import check_space

    search = SearchConfig.model_validate({"space": {"oversampling_factor": [1.0, 3.0]}})
    with pytest.raises(ConfigError, match=r"search.space.oversampling_factor=\[1.0, 3.0\] would be ignored"):
        check_space(search, get_backend("sklearn")(), 1000, False)
    check_space(search, get_backend("dask")(), 1000, False)


def test_yes_no_flags_are_read_one_way_and_refuse_other_words():
    from toolkit.config import parse_flag

    for word in ("1", "true", "Yes", "ON"):
        assert parse_flag(word, "register") is True
    for word in ("0", "false", "No", "off"):
        assert parse_flag(word, "register") is False
    assert parse_flag("", "register", default=True) is True and parse_flag(None, "force") is False
    with pytest.raises(ConfigError, match=r"register='maybe' is not a yes/no value -- fix: pass --register true or"):
        parse_flag("maybe", "register")


def test_overrides_take_quoted_values_with_spaces(tmp_path, monkeypatch):
    """-P overrides="data.path='a b/c.csv' model.max_iter=5": quoted as a shell quotes them (the
    words were split on every space: "override 'b/c.csv'' is not of the form key=value")."""
    import sys

    from mlproject._cli import load_config
    from mlproject.train import build_parser

    folder = tmp_path / "a b"
    folder.mkdir()
    (folder / "c.csv").write_text("x,y\n0,1\n1,0\n2,2\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["train", "--config", "", "--set", "data.path='a b/c.csv' model.max_iter=5"])
    args = build_parser().parse_args()
    cfg = load_config(args, {})
    assert str(cfg.data.path) == "a b/c.csv" and cfg.model.max_iter == 5
    with pytest.raises(ConfigError, match="close every quote"):
        parse_overrides("data.path='a b/c.csv")
