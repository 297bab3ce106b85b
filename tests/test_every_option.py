"""Every option of every config group passes a dry run from the real `fedexp` command line.

An option can break where only the command line reaches it (the setting checks build a
strategy the way the run does, e.g. FedAdam needs the initial model), while a test that
builds it from a composed config passes. So each option found in conf/<group>/*.yaml (a
new file is covered without touching this test) runs as `fedexp GROUP=OPTION dry_run=true`:
`fedexp.main.main` in-process with a patched argv, through the command-line check, Hydra,
fedexp's checks, loading and partitioning the data, the model, the strategy and the client
half, to where a run would start Ray. `ray.init` fails the test. Datasets that need files
get small fake ones in their real on-disk formats (tests/test_data.py's writers).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar
from conftest import compose_cfg
from test_data import write_cifar10, write_idx, write_image_folder

from fedexp.main import config_dir, main

GROUPS = (
    "dataset",
    "partitioning",
    "model",
    "optimizer",
    "strategy",
    "device",
    "experiment",
    "hparams_search",
)
OPTIONS = {g: sorted(p.stem for p in (Path(config_dir()) / g).glob("*.yaml")) for g in GROUPS}
NEEDS_CUDA = {("device", "cuda")}
CASES = [
    (g, o)
    for g in GROUPS
    for o in OPTIONS[g]
    if (g, o) not in NEEDS_CUDA or torch.cuda.is_available()
]

# Size skew on digits' 1437 training examples: at the default 10 clients client 0 gets 3
# examples (square) or none (exponential), so it has no validation example or no data. The
# largest num_clients that gives every client a validation example:
NUM_CLIENTS = {("partitioning", "square"): 7, ("partitioning", "exponential"): 5}

DRY_RUN = re.compile(
    r"dry run: (\d+) training examples in (\d+) partitions, model (\w+), "
    r"strategy (\w+) with client (\w+); stopped before training -> (.+)"
)

CIFAR_PER_BATCH, IDX_TRAIN, IMAGES_PER_CLASS = 100, 200, 10


@pytest.fixture(scope="module")
def fake_files(tmp_path_factory):
    """Per dataset name: the overrides that point it at small fake files in its real format
    (nothing for digits, which is bundled), and its number of training examples."""
    root = tmp_path_factory.mktemp("data")
    write_cifar10(root / "cifar10", n_train_batch=CIFAR_PER_BATCH, n_test=20)
    rng = np.random.default_rng(0)
    for name, folder in (("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")):
        raw = root / name / folder / "raw"
        raw.mkdir(parents=True)
        for prefix, n in (("train", IDX_TRAIN), ("t10k", 20)):
            write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
            write_idx(raw / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n))
    write_image_folder(
        root / "images",
        classes=tuple(f"c{i}" for i in range(10)),
        per_class=IMAGES_PER_CLASS,
        size=8,
    )

    def torchvision_files(name):
        return [f"dataset.root={root / name}", "dataset.download=false"]

    return {
        "digits": ([], 1437),
        "cifar10": (torchvision_files("cifar10"), 5 * CIFAR_PER_BATCH),
        "mnist": (torchvision_files("mnist"), IDX_TRAIN),
        "fashion_mnist": (torchvision_files("fashion_mnist"), IDX_TRAIN),
        "image_folder": (
            [f"dataset.path={root / 'images'}", f"dataset.cache_dir={root / 'cache'}"],
            10 * IMAGES_PER_CLASS,
        ),
    }


@pytest.fixture
def fedexp_cli(monkeypatch, capsys, tmp_path):
    """Run `fedexp ARGS` in-process; Ray must not start. Returns (exit status, stderr,
    the "dry run:" lines the fedexp logger emitted, run dir)."""
    import ray

    def no_ray(*a, **k):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(ray, "init", no_ray)
    # torchvision checks the real CIFAR-10 files' MD5 sums; only that check is patched.
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: True)
    # Hydra's job logging replaces the root's and "fedexp"'s handlers (caplog's among them)
    # when the job starts; a logger's filters stay, so one records what "fedexp" logs.
    records: list[logging.LogRecord] = []
    logger = logging.getLogger("fedexp")

    def keep(record):
        records.append(record)
        return True

    logger.addFilter(keep)

    def run(*args: str):
        run_dir = tmp_path / "run"
        monkeypatch.setattr(sys, "argv", ["fedexp", *args, f"hydra.run.dir={run_dir}"])
        try:
            main()
            status = 0
        except SystemExit as e:
            status = 0 if e.code is None else e.code
        out, err = capsys.readouterr()
        run.stdout = out
        lines = [r.getMessage() for r in records if r.getMessage().startswith("dry run:")]
        return status, err, lines, run_dir

    yield run
    logger.removeFilter(keep)


def _class_name(target: str) -> str:
    return target.rpartition(".")[2]


def test_options_are_found_on_disk():
    assert all(OPTIONS[g] for g in GROUPS), OPTIONS
    assert {"digits", "cifar10", "mnist", "fashion_mnist", "image_folder"} <= set(
        OPTIONS["dataset"]
    )
    assert {"iid", "dirichlet", "pathological", "shard", "linear", "square", "exponential"} <= set(
        OPTIONS["partitioning"]
    )
    assert {"cnn", "mlp", "resnet18"} <= set(OPTIONS["model"])
    assert {"adam", "sgd"} <= set(OPTIONS["optimizer"])
    assert len(OPTIONS["strategy"]) >= 16  # the names: test_strategies.py
    assert {"cpu", "cuda", "auto"} <= set(OPTIONS["device"])
    assert {"tutorial", "niid_bench"} <= set(OPTIONS["experiment"])
    assert {"optuna_lr"} <= set(OPTIONS["hparams_search"])
    assert len(CASES) >= 35


def _default_options() -> set[tuple[str, str]]:
    """(group, option) of conf/config.yaml's defaults list."""
    import yaml

    defaults = yaml.safe_load((Path(config_dir()) / "config.yaml").read_text())["defaults"]
    return {
        (g, o) for d in defaults if isinstance(d, dict) for g, o in d.items() if isinstance(o, str)
    }


# The fast tier (-m "not slow") dry-runs the default config (every group's default option
# gives the same run, so one of them); the whole suite dry-runs each group's default, every
# option of the groups that decide the data and its split, and takes every
# other option through fedexp's checks (`--cfg job`), which build it as the run does: the
# model, and both halves of the method, the strategy with the initial model.
DEFAULTS = _default_options()
DATA_GROUPS = ("dataset", "partitioning")
DRY_RUN_CASES = [(g, o) for g, o in CASES if (g, o) in DEFAULTS or g in DATA_GROUPS]
CHECKED_CASES = [(g, o) for g, o in CASES if (g, o) not in DRY_RUN_CASES]


@pytest.mark.parametrize(
    "group,option",
    [
        pytest.param(
            g, o, id=f"{g}={o}", marks=() if (g, o) == ("dataset", "digits") else pytest.mark.slow
        )
        for g, o in DRY_RUN_CASES
    ],
)
def test_option_passes_a_dry_run_from_the_command_line(fedexp_cli, fake_files, group, option):
    args = [f"{group}={option}"]
    if (group, option) in NUM_CLIENTS:
        args.append(f"num_clients={NUM_CLIENTS[group, option]}")
    cfg = compose_cfg(*args)  # what the run should build: the option's own _target_s
    data_args, train_examples = fake_files[cfg.dataset.name]
    status, err, lines, run_dir = fedexp_cli(*args, *data_args, "dry_run=true")
    assert status == 0, err
    assert "fedexp: error" not in err and "Traceback" not in err, err
    assert (run_dir / "partitions.json").is_file() and not (run_dir / "results.json").exists()
    assert len(lines) == 1, lines
    examples, parts, model, strategy, client, where = DRY_RUN.fullmatch(lines[0]).groups()
    assert (int(examples), int(parts), Path(where)) == (train_examples, cfg.num_clients, run_dir)
    assert (strategy, client) == (
        _class_name(cfg.strategy._target_),
        _class_name(cfg.strategy.client._target_),
    )
    # model=resnet18 names torchvision's factory function, which builds a ResNet
    assert model.lower() == re.sub(r"\d+$", "", _class_name(cfg.model._target_)).lower()
    split = json.loads((run_dir / "partitions.json").read_text())
    assert (split["scheme"], split["num_clients"], split["train_examples"]) == (
        cfg.partitioning.name,
        cfg.num_clients,
        train_examples,
    )


@pytest.mark.slow
@pytest.mark.parametrize("group,option", CHECKED_CASES, ids=[f"{g}={o}" for g, o in CHECKED_CASES])
def test_option_passes_the_checks_from_the_command_line(fedexp_cli, fake_files, group, option):
    import yaml
    from omegaconf import OmegaConf

    args = [f"{group}={option}"]
    data_args, _ = fake_files[compose_cfg(*args).dataset.name]
    status, err, _, run_dir = fedexp_cli("--cfg", "job", *args, *data_args)
    assert status == 0, err
    assert "fedexp: error" not in err and "Traceback" not in err, err
    printed = yaml.safe_load(fedexp_cli.stdout)
    assert printed == OmegaConf.to_container(compose_cfg(*args, *data_args))
    assert not run_dir.exists()  # --cfg runs nothing


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_cuda_is_one_error_line_before_any_work(fedexp_cli):
    status, err, lines, run_dir = fedexp_cli("device=cuda", "dry_run=true")
    assert status == 2
    err_lines = err.strip().splitlines()
    assert len(err_lines) == 1 and err_lines[0].startswith("fedexp: error:"), err
    assert "cuda" in err_lines[0].lower()
    assert lines == [] and not run_dir.exists()


@pytest.mark.slow  # seconds of work (data, training or the command line): the whole suite runs it
def test_tutorial_preset_follows_num_clients_from_the_command_line(fedexp_cli, fake_files):
    args = ["experiment=tutorial", "num_clients=5"]
    s = compose_cfg(*args).strategy
    assert (s.min_fit_clients, s.min_evaluate_clients, s.min_available_clients) == (5, 2, 5)
    data_args, train_examples = fake_files["cifar10"]
    status, err, lines, run_dir = fedexp_cli(*args, *data_args, "dry_run=true")
    assert status == 0, err
    assert len(lines) == 1 and f"{train_examples} training examples in 5 partitions" in lines[0]
    assert json.loads((run_dir / "partitions.json").read_text())["num_clients"] == 5
