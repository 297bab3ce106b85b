"""Every bad setting: exit status 2, one line that names it, no traceback, nothing started.

The `fedexp` command runs in-process (`fedexp.main.main` with a patched argv), so the
whole table takes seconds. `ray.init` is replaced by a function that fails the test, so a
case that reached the simulation cannot exit with 2; for the cases that must be caught
from the config alone, loading the data also fails the test.
"""

from __future__ import annotations

import json
import logging
import sys
import urllib.error
import urllib.request

import pytest
import torch

import fedexp.workload
from fedexp import checks
from fedexp.main import main
from fedexp.models import MLP

DIRICHLET = [
    "partitioning.partitioner._target_=flwr_datasets.partitioner.DirichletPartitioner",
    "+partitioning.partitioner.partition_by=label",
]
PATHOLOGICAL = [
    "partitioning.partitioner._target_=flwr_datasets.partitioner.PathologicalPartitioner",
    "+partitioning.partitioner.partition_by=label",
]
SHARD = [
    "partitioning.partitioner._target_=flwr_datasets.partitioner.ShardPartitioner",
    "+partitioning.partitioner.partition_by=label",
]
EXPONENTIAL = ["partitioning.partitioner._target_=flwr_datasets.partitioner.ExponentialPartitioner"]

# (id, overrides, the line's expected content, stage): "config" = refused before any data
# is loaded, "data" = refused after loading/partitioning the data, still before Ray.
CASES = [
    (
        "objective unknown",
        ["objective=accuracy"],
        "objective=accuracy is not allowed: one of final_test_accuracy, best_test_accuracy, final_test_loss",
        "config",
    ),
    (
        "fraction_fit 0",
        ["strategy.fraction_fit=0"],
        "strategy.fraction_fit=0 is not allowed: a fraction in (0, 1]",
        "config",
    ),
    (
        "fraction_fit above 1",
        ["strategy.fraction_fit=1.5"],
        "strategy.fraction_fit=1.5 is not allowed: a fraction in (0, 1]",
        "config",
    ),
    (
        "fraction_evaluate negative",
        ["strategy.fraction_evaluate=-0.1"],
        "strategy.fraction_evaluate=-0.1 is not allowed: a fraction in [0, 1]",
        "config",
    ),
    (
        "fraction_fit samples nobody",
        ["strategy.fraction_fit=0.05", "strategy.min_fit_clients=0"],
        "strategy.fraction_fit=0.05 is not allowed: large enough that int(num_clients * fraction_fit) >= 1",
        "config",
    ),
    (
        "min_fit negative",
        ["strategy.min_fit_clients=-1"],
        "strategy.min_fit_clients=-1 is not allowed: an integer from 0 to num_clients=10",
        "config",
    ),
    (
        "min_fit above clients",
        ["strategy.min_fit_clients=11"],
        "strategy.min_fit_clients=11 is not allowed: an integer from 0 to num_clients=10",
        "config",
    ),
    (
        "min_evaluate above clients",
        ["strategy.min_evaluate_clients=11"],
        "strategy.min_evaluate_clients=11 is not allowed",
        "config",
    ),
    (
        "min_available above clients",
        ["num_clients=4", "strategy.min_available_clients=5"],
        "strategy.min_available_clients=5 is not allowed: an integer from 0 to num_clients=4 "
        "(more would make Flower wait forever)",
        "config",
    ),
    ("num_clients 0", ["num_clients=0"], "num_clients=0 is not allowed: an integer >= 1", "config"),
    ("num_clients not a number", ["num_clients=ten"], "num_clients=ten is not allowed", "config"),
    ("num_rounds 0", ["num_rounds=0"], "num_rounds=0 is not allowed: an integer >= 1", "config"),
    (
        "local_epochs 0",
        ["local_epochs=0"],
        "local_epochs=0 is not allowed: an integer >= 1",
        "config",
    ),
    (
        "centralized epochs 0",
        ["mode=centralized", "centralized.epochs=0"],
        "centralized.epochs=0 is not allowed: an integer >= 1",
        "config",
    ),
    (
        "val_fraction 1",
        ["partitioning.val_fraction=1"],
        "partitioning.val_fraction=1 is not allowed: a number in [0, 1)",
        "config",
    ),
    (
        "val_fraction negative",
        ["partitioning.val_fraction=-0.1"],
        "partitioning.val_fraction=-0.1 is not allowed: a number in [0, 1)",
        "config",
    ),
    (
        "val_fraction 0 but clients evaluate",
        ["partitioning.val_fraction=0"],
        "partitioning.val_fraction=0 is not allowed while clients evaluate (strategy.fraction_evaluate=0.5): "
        "they would have nothing to evaluate on",
        "config",
    ),
    ("batch_size 0", ["batch_size=0"], "batch_size=0 is not allowed: an integer >= 1", "config"),
    (
        "failure rate above 1",
        ["faults.client_failure_rate=1.5"],
        "faults.client_failure_rate=1.5 is not allowed: a fraction in [0, 1]",
        "config",
    ),
    (
        "straggler rate negative",
        ["faults.straggler_rate=-0.5"],
        "faults.straggler_rate=-0.5 is not allowed: a fraction in [0, 1]",
        "config",
    ),
    (
        "dirichlet alpha 0",
        [*DIRICHLET, "+partitioning.partitioner.alpha=0"],
        "partitioning.partitioner.alpha=0 is not allowed: a number > 0",
        "config",
    ),
    (
        "dirichlet alpha negative",
        [*DIRICHLET, "+partitioning.partitioner.alpha=-1"],
        "partitioning.partitioner.alpha=-1 is not allowed: a number > 0",
        "config",
    ),
    (
        "classes per partition above classes",
        [*PATHOLOGICAL, "+partitioning.partitioner.num_classes_per_partition=11"],
        "partitioning.partitioner.num_classes_per_partition=11 is not allowed: an integer from 1 to the "
        "10 classes of dataset=digits",
        "config",
    ),
    (
        "class assignment mode",
        [
            *PATHOLOGICAL,
            "+partitioning.partitioner.num_classes_per_partition=2",
            "+partitioning.partitioner.class_assignment_mode=nope",
        ],
        "partitioning.partitioner.class_assignment_mode=nope is not allowed: random, deterministic, "
        "first-deterministic",
        "config",
    ),
    (
        "shard size 0",
        [*SHARD, "+partitioning.partitioner.shard_size=0"],
        "partitioning.partitioner.shard_size=0 is not allowed: null or an integer >= 1",
        "config",
    ),
    (
        "num_partitions not num_clients",
        ["partitioning.partitioner.num_partitions=5"],
        "partitioning.partitioner.num_partitions=5 is not allowed: equal to num_clients=10",
        "config",
    ),
    (
        "model too big for the images",
        ["dataset.image_size=8"],
        "model (fedexp.models.CNN) cannot be built for dataset=digits: model=cnn needs image_size >= 14",
        "config",
    ),
    (
        "client cpus above machine",
        ["device.client_cpus=4096"],
        "device.client_cpus=4096 is not allowed: at most the",
        "config",
    ),
    (
        "image_folder without path",
        ["dataset=image_folder"],
        "dataset.path is not set: dataset=image_folder needs dataset.path=DIR",
        "config",
    ),
    (
        "image_folder missing path",
        ["dataset=image_folder", "dataset.path=/no/such/dir"],
        "dataset.path=/no/such/dir does not exist or is not a folder",
        "config",
    ),
    (
        "init_checkpoint missing",
        ["init_checkpoint=/no/such/model.pt"],
        "init_checkpoint=/no/such/model.pt is not allowed: a model.pt written by an earlier fedexp run "
        "(file not found)",
        "config",
    ),
    (
        "unknown group option",
        ["dataset=cifar100"],
        "dataset=cifar100 is not allowed: the dataset options are cifar10, digits, fashion_mnist, "
        "image_folder, mnist",
        "config",
    ),
    (
        "unknown strategy",
        ["strategy=nope"],
        "strategy=nope is not allowed: the strategy options are ditto, fedadagrad, fedadam, fedavg, "
        "fedavgm, fedbn, feddyn, fedmedian, fednova, fedper, fedprox, fedtrimmedavg, fedyogi, krum, "
        "qfedavg, scaffold",
        "config",
    ),
    (
        "unknown option in a sweep",
        ["-m", "model=cnn,nope"],
        "model=nope is not allowed: the model options are cnn, mlp",
        "config",
    ),
    (
        "strategy rejects a setting",
        ["+strategy.no_such_option=1"],
        "strategy (flwr.server.strategy.FedAvg) cannot be built from its settings:",
        "config",
    ),
    (
        "fedprox mu negative",
        ["strategy=fedprox", "strategy.proximal_mu=-1"],
        "strategy.proximal_mu=-1 is not allowed: a number >= 0 (0 trains as FedAvg)",
        "config",
    ),
    (
        "feddyn alpha 0",
        ["strategy=feddyn", "strategy.alpha=0"],
        "strategy.alpha=0 is not allowed: a number > 0",
        "config",
    ),
    (
        "scaffold server lr 0",
        ["strategy=scaffold", "strategy.server_learning_rate=0"],
        "strategy.server_learning_rate=0 is not allowed: a number > 0",
        "config",
    ),
    (
        "client half not importable",
        ["strategy.client._target_=nowhere.Client"],
        "strategy.client._target_=nowhere.Client cannot be imported (No module named 'nowhere')",
        "config",
    ),
    (
        "client half rejects a setting",
        ["+strategy.client.no_such_option=1"],
        "strategy.client (fedexp.federated.methods.ClientMethod) cannot be built: ClientMethod() takes no "
        "arguments",
        "config",
    ),
    (
        "client half is not a ClientMethod",
        ["strategy.client._target_=builtins.dict"],
        "strategy.client._target_=builtins.dict built a dict, not a fedexp.federated.methods.ClientMethod",
        "config",
    ),
    (
        "loss not importable",
        ["loss._target_=torch.nn.NoSuchLoss"],
        "loss._target_=torch.nn.NoSuchLoss cannot be imported",
        "config",
    ),
    (
        "augment crop above image",
        ["dataset.augment.crop_padding=32"],
        "dataset.augment.crop_padding=32 is not allowed: an integer from 0 (no crops) to "
        "dataset.image_size - 1 = 31",
        "config",
    ),
    (
        "augment flip not a boolean",
        ["dataset.augment.flip=no"],
        "dataset.augment.flip=no is not allowed: true or false",
        "config",
    ),
    (
        "fedbn without batch norm",
        ["strategy=fedbn", "model.batch_norm=false"],
        "strategy.client (fedexp.federated.methods.fedbn.FedBNClient) cannot work with model "
        "(fedexp.models.CNN): it has no BatchNorm layer for FedBN to keep local (strategy=fedbn sets "
        "model.batch_norm=true; leave it so)",
        "config",
    ),
    (
        "resnet18 without batch norm",
        ["model=resnet18", "model.batch_norm=false"],
        "model (fedexp.models.resnet18) cannot be built for dataset=digits: resnet18 has BatchNorm in "
        "every block: model.batch_norm must be true",
        "config",
    ),
    (
        "fedper head names no layer",
        ["strategy=fedper", "strategy.head=[nope]"],
        "strategy (fedexp.federated.methods.fedper.FedPer) cannot be built from its settings: "
        "strategy.head=['nope'] names no layer of the model (its top-level layers: conv1, conv2, fc1, "
        "fc2, fc3)",
        "config",
    ),
    (
        "all clients every negative",
        ["evaluation.all_clients_every=-1"],
        "evaluation.all_clients_every=-1 is not allowed: an integer >= 0",
        "config",
    ),
    (
        "client state nowhere",
        ["simulation.client_state=cloud"],
        "simulation.client_state=cloud is not allowed: auto, memory or disk",
        "config",
    ),
    (
        "seed negative",
        ["seed=-1"],
        "seed=-1 is not allowed: an integer from 0 to 2**32 - 1",
        "config",
    ),
    (
        "no server threads",
        ["simulation.max_workers=0"],
        "simulation.max_workers=0 is not allowed: an integer >= 1",
        "config",
    ),
    (
        "channels against the statistics",
        ["dataset=cifar10", "dataset.channels=1"],
        "dataset.channels=1 is not allowed: as many as the values of dataset.mean (3) and dataset.std (3)",
        "config",
    ),
    ("std zero", ["dataset.std=[0]"], "dataset.std=[0] is not allowed: numbers > 0", "config"),
    (
        "grayscale and RGB only for image folders",
        [
            "dataset=image_folder",
            "dataset.path=ROOT",
            "dataset.channels=2",
            "dataset.mean=[0.5,0.5]",
            "dataset.std=[0.5,0.5]",
        ],
        "dataset.channels=2 is not allowed: 1 (grayscale) or 3 (RGB) for image folders",
        "config",
    ),
    (
        "classes against the data",
        ["dataset.num_classes=5"],
        "dataset.num_classes=5 is not allowed: 10: dataset=digits has 10 classes (0, 1, 2, 3, 4, ...)",
        "data",
    ),
    (
        "channels against the data",
        ["dataset.channels=3", "dataset.mean=[0.3,0.3,0.3]", "dataset.std=[0.3,0.3,0.3]"],
        "dataset.channels=3 is not allowed: 1: the images of dataset=digits have 1 channel(s)",
        "data",
    ),
    (
        "unknown backend",
        ["simulation.backend=threads"],
        "simulation.backend=threads is not allowed: auto, ray or inline",
        "config",
    ),
    (
        "inline clients on a cluster",
        ["simulation.backend=inline", "simulation.ray_address=auto"],
        "simulation.backend=inline is not allowed: ray or auto with simulation.ray_address",
        "config",
    ),
    (
        "negative inline bound",
        ["simulation.inline_max_examples=-1"],
        "simulation.inline_max_examples=-1 is not allowed: an integer >= 0",
        "config",
    ),
    (
        "worker niceness below ours",
        ["simulation.worker_niceness=-5"],
        "simulation.worker_niceness=-5 is not allowed: null (this process's own",
        "config",
    ),
    (
        "unknown setting",
        ["num_client=3"],
        "num_client is not a fedexp setting (a typo? `fedexp --cfg job` lists every setting",
        "config",
    ),
    (
        "num_clients above examples",
        ["num_clients=2000"],
        "num_clients=2000 is not allowed: at most the 1437 training examples of dataset=digits",
        "data",
    ),
    (
        "dirichlet min size above examples",
        [
            *DIRICHLET,
            "+partitioning.partitioner.alpha=0.5",
            "+partitioning.partitioner.min_partition_size=200",
        ],
        "partitioning.partitioner.min_partition_size=200 is not allowed: at most 143",
        "data",
    ),
    (
        "dirichlet min size never met",
        [
            *DIRICHLET,
            "+partitioning.partitioner.alpha=0.1",
            "+partitioning.partitioner.min_partition_size=100",
        ],
        "partitioning.partitioner.min_partition_size=100 is not allowed with alpha=0.1: "
        "DirichletPartitioner could not give each of num_clients=10 clients 100 examples in 10 samplings",
        "data",
    ),
    (
        "shards above examples",
        [
            *SHARD,
            "+partitioning.partitioner.num_shards_per_partition=2",
            "+partitioning.partitioner.shard_size=100",
        ],
        "partitioning.partitioner.shard_size=100 is not allowed: small enough that num_clients=10 clients "
        "x 2 shard(s) x 100 examples fit in the 1437 training examples",
        "data",
    ),
    (
        "size skew leaves a client without validation",
        ["partitioning=square"],
        "num_clients=10 is too many for partitioning=square (SquarePartitioner) on the 1437 "
        "training examples of dataset=digits: the smallest client gets 3 example(s), 3 to "
        "train and 0 to validate (val_fraction=0.1); use num_clients=7 or fewer, or set "
        "strategy.fraction_evaluate=0",
        "data",
    ),
    (
        "a sweep cannot print one config",
        ["-m", "seed=0,1", "--cfg", "job"],
        "-m and --cfg job cannot go together: --cfg prints the config of one run",
        "config",
    ),
    (
        "no logger is an empty list, not null",
        ["logger=null"],
        "logger=null is not allowed: logger=[] chooses none of its options (csv, mlflow, "
        "tensorboard, wandb)",
        "config",
    ),
    (
        "partitioner gives empty clients",
        EXPONENTIAL,
        "num_clients=10 is too many for partitioning=iid (ExponentialPartitioner) on the 1437 "
        "training examples of dataset=digits: the smallest client gets 0 example(s), 0 to train "
        "and 0 to validate (val_fraction=0.1); use num_clients=5 or fewer",
        "data",
    ),
    (
        "clients without validation data",
        ["num_clients=200"],
        "partitioning.val_fraction=0.1 leaves 200 of 200 clients without validation examples",
        "data",
    ),
    (
        "torchvision files missing offline",
        ["dataset=mnist", "dataset.root=ROOT", "dataset.download=false"],
        "MNIST is not under dataset.root=ROOT and dataset.download=false: put train-images-idx3-ubyte, "
        "train-labels-idx1-ubyte, t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (or the same with .gz) "
        "in ROOT/MNIST/raw/",
        "data",
    ),
    (
        "download fails offline",
        ["dataset=cifar10", "dataset.root=ROOT"],
        "CIFAR10 is not under dataset.root=ROOT and downloading it failed (<urlopen error no network "
        "in this test>): put cifar-10-python.tar.gz, or its extracted cifar-10-batches-py/ folder, in "
        "ROOT, copied from a machine with network access (dataset=digits works offline)",
        "data",
    ),
]


@pytest.fixture
def fedexp_cli(monkeypatch, capsys, tmp_path):
    """Run `fedexp ARGS` in-process; Ray must not start; return (status, stderr, run_dir)."""
    import ray

    def no_ray(*a, **k):
        raise AssertionError("Ray was started")

    def no_network(*a, **k):
        raise urllib.error.URLError("no network in this test")

    monkeypatch.setattr(ray, "init", no_ray)
    monkeypatch.setattr(urllib.request, "urlopen", no_network)

    def run(*args: str, data_allowed: bool = True):
        if not data_allowed:

            def no_data(cfg):
                raise AssertionError("data was loaded")

            monkeypatch.setattr(
                fedexp.workload.Workload, "build", classmethod(lambda cls, cfg: no_data(cfg))
            )
        run_dir = tmp_path / "run"
        multirun = "-m" in args
        where = f"hydra.sweep.dir={tmp_path / 'sweep'}" if multirun else f"hydra.run.dir={run_dir}"
        monkeypatch.setattr(sys, "argv", ["fedexp", *args, where])
        with pytest.raises(SystemExit) as exit_info:
            main()
        out, err = capsys.readouterr()
        return exit_info.value.code, out, err, run_dir

    return run


@pytest.mark.parametrize(
    "overrides,message,stage",
    # the cases caught once the data is loaded are the whole suite's
    [
        pytest.param(*c[1:], id=c[0], marks=pytest.mark.slow if c[3] == "data" else ())
        for c in CASES
    ],
)
def test_bad_setting_is_one_clear_line(fedexp_cli, tmp_path, overrides, message, stage):
    root = str(tmp_path / "empty")
    overrides = [o.replace("ROOT", root) for o in overrides]
    status, out, err, run_dir = fedexp_cli(*overrides, data_allowed=stage == "data")
    assert status == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedexp: error: "), err
    assert message.replace("ROOT", root) in lines[-1], lines[-1]
    assert "Traceback" not in out + err
    if stage == "config":  # refused before Hydra created the run directory
        assert not run_dir.exists()
    else:  # the run directory records why the run did not happen
        res = json.loads((run_dir / "results.json").read_text())
        assert res["status"] == "failed" and message.replace("ROOT", root)[:40] in res["error"]


def test_device_cuda_without_cuda(fedexp_cli):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    status, _, err, _ = fedexp_cli("device=cuda", data_allowed=False)
    assert status == 2
    assert (
        "fedexp: error: device=cuda is not allowed: CUDA is not available on this machine "
        "(use device=cpu or device=auto)" in err
    )


@pytest.mark.parametrize("layout", ["empty", "no test"])
def test_image_folder_without_class_folders(fedexp_cli, tmp_path, layout):
    root = tmp_path / "imgs"
    (root / "train" / "cat").mkdir(parents=True)
    if layout == "empty":
        (root / "train" / "cat").rmdir()
    status, _, err, _ = fedexp_cli(
        "dataset=image_folder", f"dataset.path={root}", data_allowed=False
    )
    split = "train" if layout == "empty" else "test"
    assert status == 2
    assert f"dataset.path={root} has no {split}/<class>/ folders" in err


def test_init_checkpoint_of_another_model(fedexp_cli, tmp_path):
    ckpt = tmp_path / "model.pt"
    torch.save(MLP(1, 32, 10).state_dict(), ckpt)
    status, _, err, _ = fedexp_cli(f"init_checkpoint={ckpt}", data_allowed=False)
    assert status == 2
    assert (
        f"init_checkpoint={ckpt} is not allowed: it holds another model than the configured one "
        f"(fedexp.models.CNN on dataset=digits)"
    ) in err
    # same model, other dataset shape: named by the first differing entry
    status, _, err, _ = fedexp_cli(
        f"init_checkpoint={ckpt}", "model=mlp", "dataset.image_size=16", data_allowed=False
    )
    assert status == 2 and "net.1.weight has shape (200, 1024), the model needs (200, 256)" in err


def test_init_checkpoint_that_is_not_a_model(fedexp_cli, tmp_path):
    ckpt = tmp_path / "notes.pt"
    ckpt.write_text("not a checkpoint")
    status, _, err, _ = fedexp_cli(f"init_checkpoint={ckpt}", data_allowed=False)
    assert status == 2
    assert (
        f"init_checkpoint={ckpt} is not allowed: torch.load(weights_only=True) cannot read it as a state_dict"
        in err
    )


@pytest.mark.slow  # seconds of work (data, training or the command line): the whole suite runs it
def test_verbose_shows_the_traceback(fedexp_cli):
    status, _, err, _ = fedexp_cli("num_clients=0", "verbose=true", data_allowed=False)
    assert status == 2  # the exit status of a bad setting, with or without verbose
    assert "fedexp: error: num_clients=0 is not allowed" in err
    assert "Traceback" in err and "fedexp.errors.ConfigError: num_clients=0 is not allowed" in err


@pytest.mark.parametrize("left", ["results.json", "model.pt", "metrics.csv", ".fedexp-run"])
def test_a_used_run_directory_is_refused_before_hydra_writes(fedexp_cli, tmp_path, left):
    """Any output of a run (a killed one may have left only model.pt, or only its claim)
    makes the directory that run's."""
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / left).write_text('{"status": "completed"}')
    (run_dir / ".hydra" / "config.yaml").write_text("the earlier run's config\n")
    status, _, err, _ = fedexp_cli("num_rounds=3", data_allowed=False)
    assert status == 2
    assert (
        f"hydra.run.dir={run_dir} already holds {left} from another run; refusing to write into it"
        in err
    )
    assert (run_dir / left).read_text() == '{"status": "completed"}'
    assert (run_dir / ".hydra" / "config.yaml").read_text() == "the earlier run's config\n"
    assert not (run_dir / "main.log").exists()


def test_a_finished_sweep_directory_is_refused(fedexp_cli, tmp_path):
    (tmp_path / "sweep" / "0").mkdir(parents=True)
    (tmp_path / "sweep" / "0" / "results.json").write_text("{}")
    status, _, err, _ = fedexp_cli("-m", "seed=1,2", data_allowed=False)
    assert status == 2 and "already holds another sweep's results" in err


@pytest.mark.slow  # seconds of work (data, training or the command line): the whole suite runs it
def test_warnings_for_settings_that_do_nothing(make_cfg, caplog):
    with caplog.at_level(logging.WARNING, logger="fedexp"):
        checks.check(make_cfg("strategy.fraction_fit=0.3", "strategy.min_fit_clients=5"))
        checks.check(make_cfg("strategy.fraction_evaluate=0", "strategy.min_evaluate_clients=2"))
        checks.check(make_cfg("strategy.fraction_evaluate=0.2", "strategy.min_evaluate_clients=4"))
        checks.check(make_cfg("faults.straggler_rate=1"))
    text = caplog.text
    assert (
        "strategy.min_fit_clients=5 raises the 3 clients that fraction_fit=0.3 asks for: 5 clients train"
        in text
    )
    assert (
        "strategy.min_evaluate_clients=2 does nothing: fraction_evaluate=0 turns client-side evaluation off"
        in text
    )
    assert (
        "strategy.min_evaluate_clients=4 raises the 2 clients that fraction_evaluate=0.2 asks for: 4 clients evaluate"
        in text
    )
    assert "faults.straggler_rate=1 drops all 10 sampled clients every round" in text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fedexp"):
        checks.check(make_cfg())  # the defaults are quiet
    assert caplog.text == ""


@pytest.mark.parametrize(
    "args,extra",
    [
        (["-m", "hydra/launcher=joblib", "seed=0,1"], "joblib"),
        (["-m", "hydra/launcher=submitit_local", "seed=0,1"], "slurm"),
        (["-m", "hydra/launcher=slurm", "seed=0,1"], "slurm"),
        (["-m", "hparams_search=optuna_lr"], "optuna"),
    ],
    ids=["joblib", "submitit_local", "slurm", "optuna"],
)
def test_a_missing_hydra_plugin_is_one_line_naming_its_extra(
    fedexp_cli, monkeypatch, tmp_path, args, extra
):
    """As on a machine where the extra was not installed: Python cannot find the plugin."""
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name.startswith("hydra_plugins.") else find_spec(name, *a),
    )
    status, _out, err, _ = fedexp_cli(*args, data_allowed=False)
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1, err
    assert (
        "needs a Hydra plugin that is not installed" in lines[0]
        and f"pip install -e '.[{extra}]'" in lines[0]
    )
    assert not (tmp_path / "sweep").exists()


@pytest.mark.slow  # seconds of work (data, training or the command line): the whole suite runs it
@pytest.mark.parametrize(
    "sweep,message",
    [
        (("optimizer.lr=0.01,0.1x",), "job 1 of the sweep (optimizer.lr=0.1x): optimizer.lr=0.1x"),
        (
            ("partitioning=iid,dirichlet", "partitioning.alpha=-1", "seed=0,1"),
            "job 2 of the sweep (partitioning=dirichlet, seed=0): partitioning.partitioner.alpha=-1",
        ),
    ],
    ids=["value", "option"],
)
def test_a_bad_value_in_a_sweep_is_refused_before_any_job(fedexp_cli, tmp_path, sweep, message):
    """Every job's settings are checked before the first job starts: the bad job is named
    in one line, and no job ran (no sweep directory, no data loaded)."""
    status, _, err, _ = fedexp_cli("-m", *sweep, "num_rounds=2", data_allowed=False)
    assert status == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"fedexp: error: {message} is not allowed")
    assert not (tmp_path / "sweep").exists()
