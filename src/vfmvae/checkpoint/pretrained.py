"""`save_pretrained` / `from_pretrained` for every model, after the diffusers convention.

A model folder is self-describing: `config.json` (architecture name, format version, package version
and the constructor config) plus `model.safetensors`. Models take one frozen dataclass config; the
mixin rebuilds the model from it and loads the weights strictly, listing every missing, unexpected or
mis-shaped key when they do not match. Each architecture has its own format version: when the shape of its
config changes, it bumps `format_version` and `upgrade_config` reads the older folders (they are not rewritten).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn
from torch.nn.modules.module import (
    register_module_module_registration_hook,
    register_module_parameter_registration_hook,
)

from vfmvae.checkpoint.atomic import atomic_directory, atomic_write_text
from vfmvae.checkpoint.serialize import CheckpointFormatError, load_tensors, save_tensors, tensor_shapes
from vfmvae.config import ConfigError, config_from_dict, config_to_dict
from vfmvae.version import __version__

__all__ = [
    "PretrainedMixin",
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "FORMAT_VERSION",
    "resolve_model_dir",
    "load_state_dict_strict",
    "read_model_config",
    "load_pretrained",
    "check_model_output_dir",
    "check_config_against_header",
    "check_diffusers_model_folder",
    "build_budget",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1  # the first format version of every architecture; see PretrainedMixin.format_version
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

M = TypeVar("M", bound="PretrainedMixin")

# architecture name -> class, filled by PretrainedMixin.__init_subclass__ so `load_pretrained` can dispatch.
_ARCHITECTURES: dict[str, type[PretrainedMixin]] = {}
# Our own architectures by name, with the module that defines (and so registers) each: `load_pretrained` imports it
# on first use, as transformers' auto classes map a model type to its module, so that this layer names the model
# modules above it without importing them.
_OWN_ARCHITECTURES = {"VFMVAE": "vfmvae.tokenizer.model", "DiffusionTransformer": "vfmvae.diffusion.model"}


def resolve_model_dir(path_or_id: str | Path, *, what: str = "model", revision: str | None = None) -> Path:
    """A local folder as is; else a Hub repo id `owner/name` (or `owner/name@revision`) through huggingface_hub.

    Hub ids go through `huggingface_hub.snapshot_download`, so its cache (HF_HUB_CACHE / HF_HOME), HF_HUB_OFFLINE
    (cache only, no network) and revisions (a branch, tag or commit) behave as for any Hub model. Only the
    config and weight files are fetched.
    """
    path = Path(path_or_id)
    if path.exists():
        if not path.is_dir():
            raise FileNotFoundError(f"{what} path {path} is a file; expected a folder with {CONFIG_NAME}")
        return path
    text = str(path_or_id)
    if path.parent != Path(".") and path.parent.is_dir():
        # `runs/tok` whose `runs/` exists here is a local path that is missing, not a hub repo to look up.
        raise FileNotFoundError(f"{what} folder not found: {path} ({path.parent} exists, but has no {path.name!r})")
    repo_id, _, at_revision = text.partition("@")
    if _HUB_ID.match(repo_id):
        revision = revision or at_revision or None
        try:
            from huggingface_hub import constants, snapshot_download
        except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
            raise FileNotFoundError(
                f"{what} folder not found: {path} (and huggingface_hub, needed for Hub ids, is missing)"
            ) from None
        try:
            return Path(
                snapshot_download(repo_id, revision=revision, allow_patterns=[CONFIG_NAME, "*.safetensors", "*.json"])
            )
        except Exception as err:  # offline, unknown repo or revision, no permission, ...
            at = f" at revision {revision!r}" if revision else ""
            if constants.HF_HUB_OFFLINE:
                raise FileNotFoundError(
                    f"{what} {text!r} is not a local folder, and HF_HUB_OFFLINE is set while the Hub cache "
                    f"({constants.HF_HUB_CACHE}) has no copy of {repo_id}{at}. Download it once online "
                    f"(`hf download {repo_id}`), or pass a local folder."
                ) from None
            raise FileNotFoundError(
                f"{what} {text!r} is not a local folder and could not be fetched from the Hub{at} "
                f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). "
                "On a machine with internet run "
                f"`hf download {repo_id} --local-dir DIR`, copy DIR here and pass its path."
            ) from None
    raise FileNotFoundError(
        f"{what} folder not found: {path} (pass a folder containing {CONFIG_NAME} and {WEIGHTS_NAME}, "
        "or a Hub repo id owner/name[@revision])"
    )


def check_model_output_dir(directory: str | Path, *, option: str = "output folder") -> Path:
    """Refuse to write a model into a folder that holds something other than a vfmvae model folder.

    A new or empty folder, or one whose `config.json` is ours, is fine: saving replaces only
    `config.json` and the weights and keeps every other file. Anything else (a training run, a user's
    notes) is refused before any work is done, so nothing we did not write is ever deleted or mixed.
    """
    directory = Path(directory)
    if not directory.exists():
        return directory
    if not directory.is_dir():
        raise FileExistsError(f"{option} {directory} is a file; pass a new or empty folder")
    if not any(directory.iterdir()):
        return directory
    try:
        read_model_config(directory)
    except CheckpointFormatError:
        raise FileExistsError(
            f"{option} {directory} is not empty and is not a vfmvae model folder (no valid {CONFIG_NAME}); "
            "refusing to write into it. Pass a new or empty folder, or move its contents away first."
        ) from None
    return directory


def read_model_config(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointFormatError(f"{path} not found: {Path(directory)} is not a vfmvae model folder")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointFormatError(f"{path}: corrupt JSON ({err})") from None
    except RecursionError:  # thousands of nested brackets
        raise CheckpointFormatError(f"{path}: corrupt JSON (nested too deeply)") from None
    if not isinstance(meta, dict):
        raise CheckpointFormatError(f"{path}: expected a JSON object")
    for key in ("architecture", "config"):
        if key not in meta:
            raise CheckpointFormatError(f"{path}: missing key {key!r}")
    version = meta.setdefault("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckpointFormatError(f"{path}: format_version must be a positive integer, got {version!r}")
    known = _ARCHITECTURES.get(meta["architecture"])
    newest = (
        known.format_version
        if known is not None
        else max([FORMAT_VERSION, *(c.format_version for c in _ARCHITECTURES.values())])
    )
    if version > newest:
        raise CheckpointFormatError(
            f"{path}: format_version {version} is newer than this vfmvae supports ({newest}); upgrade vfmvae"
        )
    return meta


def check_shapes(
    expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]], *, source: str, target: str
) -> None:
    """One readable error listing every missing, unexpected or mis-shaped key (at most 10 of each)."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = [
        f"{k}: file {found[k]} vs model {expected[k]}"
        for k in sorted(set(found) & set(expected))
        if tuple(found[k]) != tuple(expected[k])
    ]
    if missing or unexpected or shapes:
        lines = [f"{source} does not match {target}:"]
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
            if items:
                shown = ", ".join(items[:10]) + (f", ... ({len(items)} in all)" if len(items) > 10 else "")
                lines.append(f"  {title}: {shown}")
        raise CheckpointFormatError("\n".join(lines))


def load_state_dict_strict(module: nn.Module, state: dict[str, torch.Tensor], *, source: str) -> None:
    """`load_state_dict(strict=True)` with one readable error listing every mismatch."""
    check_shapes(
        {k: tuple(v.shape) for k, v in module.state_dict().items()},
        {k: tuple(v.shape) for k, v in state.items()},
        source=source,
        target=type(module).__name__,
    )
    module.load_state_dict(state, strict=True)


class _OverBudget(BaseException):
    """Raised from inside a model's constructor when it registers more than the weight file can hold (a
    BaseException, so that no `except Exception` inside a library's constructor swallows it)."""

    def __init__(self, kind: str, limit: int) -> None:
        super().__init__(kind, limit)
        self.kind, self.limit = kind, limit


@contextlib.contextmanager
def build_budget(*, max_parameters: int, max_modules: int) -> Iterator[None]:
    """Abort any module built in this thread that registers more than `max_parameters` parameters or
    `max_modules` submodules in all: a count in a config (a depth of 1e6) then costs milliseconds, not a hang.

    It counts through torch's global registration hooks, so it bounds any architecture (ours, transformers' or
    timm's VFMs) without knowing its structure.
    """
    owner, counts = threading.get_ident(), {"parameters": 0, "modules": 0}

    def count(kind: str, limit: int) -> None:
        if threading.get_ident() == owner:
            counts[kind] += 1
            if counts[kind] > limit:
                raise _OverBudget(kind, limit)

    handles = [
        register_module_parameter_registration_hook(lambda *_: count("parameters", max_parameters)),
        register_module_module_registration_hook(lambda *_: count("modules", max_modules)),
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def header_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the tensors of one or more safetensors files, from their headers alone."""
    found: dict[str, tuple[int, ...]] = {}
    for file in files:
        found.update(tensor_shapes(file))
    return found


def check_config_against_header(
    build: Callable[[], nn.Module],
    weights: Path | list[Path],
    *,
    config_path: Path,
    what: str,
    state_dict: Callable[[nn.Module], dict[str, torch.Tensor]] = lambda module: module.state_dict(),
) -> None:
    """Check every size and count a config declares against the weight file's header, before anything is built.

    `build()` constructs the model from the config; it runs on the meta device (no memory) under a budget of
    parameters and submodules derived from the number of tensors the header lists, so a depth or layer count far
    beyond the weights is refused as soon as the construction passes the budget. The built model's tensor names
    and shapes must then equal the header's (block counts, table sizes, widths, positional tables). Sizes that no
    weight records (a latent grid, an image size, head counts) are bounded by the config classes themselves.
    Every refusal is one `CheckpointFormatError` naming `config_path`.
    """
    files = weights if isinstance(weights, list) else [weights]
    found = header_shapes(files)
    shown = files[0] if len(files) == 1 else files[0].parent
    try:
        # a parameter may be registered twice (re-assigned, tied): the budget leaves room for that
        with torch.device("meta"), build_budget(max_parameters=2 * len(found) + 64, max_modules=8 * len(found) + 256):
            probe = build()
    except _OverBudget as over:
        raise CheckpointFormatError(
            f"{config_path}: declares a larger {what} than {shown} holds (building it passed {over.limit:,} "
            f"{over.kind} for the file's {len(found):,} tensors): a depth, layer or block count in "
            f"{config_path.name} does not match the weights"
        ) from None
    except Exception as err:  # negative or zero sizes, impossible head counts, out-of-range bounds, ...
        reason = " ".join(str(err).split())[:200]
        raise CheckpointFormatError(
            f"{config_path}: does not describe a buildable {what} ({type(err).__name__}: {reason})"
        ) from None
    expected = {k: tuple(v.shape) for k, v in state_dict(probe).items()}
    check_shapes(expected, found, source=f"{shown} (sizes declared in {config_path.name})", target=what)


def check_diffusers_model_folder(cls: type, path_or_id: str | Path, **kwargs: Any) -> None:
    """`check_config_against_header` for one of our diffusers model classes (`cls(**config)`), on the folder that
    diffusers' `from_pretrained(path_or_id, subfolder=..., revision=..., variant=...)` is about to load.

    A Hub id is fetched into the Hub cache first (config and safetensors only; diffusers then reads the same
    cached files). A folder without safetensors weights is refused: our exports always write them.
    """
    subfolder = kwargs.get("subfolder") or ""
    folder = Path(path_or_id) / subfolder
    if not Path(path_or_id).is_dir():
        try:
            from huggingface_hub import snapshot_download

            patterns = [f"{subfolder}/*" if subfolder else "*"]
            folder = Path(snapshot_download(str(path_or_id), revision=kwargs.get("revision"), allow_patterns=patterns))
            folder = folder / subfolder
        except Exception:  # offline, unknown repo: diffusers reports that in its own words
            return
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise CheckpointFormatError(f"{config_path} not found: {folder} is not a {cls.__name__} folder")
    try:
        raw = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise CheckpointFormatError(f"{config_path}: corrupt JSON ({type(err).__name__})") from None
    if not isinstance(raw, dict):
        raise CheckpointFormatError(f"{config_path}: expected a JSON object")
    variant = kwargs.get("variant")
    stem = "diffusion_pytorch_model" + (f".{variant}" if variant else "")
    index = folder / f"{stem}.safetensors.index.json"
    if index.is_file():  # a sharded save: every shard's header
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise CheckpointFormatError(f"{index}: not a safetensors index (no weight_map)") from None
        if any(Path(name).name != name for name in names):
            raise CheckpointFormatError(f"{index}: shard names must be plain file names in {folder}")
        files = [folder / name for name in names]
    else:
        files = [folder / f"{stem}.safetensors"]
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    init = {k: v for k, v in raw.items() if k in accepted}
    check_config_against_header(lambda: cls(**init), files, config_path=config_path, what=cls.__name__)


class PretrainedMixin:
    """Mix into an `nn.Module` whose constructor takes a single frozen dataclass `config`.

    Subclasses set `config_class`; `architecture` defaults to the class name and is what `config.json`
    records and `from_pretrained` checks.
    """

    config_class: ClassVar[type]
    architecture: ClassVar[str]
    format_version: ClassVar[int] = FORMAT_VERSION  # bump when the config's shape changes; see upgrade_config
    config: Any

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "architecture" not in cls.__dict__:
            cls.architecture = cls.__name__
        _ARCHITECTURES[cls.architecture] = cls

    @classmethod
    def upgrade_config(cls, config: dict[str, Any], version: int) -> dict[str, Any]:
        """The `config` of a folder written at format `version` (< `format_version`), in today's shape."""
        return config

    # Hooks a model can override: how it is built to receive a folder's weights, and which weights its file holds.
    @classmethod
    def build_for_loading(cls: type[M], config: Any) -> M:
        """The model that `from_pretrained` loads a folder's weights into (also built on the meta device to check
        the folder's sizes before any memory is allocated): `cls(config)`."""
        return cls(config)  # type: ignore[call-arg]

    def pretrained_state_dict(self) -> dict[str, torch.Tensor]:
        return self.state_dict()  # type: ignore[attr-defined]

    def load_pretrained_state_dict(self, state: dict[str, torch.Tensor], *, source: str) -> None:
        load_state_dict_strict(self, state, source=source)  # type: ignore[arg-type]

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write `config.json` + `model.safetensors` into `directory`.

        A new folder appears in one rename; in an existing model folder only these two files are replaced
        (the weights first, `config.json` last) and any other file is kept. A non-empty folder that is not a
        model folder is refused (`check_model_output_dir`).
        """
        directory = check_model_output_dir(directory)
        meta = {
            "architecture": self.architecture,
            "format_version": self.format_version,
            "vfmvae_version": __version__,
            "config": config_to_dict(self.config),
        }
        with atomic_directory(directory, last=(CONFIG_NAME,)) as tmp:
            save_tensors(tmp / WEIGHTS_NAME, self.pretrained_state_dict(), metadata={"format": "pt"})
            atomic_write_text(tmp / CONFIG_NAME, json.dumps(meta, indent=2) + "\n")
        return directory

    @classmethod
    def from_pretrained(
        cls: type[M],
        path_or_id: str | Path,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        **config_overrides: Any,
    ) -> M:
        """Rebuild the model from `config.json` and load `model.safetensors` strictly."""
        directory = resolve_model_dir(path_or_id, what=cls.__name__)
        meta = read_model_config(directory)
        if meta["architecture"] != cls.architecture:
            raise CheckpointFormatError(
                f"{directory / CONFIG_NAME}: this is a {meta['architecture']!r} checkpoint, not {cls.architecture!r}"
            )
        raw = dict(cls.upgrade_config(dict(meta["config"]), meta["format_version"]), **config_overrides)
        try:
            config = config_from_dict(cls.config_class, raw, source=str(directory / CONFIG_NAME))
        except ConfigError as err:
            raise CheckpointFormatError(str(err)) from None
        check_config_against_header(
            lambda: cls.build_for_loading(config),
            directory / WEIGHTS_NAME,
            config_path=directory / CONFIG_NAME,
            what=cls.__name__,
            state_dict=lambda probe: probe.pretrained_state_dict(),  # type: ignore[attr-defined]
        )
        model = cls.build_for_loading(config)
        state = load_tensors(directory / WEIGHTS_NAME)
        model.load_pretrained_state_dict(state, source=str(directory / WEIGHTS_NAME))
        model.to(device=device)  # type: ignore[attr-defined]
        if dtype is not None:
            model.to(dtype=dtype)  # type: ignore[attr-defined]
        model.eval()  # type: ignore[attr-defined]
        return model


def load_pretrained(path_or_id: str | Path, **kwargs: Any) -> PretrainedMixin:
    """Load any vfmvae model folder, dispatching on the architecture recorded in its `config.json`."""
    directory = resolve_model_dir(path_or_id)
    arch = read_model_config(directory)["architecture"]
    if arch not in _ARCHITECTURES and arch in _OWN_ARCHITECTURES:  # `import vfmvae` imports no model: register it
        importlib.import_module(_OWN_ARCHITECTURES[arch])
    if arch not in _ARCHITECTURES:
        known = ", ".join(sorted(_ARCHITECTURES)) or "none imported"
        raise CheckpointFormatError(f"{directory}: unknown architecture {arch!r} (known: {known})")
    return _ARCHITECTURES[arch].from_pretrained(directory, **kwargs)
