"""GPU training throughput of the RAP-scale planner (``configs/train/rap_resnet34.yaml``), for a
machine with an NVIDIA GPU: 3 cameras at 512x256, batch 64, samples/s of forward + backward +
AdamW with and without AMP (bf16 autocast), on batches of random views and targets held on the
GPU (the model's own cost, without the loader or the online scorer). Also runs on a CPU with
``--device cpu`` (slowly; use small ``--steps``/``--batch``) to check the script.

On the device machine, after benchmarks/gpu/prepare.sh (it needs torch on the device)::

    python3 benchmarks/bench_train_gpu.py --steps 30 --batch 64 --out $OUT/train_gpu.json

Online rasterization through EGL on the same GPU (the loader rendering the samples, against
reading shards at the same size): ``python3 benchmarks/bench_train.py --workers "" --online-workers
0,4`` on that machine; raw EGL render rates: ``rap bench-render`` (benchmarks/gpu/device_bench.sh).
Every figure goes in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def run(device: torch.device, amp: bool, steps: int, batch: int, size: tuple[int, int], cameras: int) -> float:
    from planners.config import TrainConfig
    from planners.losses import wta_l1
    from planners.model import build_model
    from rap.config import load_config

    cfg = load_config(TrainConfig, REPO / "configs" / "train" / "rap_resnet34.yaml", [f"data.image_size=[{size[0]},{size[1]}]", f"data.cameras=[{','.join(['CAM_L0', 'CAM_F0', 'CAM_R0', 'CAM_B0'][:cameras])}]"])
    torch.manual_seed(0)
    model = build_model(cfg.model, num_cameras=cameras, image_size=size, history_len=3, num_poses=10).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator(device="cpu").manual_seed(0)
    b = {
        "images": torch.randint(0, 255, (batch, cameras, 3, size[1], size[0]), dtype=torch.uint8, generator=g).to(device),
        "ego_status": torch.rand(batch, 5, generator=g).to(device), "command": torch.randint(0, 3, (batch,), generator=g).to(device),
        "history": torch.rand(batch, 3, 3, generator=g).to(device), "history_valid": torch.ones(batch, 3, dtype=torch.bool, device=device),
    }  # fmt: skip
    target = torch.rand(batch, 10, 3, generator=g).to(device) * 10
    weights = torch.ones(batch, device=device)
    dtype = torch.bfloat16

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=amp):
            out = model(b)
            loss, _ = wta_l1(out["proposals"].float(), target, weights)
            loss = loss + out["score_logits"].float().sigmoid().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):  # warm-up (cuDNN autotuning, allocator)
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", default="512x256")
    parser.add_argument("--cameras", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    device = torch.device(args.device)
    size = tuple(int(v) for v in args.size.split("x"))
    torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    rows = []
    for amp in (False, True):
        rate = run(device, amp, args.steps, args.batch, size, args.cameras)
        rows.append({"device": name, "amp": amp, "samples_per_s": round(rate, 2), "batch": args.batch, "size": list(size), "cameras": args.cameras, "model": "rap_resnet34"})
        print(json.dumps(rows[-1], sort_keys=True), flush=True)
    print(f"AMP / fp32: {rows[1]['samples_per_s'] / rows[0]['samples_per_s']:.2f}x on {name}, {dt.date.today().isoformat()}")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
