import dataclasses

import pytest

from salad_lite.config import (
    REMOVED_FIELDS,
    SECTIONS,
    ConfigError,
    ModelConfig,
    SaladConfig,
    TrainConfig,
    paper_config,
    profile_config,
)
from salad_lite.files import CorruptFileError


def test_paper_defaults_live_in_one_place():
    cfg = paper_config("nih")
    assert (cfg.loss.temperature, cfg.loss.latent_weight, cfg.train.memory_momentum) == (0.1, 0.25, 0.5)
    assert (cfg.score.k, cfg.train.batch_size, cfg.train.lr, cfg.train.betas) == (100, 16, 1e-4, (0.5, 0.999))
    assert (cfg.train.pretrain_epochs, cfg.train.rounds, cfg.train.epochs_per_round) == (50, 10, 50)
    assert (cfg.model.arch, cfg.model.image_size, cfg.model.latent_dim) == ("conv", 256, 200)
    mura = paper_config("mura")
    assert (mura.model.arch, mura.model.image_size) == ("resnet18", 512)
    assert profile_config("full", "mura") == mura


@pytest.mark.parametrize("profile", ["smoke", "default", "full"])
@pytest.mark.parametrize("dataset", ["nih", "mura", "folder"])
def test_json_round_trip(profile, dataset, tmp_path):
    cfg = profile_config(profile, dataset, data_root="/data/x")
    assert SaladConfig.from_json(cfg.to_json()) == cfg
    cfg.to_json(tmp_path / "c.json")
    assert SaladConfig.from_json(tmp_path / "c.json") == cfg


def test_frozen_and_unknown_fields():
    cfg = SaladConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.lr = 1.0
    with pytest.raises(ValueError, match="unknown TrainConfig field"):
        SaladConfig.from_dict({"train": {"learning_rate": 1.0}})
    with pytest.raises(ValueError, match="unknown profile"):
        profile_config("huge")


def test_progressive_schedules():
    t = TrainConfig(rounds=4, prototype_fraction_start=0.25, prototype_fraction_end=1.0,
                    neighbours_start=4, neighbours_end=10)
    assert [t.prototype_fraction(r) for r in range(1, 5)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert [t.neighbours(r) for r in range(1, 5)] == [4, 6, 8, 10]
    with pytest.raises(ValueError, match="round_index"):
        t.neighbours(0)


BAD_VALUES = [
    ("train", "batch_size", -4, r"train.batch_size must be >= 1, got -4"),
    ("train", "batch_size", True, r"train.batch_size must be an int, got True \(bool\)"),
    ("train", "batch_size", 16.0, r"train.batch_size must be an int, got 16.0 \(float\)"),
    ("train", "epochs_per_round", -1, r"train.epochs_per_round must be >= 0, got -1"),
    ("train", "epochs_per_round", 0, r"train.epochs_per_round must be >= 1 when train.rounds = 10 > 0"),
    ("train", "pretrain_epochs", -1, r"train.pretrain_epochs must be >= 0"),
    ("train", "rounds", -2, r"train.rounds must be >= 0, got -2"),
    ("train", "lr", 0.0, r"train.lr must be > 0, got 0.0"),
    ("train", "lr", float("inf"), r"train.lr must be a finite number, got inf"),
    ("train", "lr", "1e-3", r"train.lr must be a finite number, got '1e-3' \(str\)"),
    ("train", "betas", (0.5, 1.0), r"train.betas must be in \[0.0, 1.0\), got \(0.5, 1.0\)"),
    ("train", "betas", (0.5,), r"train.betas must hold 2 values"),
    ("train", "weight_decay", -0.1, r"train.weight_decay must be >= 0.0"),
    ("train", "memory_momentum", 0.0, r"train.memory_momentum must be in \(0.0, 1.0\], got 0.0"),
    ("train", "memory_momentum", 1.5, r"train.memory_momentum must be in \(0.0, 1.0\], got 1.5"),
    ("train", "prototype_fraction_start", 0.0, r"train.prototype_fraction_start must be in \(0.0, 1.0\]"),
    ("train", "prototype_fraction_end", 1.2, r"train.prototype_fraction_end must be in \(0.0, 1.0\]"),
    ("train", "neighbours_start", 0, r"train.neighbours_start must be >= 1"),
    ("train", "neighbours_end", 0, r"train.neighbours_end must be >= 1"),
    ("train", "validate_every", 0, r"train.validate_every must be >= 1"),
    ("train", "seed", -1, r"train.seed must be in \[0, 4294967295\]"),
    ("train", "amp", 1, r"train.amp must be true or false, got 1 \(int\)"),
    ("train", "sync_batchnorm", "yes", r"train.sync_batchnorm must be true or false, got 'yes' \(str\)"),
    ("loss", "temperature", 0.0, r"loss.temperature must be > 0, got 0.0"),
    ("loss", "temperature", float("nan"), r"loss.temperature must be a finite number, got nan"),
    ("loss", "latent_weight", -1.0, r"loss.latent_weight must be >= 0.0"),
    ("loss", "num_views", -1, r"loss.num_views must be >= 0"),
    ("loss", "anchor_neighbours", 0, r"loss.anchor_neighbours must be >= 1"),
    ("loss", "reconstruction", "l2", r"loss.reconstruction must be one of \['mse', 'l1', 'none'\], got 'l2'"),
    ("loss", "use_instance", "yes", r"loss.use_instance must be true or false"),
    ("score", "k", 0, r"score.k must be >= 1, got 0"),
    ("score", "k_grid", (5, 0), r"score.k_grid must be >= 1, got \(5, 0\)"),
    ("score", "k_grid", (), r"score.k_grid must hold at least one value"),
    ("score", "discard_options", (1,), r"score.discard_options\[0\] must be true or false"),
    ("score", "bank", "faiss", r"score.bank must be one of \['memory', 'embeddings'\]"),
    ("score", "rule", "Paper", r"score.rule must be one of"),
    ("data", "anomaly_ratio", 1.0, r"data.anomaly_ratio must be in \[0.0, 1.0\), got 1.0"),
    ("data", "anomaly_ratio", -0.1, r"data.anomaly_ratio must be in \[0.0, 1.0\)"),
    ("data", "replicates", 0, r"data.replicates must be >= 1, got 0"),
    ("data", "max_train_images", -5, r"data.max_train_images must be >= 0"),
    ("data", "data_root", 2020, r"data.data_root must be a str, got 2020 \(int\)"),
    ("data", "dataset", "chexpert", r"data.dataset must be one of \['nih', 'mura', 'folder'\]"),
    ("model", "image_size", 100, r"model.image_size=100 is not supported by arch='conv': use a power of two from 32 to 4096"),
    ("model", "image_size", 32.0, r"model.image_size must be an int, got 32.0"),
    ("model", "latent_dim", 0, r"model.latent_dim must be >= 1"),
    ("model", "width", -8, r"model.width must be >= 1"),
    ("model", "in_channels", 0, r"model.in_channels must be 1: every loader of salad_lite gives one-channel"),
    ("model", "in_channels", 3, r"model.in_channels must be 1: every loader"),
    ("data", "class_map", ("NORMAL",), r"data.class_map entries must be FOLDER=0 \(normal\) or FOLDER=1"),
    ("data", "class_map", ("A=0", "A=1"), r"data.class_map names folder 'A' twice \(A=0 and A=1\)"),
    ("data", "class_map", ("A=0", "B=1"), r"data.class_map labels class folders: it needs data.dataset 'folder'"),
    ("data", "class_map", "A=0", r'data.class_map must be a list \(e.g. \["NORMAL=0", "PNEUMONIA=1"\]\)'),
    ("data", "class_map", ("A=0", "B=0"), r"data.class_map labels no folder abnormal \(1\)"),
]


@pytest.mark.parametrize(("section", "name", "value", "message"), BAD_VALUES)
def test_every_field_is_validated_where_it_enters(section, name, value, message):
    with pytest.raises(ConfigError, match=message):  # built through replace()
        SaladConfig().replace(**{section: {name: value}})
    with pytest.raises(ConfigError, match=message):  # built directly
        SECTIONS[section](**{name: value})
    data = SaladConfig().to_dict()
    data[section][name] = list(value) if isinstance(value, tuple) else value
    with pytest.raises(ConfigError, match=rf"run.json: {message}"):  # loaded from JSON
        SaladConfig.from_dict(data, source="run.json")


def test_the_architecture_sets_the_smallest_image():
    with pytest.raises(ConfigError, match=r"model.image_size=32 is not supported by arch='resnet18'.*from 64 to 4096"):
        ModelConfig(arch="resnet18", image_size=32)
    assert ModelConfig(arch="resnet18", image_size=64).image_size == 64
    assert ModelConfig(arch="conv", image_size=32).image_size == 32


def test_ints_become_floats_and_lists_tuples():
    cfg = SaladConfig.from_dict({"train": {"lr": 1, "betas": [0, 0.5]}, "score": {"k_grid": [3, 7]}})
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.train.betas == (0.0, 0.5) and cfg.score.k_grid == (3, 7)
    assert SaladConfig.from_json(cfg.to_json()) == cfg


def test_old_json_with_the_removed_chunk_size_still_loads(tmp_path):
    data = SaladConfig().to_dict()
    data["score"]["chunk_size"] = 4096  # written by salad_lite before chunk_size went
    del data["score"]["k_grid"], data["score"]["discard_options"]  # ... and before the grid was configurable
    cfg = SaladConfig.from_dict(data)
    assert cfg == SaladConfig() and ("score", "chunk_size") in REMOVED_FIELDS
    assert cfg.score.k_grid == (1, 5, 10, 20, 50, 100) and cfg.score.discard_options == (True, False)
    with pytest.raises(ConfigError, match=r"unknown ModelConfig field\(s\) \['model.chunk_size'\]"):
        SaladConfig.from_dict({"model": {"chunk_size": 4096}})  # removed from score only


def test_replace_names_unknown_sections_and_fields_and_its_example_runs():
    cfg = SaladConfig().replace(train={"rounds": 2}, loss={"temperature": 0.2})  # the docstring's example
    assert (cfg.train.rounds, cfg.loss.temperature) == (2, 0.2)
    with pytest.raises(ConfigError, match=r"unknown LossConfig field\(s\) \['loss.tau'\]"):
        SaladConfig().replace(loss={"tau": 0.2})
    with pytest.raises(ConfigError, match=r"unknown config section 'optim'"):
        SaladConfig().replace(optim={"lr": 1.0})
    with pytest.raises(ConfigError, match=r"train must be a TrainConfig, got 3"):
        SaladConfig(train=3)


def test_a_corrupt_config_file_is_named(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"train": {"lr": ')
    with pytest.raises(CorruptFileError, match=rf"configuration {path} is not valid JSON"):
        SaladConfig.from_json(path)
    path.write_text('{"train": {"batch_size": 0}}')
    with pytest.raises(ConfigError, match=rf"{path}: train.batch_size must be >= 1, got 0"):
        SaladConfig.from_json(path)
    with pytest.raises(ConfigError, match=r"section 'train' must be an object"):
        SaladConfig.from_dict({"train": [1]})
    SaladConfig().to_json(path)  # written atomically: no temporary file stays
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]


@pytest.mark.parametrize(("text", "message"), [
    ("", "got an empty string"),
    ("[1]", "must hold a JSON object, got list"),
])
def test_from_json_refuses_empty_and_non_object_text(text, message):
    with pytest.raises(ConfigError, match=message):
        SaladConfig.from_json(text)


def test_from_json_names_a_folder(tmp_path):
    with pytest.raises(CorruptFileError, match=rf"configuration {tmp_path} is a folder"):
        SaladConfig.from_json(tmp_path)


@pytest.mark.parametrize(("changes", "message"), [
    ({"train": {"seed": 2**70}}, r"train.seed must be in \[0, 4294967295\]"),
    ({"model": {"image_size": 2**40}}, r"model.image_size=1099511627776 is not supported"),
    ({"train": {"pretrain_epochs": 0, "rounds": 0}},
     r"train.pretrain_epochs \+ train.rounds \* train.epochs_per_round must be >= 1 .*got 0 \+ 0 \* 50"),
])
def test_values_beyond_what_the_trainer_can_use_are_refused(changes, message):
    with pytest.raises(ConfigError, match=message):
        SaladConfig().replace(**changes)


def test_a_class_map_is_stored_in_one_spelling():
    from salad_lite.config import DataConfig

    same = [DataConfig(dataset="folder", class_map=entries).class_map
            for entries in (("NORMAL=0", "PNEUMONIA=1"), ("PNEUMONIA=1", "NORMAL= 0"), ["PNEUMONIA=1 ", "NORMAL=0"])]
    assert same == [("NORMAL=0", "PNEUMONIA=1")] * 3
    assert DataConfig(dataset="folder", class_map=("a=b c=1", "n=0")).class_map == ("a=b c=1", "n=0")
    import unicodedata

    composed, decomposed = (unicodedata.normalize(form, "Normál") for form in ("NFC", "NFD"))
    assert DataConfig(dataset="folder", class_map=(f"{decomposed}=0", "Abn=1")).class_map == \
        DataConfig(dataset="folder", class_map=(f"{composed}=0", "Abn=1")).class_map == ("Abn=1", f"{composed}=0")
    assert DataConfig(dataset="folder", class_map=("NORMAL/=0", "Abn=1")).class_map == ("Abn=1", "NORMAL=0")
    with pytest.raises(ConfigError, match="twice"):  # the same folder in two spellings
        DataConfig(dataset="folder", class_map=(f"{decomposed}=0", f"{composed}=1"))
