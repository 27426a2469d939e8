"""Search spaces (tune_spaces/*.yaml): parsing, errors that name the key, Tune domains, the shipped spaces, the CLI's
refusal of a malformed space, and the concurrency arithmetic. No Ray cluster is started here."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from atomica_ray.cli.main import main
from atomica_ray.tasks import TASKS
from atomica_ray.train.config import TrainConfig
from atomica_ray.tune.space import SpaceError, load_space, parse_space
from atomica_ray.tune.sweep import derive_concurrency, resolve_settings, trial_resources

ROOT = Path(__file__).resolve().parents[1]
SPACES = sorted((ROOT / "tune_spaces").glob("*.yaml"))


def space(params, **extra):
    return parse_space({"params": params, **extra}, "s.yaml")


def test_every_distribution_becomes_the_right_tune_domain():
    from ray.tune.search.sample import Categorical, Float, Integer

    s = space({
        "lr": {"loguniform": [1e-5, 1e-2]}, "dropout": {"uniform": [0.0, 0.3]},
        "atom_hidden_size": {"quniform": [16, 64, 16]}, "max_rotation": {"quniform": [0.1, 0.5, 0.1]},
        "k_neighbors": {"randint": [6, 12]}, "grad_clip": {"choice": [0.5, 1.0, None]},
        "final_lr": {"grid": [1e-6, 1e-5]},
    })
    d = s.tune_config("optuna")
    assert isinstance(d["lr"], Float) and (d["lr"].lower, d["lr"].upper) == (1e-5, 1e-2)
    assert "LogUniform" in type(d["lr"].get_sampler()).__name__
    assert isinstance(d["atom_hidden_size"], Integer)  # all-int quniform gives ints (hidden sizes)
    assert isinstance(d["max_rotation"], Float)
    assert isinstance(d["k_neighbors"], Integer) and (d["k_neighbors"].lower, d["k_neighbors"].upper) == (6, 13)
    assert isinstance(d["grad_clip"], Categorical) and d["grad_clip"].categories == [0.5, 1.0, None]
    assert isinstance(d["final_lr"], Categorical)  # a grid is sampled as a choice by optuna/random
    samples = [d["k_neighbors"].sample() for _ in range(300)]
    assert min(samples) == 6 and max(samples) == 12  # randint bounds are inclusive
    assert {d["atom_hidden_size"].sample() for _ in range(200)} <= {16, 32, 48, 64}


def test_grid_search_enumerates_grid_and_choice_and_refuses_continuous():
    s = space({"lr": {"grid": [1e-4, 1e-3, 1e-2]}, "grad_clip": {"choice": [1.0, 5.0]}})
    d = s.tune_config("grid")
    assert d["lr"] == {"grid_search": [1e-4, 1e-3, 1e-2]} and d["grad_clip"] == {"grid_search": [1.0, 5.0]}
    assert s.grid_size() == 6
    with pytest.raises(SpaceError, match=r"params\.dropout: a uniform distribution cannot be enumerated"):
        space({"dropout": {"uniform": [0, 0.3]}}).tune_config("grid")


@pytest.mark.parametrize("params, message", [
    ({"lr": {"loguniform": [0.0, 1e-2]}}, r"params\.lr\.loguniform: low \(0\.0\) must be positive"),
    ({"lr": {"loguniform": [1e-2, 1e-4]}}, r"params\.lr\.loguniform: low .* must be below high"),
    ({"lr": {"logunifrom": [1e-4, 1e-2]}}, r"params\.lr: unknown distribution 'logunifrom'"),
    ({"dropout": {"uniform": [0.1]}}, r"params\.dropout\.uniform: expected \[low, high\]"),
    ({"dropout": [0.1, 0.2]}, r"params\.dropout: expected one distribution"),
    ({"dropout": {"uniform": [0.0, "a lot"]}}, r"params\.dropout\.uniform: expected a finite number"),
    ({"k_neighbors": {"randint": [6.5, 12]}}, r"params\.k_neighbors\.randint: bounds must be integers"),
    ({"atom_hidden_size": {"quniform": [16, 64, 0]}}, r"params\.atom_hidden_size\.quniform: q \(0\) must be positive"),
    ({"grad_clip": {"choice": []}}, r"params\.grad_clip\.choice: needs at least one value"),
    ({"grad_clip": {"grid": [1.0, 1.0]}}, r"params\.grad_clip\.grid: repeated values"),
    ({}, r"params: expected a non-empty mapping"),
])
def test_malformed_params_name_the_key(params, message):
    with pytest.raises(SpaceError, match=message) as info:
        parse_space({"params": params}, "tune_spaces/bad.yaml")
    assert str(info.value).startswith("tune_spaces/bad.yaml: ")


def test_malformed_sections_name_the_key():
    ok = {"lr": {"loguniform": [1e-5, 1e-2]}}
    with pytest.raises(SpaceError, match=r"s\.yaml: schedular: unknown top-level key"):
        parse_space({"params": ok, "schedular": {}}, "s.yaml")
    with pytest.raises(SpaceError, match=r"asha\.grace_period: expected a positive integer"):
        parse_space({"params": ok, "asha": {"grace_period": 0}}, "s.yaml")
    with pytest.raises(SpaceError, match=r"asha\.max_epochs: unknown setting"):
        parse_space({"params": ok, "asha": {"max_epochs": 3}}, "s.yaml")
    with pytest.raises(SpaceError, match=r"pbt\.mutate: dropout: not one of this space's params"):
        parse_space({"params": ok, "pbt": {"mutate": ["dropout"]}}, "s.yaml")
    with pytest.raises(SpaceError, match=r"mode: expected min or max"):
        parse_space({"params": ok, "metric": "val_rmse", "mode": "lowest"}, "s.yaml")
    with pytest.raises(SpaceError, match=r"pbt\.mutate: PBT needs the list"):
        parse_space({"params": ok}, "s.yaml").pbt_mutations()


def test_unknown_config_key_is_named_with_a_suggestion():
    s = space({"learning_rate": {"loguniform": [1e-5, 1e-2]}})
    with pytest.raises(SpaceError, match=r"params\.learning_rate: not a training config key"):
        s.validate_keys(TrainConfig.field_types())
    with pytest.raises(SpaceError, match=r"did you mean .*grad_clip"):
        space({"grad_clp": {"choice": [1.0]}}).validate_keys(TrainConfig.field_types())


def test_yaml_errors_name_the_file(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("params:\n  lr: {loguniform: [1e-5, 1e-2]\n")
    with pytest.raises(SpaceError, match=r"broken\.yaml: not valid YAML"):
        load_space(bad)
    with pytest.raises(SpaceError, match=r"missing\.yaml: cannot read"):
        load_space(tmp_path / "missing.yaml")


@pytest.mark.parametrize("path", SPACES, ids=[p.stem for p in SPACES])
def test_shipped_spaces_are_valid_for_their_tasks(path, tmp_path):
    s = load_space(path)
    s.validate_keys(TrainConfig.field_types())
    assert set(s.tasks) <= set(TASKS)
    s.tune_config("optuna")
    s.tune_config("random")
    assert s.pbt_mutations()
    # every value at the edges of every param gives a valid TrainConfig of the space's task
    task = s.tasks[0] if s.tasks else "binary_classifier"
    if task in ("residue_binary_classifier", "multilabel_classifier"):  # their labels are checked on the driver
        from list_label_data import write_splits

        write_splits(tmp_path, n_train=2, n_valid=2)
    else:
        (tmp_path / "train").mkdir()
        (tmp_path / "valid").mkdir()
    base = {"task": task, "train_set": str(tmp_path / "train"), "valid_set": str(tmp_path / "valid")}
    if task in ("multiclass_classifier", "multilabel_classifier"):
        base["num_classifier_classes"] = 3
    if task in ("residue_binary_classifier", "multilabel_classifier"):
        base["fragmentation_method"] = "PS_300"  # the demo items have fragment blocks
    settings = resolve_settings(base, s, name="x", storage_path=str(tmp_path), num_samples=4, scheduler="asha",
                                search="optuna", gpus_per_trial=0, workers_per_trial=1, max_concurrent=None,
                                seed=0)
    assert settings.metric.startswith("val_") and settings.asha["grace_period"] <= settings.asha["max_t"]


def test_lr_grad_clip_space_is_a_full_grid():
    s = load_space(ROOT / "tune_spaces" / "lr_grad_clip.yaml")
    assert set(s.params) == {"lr", "grad_clip"} and s.grid_size() == 20
    assert not s.tasks  # any task


def test_space_for_another_task_is_refused(tmp_path):
    s = load_space(ROOT / "tune_spaces" / "masking.yaml")
    with pytest.raises(SpaceError, match=r"masking\.yaml: task: the space is for masking"):
        resolve_settings({"task": "PDBBind", "train_set": str(tmp_path), "valid_set": str(tmp_path)}, s,
                         name="x", storage_path=str(tmp_path), num_samples=2, scheduler="asha", search="optuna",
                         gpus_per_trial=0, workers_per_trial=1, max_concurrent=None, seed=0)


def test_param_value_invalid_for_the_config_is_named(tmp_path):
    s = space({"final_lr": {"choice": [1e-6, 0.0]}})  # TrainConfig refuses final_lr <= 0
    with pytest.raises(SpaceError, match=r"params\.final_lr.*'final_lr'.*must be > 0"):
        resolve_settings({"task": "PDBBind", "train_set": str(tmp_path), "valid_set": str(tmp_path)}, s,
                         name="x", storage_path=str(tmp_path), num_samples=2, scheduler="asha", search="optuna",
                         gpus_per_trial=0, workers_per_trial=1, max_concurrent=None, seed=0)


def test_cli_refuses_a_malformed_space_naming_the_key(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"task": "PDBBind", "train_set": str(tmp_path), "valid_set": str(tmp_path)}))
    bad = tmp_path / "bad.yaml"
    bad.write_text("params:\n  lr: {loguniform: [1.0e-5, 1.0e-2]}\n  grad_clip: {uniform: [5.0, 1.0]}\n")
    code = main(["tune", "--config", str(config), "--space", str(bad), "--num-samples", "2",
                 "--storage-path", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code != 0 and "params.grad_clip.uniform" in err and "bad.yaml" in err
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("params:\n  lr: {loguniform: [1.0e-5, 1.0e-2]}\n  gradclip: {choice: [1.0]}\n")
    code = main(["tune", "--config", str(config), "--space", str(unknown), "--num-samples", "2",
                 "--storage-path", str(tmp_path / "runs")])
    assert code != 0 and "params.gradclip: not a training config key" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # refused before anything was written


def test_concurrency_is_cluster_resources_over_trial_resources():
    # a trial = its workers (1 CPU each [+ 1 GPU each]) + 1 CPU for the trial driver
    assert trial_resources(1, 0) == {"CPU": 2.0}
    assert trial_resources(2, 2) == {"CPU": 3.0, "GPU": 2.0}
    assert derive_concurrency({"CPU": 2.0}, trial_resources(1, 0)) == 1
    assert derive_concurrency({"CPU": 16.0}, trial_resources(1, 0)) == 8
    assert derive_concurrency({"CPU": 64.0, "GPU": 8.0}, trial_resources(2, 2)) == 4  # GPU-bound
    assert derive_concurrency({"CPU": 8.0, "GPU": 8.0}, trial_resources(2, 2)) == 2  # CPU-bound
    with pytest.raises(ValueError, match="one trial needs"):
        derive_concurrency({"CPU": 1.0}, trial_resources(1, 0))
    with pytest.raises(ValueError, match="one trial needs"):
        derive_concurrency({"CPU": 32.0}, trial_resources(1, 1))  # no GPU in the cluster


def test_pbt_refuses_to_perturb_integer_params():
    s = space({"k_neighbors": {"randint": [6, 12]}, "lr": {"loguniform": [1e-5, 1e-2]}},
              pbt={"mutate": ["lr", "k_neighbors"]})
    with pytest.raises(SpaceError, match=r"pbt\.mutate: k_neighbors: PBT cannot perturb an integer randint"):
        s.pbt_mutations()
    ok = space({"k_neighbors": {"choice": [6, 9, 12]}, "lr": {"loguniform": [1e-5, 1e-2]}},
               pbt={"mutate": ["lr", "k_neighbors"]}).pbt_mutations()
    assert ok["k_neighbors"] == [6, 9, 12]


@pytest.mark.parametrize("search", ["optuna", "random", "grid"])
def test_every_search_algorithm_is_limited_to_the_derived_concurrency(tmp_path, search):
    """Tune ignores TuneConfig.max_concurrent_trials for a searcher passed in: each one carries the limit."""
    from atomica_ray.tune.sweep import make_searcher

    s = space({"lr": {"grid": [1e-4, 1e-3]}})
    settings = resolve_settings({"task": "PDBBind", "train_set": str(tmp_path), "valid_set": str(tmp_path)}, s,
                                name="x", storage_path=str(tmp_path), num_samples=4, scheduler="asha",
                                search=search, gpus_per_trial=0, workers_per_trial=1, max_concurrent=None, seed=0)
    searcher = make_searcher(settings, concurrency=3)
    assert searcher.max_concurrent == 3
