from dataclasses import FrozenInstanceError, dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from vfmvae.config import ConfigError, ExistingPath, dump_yaml, load_config


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.0, 0.99)
    clip: float | None = None


@dataclass(frozen=True)
class RunConfig:
    name: str
    steps: int = 10
    precision: Literal["fp32", "bf16"] = "fp32"
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: ExistingPath | None = None
    tags: list[str] = field(default_factory=list)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_recipe_and_overrides_build_typed_config(tmp_path):
    recipe = write(tmp_path, "name: a\nsteps: 5\noptim:\n  lr: 1e-3\n  betas: [0.9, 0.95]\ntags: [x]\n")
    cfg = load_config(RunConfig, recipe, ["optim.lr=2e-4", "precision=bf16", "optim.clip=1"])
    assert cfg.optim.lr == pytest.approx(2e-4) and isinstance(cfg.optim.lr, float)
    assert cfg.optim.betas == (0.9, 0.95)
    assert cfg.optim.clip == 1.0 and isinstance(cfg.optim.clip, float)
    assert cfg.precision == "bf16" and cfg.steps == 5 and cfg.tags == ["x"]
    with pytest.raises(FrozenInstanceError):
        cfg.steps = 3  # frozen


def test_yaml_scientific_notation_without_dot_is_a_float(tmp_path):
    # PyYAML reads `1e-4` as a string; a float field must still accept it.
    cfg = load_config(RunConfig, write(tmp_path, "name: a\noptim: {lr: 1e-4}\n"))
    assert cfg.optim.lr == pytest.approx(1e-4)


@pytest.mark.parametrize(
    "text, overrides, message",
    [
        ("name: a\noptim: {lr: 1.0, lrr: 2}\n", [], "optim.lrr"),
        ("name: a\nstepz: 3\n", [], "stepz"),
        ("name: a\n", ["optim.bogus=1"], "optim.bogus"),
    ],
)
def test_unknown_keys_are_rejected_with_their_dotted_name(tmp_path, text, overrides, message):
    recipe = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as err:
        load_config(RunConfig, recipe, overrides)
    assert str(recipe) in str(err.value)
    assert "unknown key" in str(err.value)


@pytest.mark.parametrize(
    "text, message",
    [
        ("name: a\nsteps: many\n", "steps: expected an integer"),
        ("name: a\nsteps: 1.5\n", "steps: expected an integer"),
        ("name: a\noptim: {lr: fast}\n", "optim.lr: expected a number"),
        ("name: a\nprecision: fp8\n", "precision: expected one of"),
        ("name: a\noptim: {betas: [0.9]}\n", "optim.betas: expected a list of 2"),
        ("name: 3\n", "name: expected a string"),
        ("name: a\noptim: 5\n", "optim"),
    ],
)
def test_wrong_types_are_rejected_with_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(RunConfig, write(tmp_path, text))


def test_missing_path_and_missing_required_key(tmp_path):
    with pytest.raises(ConfigError, match=r"data: path does not exist: .*nowhere"):
        load_config(RunConfig, write(tmp_path, f"name: a\ndata: {tmp_path / 'nowhere'}\n"))
    cfg = load_config(RunConfig, write(tmp_path, f"name: a\ndata: {tmp_path}\n"))
    assert cfg.data == tmp_path
    with pytest.raises(ConfigError, match="missing required key name"):
        load_config(RunConfig, write(tmp_path, "steps: 3\n"))


def test_bad_recipe_files(tmp_path):
    with pytest.raises(ConfigError, match="recipe file not found"):
        load_config(RunConfig, tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(RunConfig, write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(RunConfig, write(tmp_path, "name: [a\n"))
    with pytest.raises(ConfigError, match="must look like"):
        load_config(RunConfig, None, ["name"])
    with pytest.raises(ConfigError, match="is a value, not a section"):
        load_config(RunConfig, None, ["name=a", "name.x=1"])


def test_dump_yaml_round_trips(tmp_path):
    cfg = load_config(RunConfig, None, ["name=a", "optim.clip=0.5", f"data={tmp_path}", "tags=[p, q]"])
    again = load_config(RunConfig, write(tmp_path, dump_yaml(cfg)))
    assert again == cfg


def test_every_shipped_recipe_loads(tmp_path):
    from vfmvae.data.loader import DataConfig
    from vfmvae.data.synthetic import SyntheticConfig
    from vfmvae.diffusion_training import DiffusionTrainConfig
    from vfmvae.tokenizer_training.config import TokenizerTrainConfig

    root = Path(__file__).resolve().parents[1] / "configs"
    schemas = {"data/synthetic-demo.yaml": SyntheticConfig, "data/imagenet-256.yaml": DataConfig}
    schemas.update(
        {f"tokenizer/{n}.yaml": TokenizerTrainConfig for n in ("tiny", "stage0", "stage1", "stage2", "stage3")}
    )
    schemas.update(
        {
            f"diffusion/{n}.yaml": DiffusionTrainConfig
            for n in ("tiny", "lightningdit-xl1", "lightningdit-xl1-stage1", "reg-sit-xl1")
        }
    )
    # configs/pipeline/ recipes are loaded by tests/test_pipeline.py (every command line parsed)
    recipes = sorted(str(p.relative_to(root)) for p in root.rglob("*.yaml") if p.parent.name != "pipeline")
    assert set(recipes) == set(schemas)
    for rel in recipes:
        schema = schemas[rel]
        overrides = {
            DataConfig: [f"source={tmp_path}"],
            TokenizerTrainConfig: [f"data.source={tmp_path}"],
            DiffusionTrainConfig: [f"data.cache={tmp_path}"],
        }.get(schema, [])
        load_config(schema, root / rel, overrides)
