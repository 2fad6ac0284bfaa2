import errno
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TinyNet, TinyNetConfig

from vfmvae.checkpoint import (
    CheckpointFormatError,
    CheckpointManager,
    capture_rng_state,
    load_pretrained,
    load_state,
    restore_rng_state,
    save_state,
    serialize,
)


def test_save_pretrained_round_trip(tmp_path):
    torch.manual_seed(0)
    model = TinyNet(TinyNetConfig(channels=6, num_classes=3))
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    assert meta["architecture"] == "TinyNet" and meta["config"] == {"channels": 6, "num_classes": 3}
    loaded = TinyNet.from_pretrained(tmp_path / "m")
    assert loaded.config == model.config and not loaded.training
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    x = torch.randint(0, 255, (2, 3, 16, 16), dtype=torch.uint8)
    assert torch.equal(model.eval()(x), loaded(x))
    assert isinstance(load_pretrained(tmp_path / "m"), TinyNet)  # dispatch on config.json's architecture


def test_no_pickle_in_model_folder(tmp_path):
    TinyNet(TinyNetConfig()).save_pretrained(tmp_path / "m")
    for path in (tmp_path / "m").iterdir():
        assert b"\x80\x04" not in path.read_bytes()[:2] and not path.read_bytes().startswith(b"PK")


def test_from_pretrained_errors_name_the_problem(tmp_path):
    TinyNet(TinyNetConfig(channels=6)).save_pretrained(tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="folder not found"):
        TinyNet.from_pretrained(tmp_path / "nothing")
    # offline (conftest) and not cached: one line naming the repo and the command that fetches it (huggingface_hub's
    # CLI is `hf` since 1.0; `huggingface-cli` no longer exists)
    with pytest.raises(FileNotFoundError, match="hf download no-such-org/no-such-model-xyz"):
        TinyNet.from_pretrained("no-such-org/no-such-model-xyz")
    # weights from another config: shapes listed
    with pytest.raises(CheckpointFormatError, match=r"shape mismatches: conv.bias: file \(6,\) vs model \(8,\)"):
        TinyNet.from_pretrained(tmp_path / "m", channels=8)
    # another architecture
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**meta, "architecture": "VFMVAE"}))
    with pytest.raises(CheckpointFormatError, match="'VFMVAE' checkpoint, not 'TinyNet'"):
        TinyNet.from_pretrained(tmp_path / "m")
    # unknown key in the stored config
    (tmp_path / "m" / "config.json").write_text(json.dumps({**meta, "config": {"channels": 6, "width": 3}}))
    with pytest.raises(CheckpointFormatError, match="unknown key width"):
        TinyNet.from_pretrained(tmp_path / "m")
    # truncated weights
    (tmp_path / "m" / "config.json").write_text(json.dumps(meta))
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-20])
    with pytest.raises(CheckpointFormatError, match="not a readable safetensors file"):
        TinyNet.from_pretrained(tmp_path / "m")


def test_state_serialisation_restores_optimizer_and_rng_exactly(tmp_path):
    torch.manual_seed(0)
    model = TinyNet(TinyNetConfig())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.0, 0.99))
    model(torch.zeros(2, 3, 8, 8, dtype=torch.uint8)).sum().backward()
    opt.step()
    random.random(), np.random.rand(), torch.rand(1)
    save_state(tmp_path / "s", {"opt": opt.state_dict(), "rng": capture_rng_state(), "pos": {"ordinals": {"0": 5}}})
    expected = (random.random(), np.random.rand(), torch.rand(1))
    state = load_state(tmp_path / "s")
    restore_rng_state(state["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected
    opt2 = torch.optim.AdamW(model.parameters(), lr=1.0)
    opt2.load_state_dict(state["opt"])
    assert opt2.param_groups[0]["lr"] == 1e-2 and tuple(opt2.param_groups[0]["betas"]) == (0.0, 0.99)
    for a, b in zip(opt.state.values(), opt2.state.values()):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert state["pos"] == {"ordinals": {"0": 5}}


def test_serialisation_refuses_objects_that_would_need_pickle(tmp_path):
    with pytest.raises(TypeError, match="without pickle"):
        save_state(tmp_path / "s", {"f": object()})


def _save(manager, step, value):
    model = {"w": torch.full((4,), float(value))}
    return manager.save(
        step, images_seen=step * 8, model=model, ema=model, state={"v": value}, rank_state={"rng": capture_rng_state()}
    )


def test_manager_keeps_last_k_and_loads_latest(tmp_path):
    manager = CheckpointManager(tmp_path, keep=2)
    for step in (10, 20, 30):
        _save(manager, step, step)
    assert [p.name for p in manager.list()] == ["step-00000020", "step-00000030"]
    ckpt = manager.load()
    assert ckpt.step == 30 and ckpt.images_seen == 240 and ckpt.state == {"v": 30}
    assert torch.equal(ckpt.model["w"], torch.full((4,), 30.0))
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]


def test_interrupted_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    manager = CheckpointManager(tmp_path, keep=1)
    _save(manager, 10, 1)
    real = serialize.save_file
    calls = {"n": 0}

    def failing_save_file(tensors, path, metadata=None):
        calls["n"] += 1
        if calls["n"] == 2:  # die half-way through the second file of the new checkpoint
            Path(path).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, path, metadata=metadata)

    monkeypatch.setattr(serialize, "save_file", failing_save_file)
    with pytest.raises(OSError, match="No space left"):
        _save(manager, 20, 2)
    monkeypatch.setattr(serialize, "save_file", real)
    assert [p.name for p in manager.list()] == ["step-00000010"]
    assert manager.load().state == {"v": 1}
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000010"]  # no debris


def test_incomplete_checkpoint_is_ignored(tmp_path):
    manager = CheckpointManager(tmp_path, keep=3)
    _save(manager, 10, 1)
    _save(manager, 20, 2)
    newest = tmp_path / "checkpoints" / "step-00000020"
    (newest / "model.safetensors").write_bytes(b"torn")  # damaged after the fact
    assert manager.latest().name == "step-00000010"
    with pytest.raises(CheckpointFormatError, match="not a complete checkpoint"):
        manager.load(newest)


def test_sigkill_during_checkpoint_writes_never_loses_the_last_good_one(tmp_path):
    """A writer that saves large checkpoints in a loop is SIGKILLed at random moments."""
    script = textwrap.dedent(
        f"""
        import torch
        from vfmvae.checkpoint import CheckpointManager
        m = CheckpointManager({str(tmp_path)!r}, keep=1)
        step = 1
        while True:
            big = {{"w": torch.full((2_000_000,), float(step))}}
            m.save(step, images_seen=step, model=big, ema=big, state={{"step": step}})
            print(step, flush=True)
            step += 1
        """
    )
    rng = random.Random(0)
    for _trial in range(4):
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        proc.stdout.readline()  # at least one checkpoint exists (from this or an earlier trial)
        time.sleep(rng.uniform(0.0, 0.4))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        ckpt = CheckpointManager(tmp_path).load()
        assert ckpt.state["step"] == ckpt.step
        assert torch.equal(ckpt.model["w"][:3], torch.full((3,), float(ckpt.step)))
