"""The typed config system every stage uses (auxseg.config)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest
import yaml

from auxseg.config import ConfigError, load_config, save_config, to_dict


@dataclass
class Optim:
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass
class Example:
    out_dir: str = "runs/x"
    iters: int = 10
    k: int | None = None
    use_amp: bool = False
    layers: list[str] = field(default_factory=lambda: ["layer4"])
    optim: Optim = field(default_factory=Optim)


def write(path, data):
    path.write_text(yaml.safe_dump(data))
    return path


def test_defaults_without_file():
    cfg = load_config(Example)
    assert cfg == Example()


def test_file_values_and_nested_types(tmp_path):
    path = write(tmp_path / "c.yaml", {"iters": 5, "k": 16, "optim": {"name": "adamw", "lr": 1}})
    cfg = load_config(Example, path)
    assert cfg.iters == 5 and cfg.k == 16
    assert cfg.optim.name == "adamw"
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)  # int accepted for float
    assert cfg.optim.betas == (0.9, 0.999)  # untouched default kept


def test_unknown_key_names_nearest(tmp_path):
    path = write(tmp_path / "c.yaml", {"optim": {"lrr": 0.1}})
    with pytest.raises(ConfigError) as err:
        load_config(Example, path)
    msg = str(err.value)
    assert "optim.lrr" in msg and "did you mean 'optim.lr'" in msg and str(path) in msg


def test_unknown_top_level_key_from_override():
    with pytest.raises(ConfigError, match="did you mean 'iters'"):
        load_config(Example, overrides=["itres=3"])


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("iters=abc", "iters: expected an integer"),
        ("iters=1.5", "iters: expected an integer"),
        ("use_amp=3", "use_amp: expected true or false"),
        ("optim.name=adam", "did you mean 'adamw'"),
        ("optim.betas=[0.9]", "expected 2 values"),
        ("layers=layer4", "layers: expected a list"),
        ("optim=3", "optim: expected a mapping"),
    ],
)
def test_wrong_types_rejected(override, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[")):
        load_config(Example, overrides=[override])


def test_inheritance_and_overrides(tmp_path):
    write(tmp_path / "base.yaml", {"iters": 100, "optim": {"name": "adamw", "lr": 0.5}})
    (tmp_path / "sub").mkdir()
    child = write(tmp_path / "sub" / "child.yaml", {"_base_": "../base.yaml", "optim": {"lr": 0.1}})
    cfg = load_config(Example, child, overrides=["iters=7", "k=null", "layers=[layer3,layer4]"])
    assert cfg.iters == 7  # override beats file beats base
    assert cfg.optim.name == "adamw"  # inherited from base, merged key by key
    assert cfg.optim.lr == 0.1
    assert cfg.k is None
    assert cfg.layers == ["layer3", "layer4"]


def test_multiple_bases_later_wins(tmp_path):
    write(tmp_path / "a.yaml", {"iters": 1, "out_dir": "a"})
    write(tmp_path / "b.yaml", {"iters": 2})
    child = write(tmp_path / "c.yaml", {"_base_": ["a.yaml", "b.yaml"]})
    cfg = load_config(Example, child)
    assert (cfg.iters, cfg.out_dir) == (2, "a")


def test_circular_base_is_an_error(tmp_path):
    write(tmp_path / "a.yaml", {"_base_": "b.yaml"})
    write(tmp_path / "b.yaml", {"_base_": "a.yaml"})
    with pytest.raises(ConfigError, match="circular"):
        load_config(Example, tmp_path / "a.yaml")


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(Example, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("iters: [1,\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(Example, bad)


def test_malformed_override():
    with pytest.raises(ConfigError, match="key.subkey=value"):
        load_config(Example, overrides=["iters"])


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(Example, overrides=["optim.name=adamw", "k=12"])
    path = save_config(cfg, tmp_path / "out" / "config.yaml")
    assert yaml.safe_load(path.read_text()) == to_dict(cfg)
    assert load_config(Example, path) == cfg
    # no temporary files left behind by the atomic write
    assert [p.name for p in path.parent.iterdir()] == ["config.yaml"]


@dataclass
class Outer:
    name: str = "outer"
    inner: Example = field(default_factory=Example)


def test_nested_section_inherits_its_own_base(tmp_path):
    (tmp_path / "stage").mkdir()
    write(tmp_path / "stage" / "tiny.yaml", {"iters": 3, "optim": {"name": "adamw"}})
    top = write(tmp_path / "all.yaml", {"inner": {"_base_": "stage/tiny.yaml", "optim": {"lr": 0.5}}})
    cfg = load_config(Outer, top, overrides=["inner.k=4"])
    assert cfg.inner.iters == 3 and cfg.inner.optim.name == "adamw"
    assert cfg.inner.optim.lr == 0.5 and cfg.inner.k == 4
