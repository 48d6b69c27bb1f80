"""One training step at 224 px in every precision and memory format, side by side in one process
(docs/transfer.md section 3): fp32 or bf16 autocast, NCHW or channels_last, and the whole network
cast to bf16. The variants alternate step by step, so the load of other processes on a shared
machine falls on all of them alike; each is scored by the faster half of its steps, since the load
only ever adds time.

    python benchmarks/step_variants.py resnet18 --rounds 6
"""

from __future__ import annotations

import json
import time
from typing import Any

import click
import torch
import torchvision

VARIANTS = ("fp32_nchw", "fp32_cl", "bf16_nchw", "bf16_cl", "wbf16_nchw", "wbf16_cl")


def setup(model: str, variant: str, x: torch.Tensor) -> tuple[Any, ...]:
    """(network, Adam, input batch N×3×224×224, whether to autocast) of one variant; `wbf16`
    casts the weights and the input to bf16, `cl` puts both in channels_last."""
    torch.manual_seed(0)
    net = torchvision.models.get_model(model, num_classes=3).train()
    if variant.endswith("_cl"):
        net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    if variant.startswith("wbf16"):
        net.to(torch.bfloat16)
        x = x.to(torch.bfloat16)
    return net, torch.optim.Adam(net.parameters(), lr=1e-3), x, variant.startswith("bf16")


def step(net: Any, opt: Any, x: torch.Tensor, autocast: bool, y: torch.Tensor) -> float:
    """Seconds of one forward, backward and Adam step."""
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = torch.nn.functional.cross_entropy(net(x).float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.perf_counter() - start


@click.command()
@click.argument("model")
@click.option("--batch", default=16, show_default=True)
@click.option("--rounds", default=6, show_default=True)
@click.option("--threads", default=2, show_default=True)
@click.option("--variants", default=",".join(VARIANTS), show_default=True)
def main(model: str, batch: int, rounds: int, threads: int, variants: str) -> None:
    """Images per second of each variant (faster half of `rounds` steps, after 2 warm-up)."""
    torch.set_num_threads(threads)
    x, y = torch.randn(batch, 3, 224, 224), torch.randint(0, 3, (batch,))
    runs = {v: setup(model, v, x) for v in variants.split(",")}
    for run in runs.values():
        step(*run, y)
        step(*run, y)
    seconds: dict[str, list[float]] = {v: [] for v in runs}
    for _ in range(rounds):
        for v, run in runs.items():
            seconds[v].append(step(*run, y))
    half = max(1, rounds // 2)
    rates = {v: round(batch * half / sum(sorted(s)[:half]), 2) for v, s in seconds.items()}
    click.echo(json.dumps({"model": model, "batch": batch, "img_per_s": rates}))


if __name__ == "__main__":
    main()
