"""`rap train`: outputs, determinism, resume after kill -9, DDP on gloo, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from planners.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from planners.data import DataError
from planners.train import TrainDiverged, TrainError, train

from .conftest import REPO, TINY, tiny_config


def _weights(path: Path) -> dict:
    return load_checkpoint(path)["model"]


def _assert_same_weights(a: Path, b: Path, atol: float = 0.0, skip: tuple[str, ...] = ()) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        if key.endswith(skip):
            continue
        if atol == 0.0:
            assert torch.equal(wa[key], wb[key]), key
        else:
            torch.testing.assert_close(wa[key].float(), wb[key].float(), atol=atol, rtol=1e-4, msg=key)


def _losses(run: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


def test_train_writes_checkpoints_metrics_tensorboard_and_loss_picture_and_is_deterministic(tiny_dataset, tmp_path):
    cfg = tiny_config(tiny_dataset)
    result = train(cfg, tmp_path / "a")
    run = tmp_path / "a"
    assert result["steps"] == 4 and result["checkpoint"] == str(run / "last.pt")
    assert result["samples_per_s"] > 0 and result["final_loss"] > 0 and result["val_loss"] is not None
    for name in ("last.pt", "best.pt", "config.yaml", "metrics.jsonl", "loss.png"):
        assert (run / name).is_file(), name
    assert list(run.glob("events.out.tfevents.*"))
    assert [s for s, _ in _losses(run)] == [1, 2, 3, 4]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("scored", 0) > 0 for r in rows), "the scorer loss must see scored samples"
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    payload = load_checkpoint(run / "last.pt")
    assert payload["step"] == 4 and payload["data"]["cameras"] == ["CAM_L0", "CAM_F0", "CAM_R0"]
    assert payload["data"]["source_size"] == [64, 32] and payload["data"]["rig"] == "front3"
    # Same seed, same loss curve and weights, also with the scorer targets scored in a worker
    # process beside this one.
    pooled = tiny_config(tiny_dataset, "train.scorer_workers=1")
    train(pooled, tmp_path / "b")
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")
    _assert_same_weights(run / "last.pt", tmp_path / "b" / "last.pt")
    # Resuming a finished run trains nothing, changes nothing and reports the run's last loss
    # (how many processes score is free to change on resume).
    before = (run / "last.pt").read_bytes()
    again = train(pooled, run, resume=True)
    assert again["steps"] == 4 and again["final_loss"] == result["final_loss"] and again["val_loss"] == result["val_loss"]
    assert (run / "last.pt").read_bytes() == before


def test_resume_after_kill_9_ends_with_the_weights_of_an_uninterrupted_run(tiny_dataset, tmp_path):
    overrides = [f"data.datasets=[{tiny_dataset}]", "data.image_size=[64,32]", "data.val_fraction=0.3", "model.d_model=32", "model.num_heads=2",
                 "model.num_proposals=4", "model.num_layers=1", "train.batch_size=4", "train.max_steps=16", "train.log_every=1",
                 "train.val_every=100", "train.checkpoint_every=3", "optim.warmup_steps=1"]  # fmt: skip
    cmd = [sys.executable, "-m", "rap", "train", str(TINY), *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = tmp_path / "killed"
    # the uninterrupted reference runs beside the killed and resumed one (one thread each, 2 cores)
    whole = subprocess.Popen([*cmd, "--out", str(tmp_path / "whole")], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        proc = subprocess.Popen([*cmd, "--out", str(killed)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if (killed / "last.pt").exists() and (killed / "metrics.jsonl").exists() and len((killed / "metrics.jsonl").read_text().splitlines()) >= 4:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        killed_at = load_checkpoint(killed / "last.pt")["step"]
        assert 0 < killed_at < 16
        resumed = subprocess.run([*cmd, "--out", str(killed), "--resume"], env=env, capture_output=True, text=True, cwd=REPO)
        assert resumed.returncode == 0, resumed.stderr
        assert json.loads(resumed.stdout.strip().splitlines()[-1])["steps"] == 16
        _, whole_err = whole.communicate(timeout=600)
        assert whole.returncode == 0, whole_err
    finally:
        if whole.poll() is None:
            whole.kill()
    _assert_same_weights(killed / "last.pt", tmp_path / "whole" / "last.pt")
    assert [s for s, _ in _losses(killed)] == list(range(1, 17))  # metrics rewritten, no duplicated steps
    assert _losses(killed) == _losses(tmp_path / "whole")


def _ddp_worker(rank: int, world: int, port: int, dataset: str, out: str) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    # each rank also scores its scorer targets with a worker process of its own
    cfg = tiny_config(Path(dataset), "model.backbone.frozen=true", "train.max_steps=3", "train.val_every=100", "train.scorer_workers=1")
    train(cfg, out)
    torch.distributed.destroy_process_group()


def test_ddp_on_gloo_matches_one_process_with_the_same_global_batch(tiny_dataset, tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_ddp_worker, args=(2, port, str(tiny_dataset), str(tmp_path / "ddp")), nprocs=2, join=True, start_method="spawn")
    torch.set_num_threads(1)
    single = tiny_config(tiny_dataset, "model.backbone.frozen=true", "train.max_steps=3", "train.val_every=100")
    train(single, tmp_path / "one")
    # Attention key biases and the imitation head's biases have an exactly zero gradient (a softmax
    # ignores a constant added to all its inputs, and imitation units active for every proposal add
    # one): theirs is rounding noise, which Adam scales up to steps of +-lr, so they are not compared.
    # Adam also amplifies the rounding noise of a few near-zero gradients elsewhere: nearly every
    # weight agrees to 1e-5, and none is off by more than a tenth of the 3 steps' total learning rate.
    wa, wb = _weights(tmp_path / "ddp" / "last.pt"), _weights(tmp_path / "one" / "last.pt")
    assert wa.keys() == wb.keys()
    compared = [k for k in wa if not (k.endswith("in_proj_bias") or (k.startswith("imitation_head.") and k.endswith(".bias")))]
    diff = torch.cat([(wa[k].float() - wb[k].float()).abs().flatten() for k in compared])
    assert float((diff > 1e-5).float().mean()) < 1e-3, int((diff > 1e-5).sum())
    assert float(diff.max()) < 1e-4
    ddp_losses = _losses(tmp_path / "ddp")
    assert [s for s, _ in ddp_losses] == [1, 2, 3]
    for (_, a), (_, b) in zip(ddp_losses, _losses(tmp_path / "one")):
        assert a == pytest.approx(b, rel=1e-5)


def test_bad_data_and_folders_are_clear_errors(tiny_dataset, tmp_path):
    with pytest.raises(DataError, match=r"data.datasets\[0\]=.*nowhere: no such folder"):
        train(tiny_config(tmp_path / "nowhere"), tmp_path / "r1")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: no shards"):
        train(tiny_config(tmp_path / "empty"), tmp_path / "r2")
    with pytest.raises(DataError, match=r"data.cameras names \['CAM_B0'\], which the shards do not have"):
        train(tiny_config(tiny_dataset, "data.cameras=[CAM_F0,CAM_B0]"), tmp_path / "r3")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(TrainError, match="folder is not empty"):
        train(tiny_config(tiny_dataset), tmp_path / "busy")
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    with pytest.raises(TrainError, match="nothing to resume"):
        train(tiny_config(tiny_dataset), tmp_path / "fresh", resume=True)


def test_a_shard_of_another_format_version_is_refused(tiny_dataset, tmp_path):
    import shutil
    import tarfile

    src = sorted(tiny_dataset.glob("shard-*.tar"))[0]
    out = tmp_path / "v2"
    out.mkdir()
    with tarfile.open(src) as tin, tarfile.open(out / src.name, "w", format=tarfile.PAX_FORMAT) as tout:
        for member in tin:
            data = tin.extractfile(member).read()
            if member.name.endswith(".json"):
                data = data.replace(b'"rap.sample/1"', b'"rap.sample/9"')
                member.size = len(data)
            import io

            tout.addfile(member, io.BytesIO(data))
    assert not (out / "manifest.json").exists()
    shutil.copy  # (no manifest: the content check alone must catch it)
    with pytest.raises(DataError, match=r"sample format 'rap.sample/9', this rap reads 'rap.sample/1'"):
        train(tiny_config(out), tmp_path / "r")


def test_resume_with_another_config_is_refused(tiny_dataset, tmp_path):
    train(tiny_config(tiny_dataset, "train.max_steps=2"), tmp_path / "run")
    with pytest.raises(TrainError, match=r"config differs from the run's \(optim.lr: run 0.001, now 0.5\)"):
        train(tiny_config(tiny_dataset, "train.max_steps=2", "optim.lr=0.5"), tmp_path / "run", resume=True)


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_weights(tiny_dataset, tmp_path, monkeypatch):
    import planners.train as loop

    real = loop.compute_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        loss, parts = real(*args, **kwargs)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] == 4 else loss), parts

    monkeypatch.setattr(loop, "compute_loss", poisoned)
    with pytest.raises(TrainDiverged, match=r"step 3: the loss is nan .*\(after step 2\) are in .*last.pt"):
        train(tiny_config(tiny_dataset, "train.max_steps=6", "train.val_every=2", "train.val_batches=1"), tmp_path / "run")
    payload = load_checkpoint(tmp_path / "run" / "last.pt")
    assert payload["step"] == 2
    assert all(torch.isfinite(v).all() for v in payload["model"].values() if v.is_floating_point())


def test_checkpoint_of_another_architecture_or_format_is_refused(tiny_dataset, tmp_path):
    train(tiny_config(tiny_dataset, "train.max_steps=1"), tmp_path / "run")
    payload = load_checkpoint(tmp_path / "run" / "last.pt")
    config = json.loads(payload["config"])
    config["model"]["d_model"] = 64
    payload["config"] = json.dumps(config)
    torch.save(payload, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"other.pt: weights do not fit a rap model as its config describes"):
        model_from_checkpoint(tmp_path / "other.pt")
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match=r"foreign.pt: not a rap.checkpoint/1 checkpoint"):
        model_from_checkpoint(tmp_path / "foreign.pt")
