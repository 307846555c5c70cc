"""Per-step cost of the training plan's numerical-fault guard on the CPU, against a whole training step.

The guard (``NonFiniteGuard.check``, called by ``TrainingPlan.on_before_optimizer_step``) is one fused norm
over all gradients, a finiteness test of those norms and the loss, and a host read of the flag;
``NonFiniteGuard.before_forward`` also copies BatchNorm's running statistics so that a faulty step can be
undone. Both are timed here on scvi-tools' benchmark architecture (2,000 genes, n_hidden 128, n_latent 10,
minibatches of 128 cells), next to a full forward/backward/Adam step, and so is the optimiser step alone:
the fused Adam the plan builds against torch's default Adam.

    python benchmarks/finite_check.py [--threads 1] [--repeats 300]
"""

from __future__ import annotations

import argparse
import time

import pyro
import torch

import pyrovi  # noqa: F401  (module-local Pyro parameters)
from pyrovi.module import VAE
from pyrovi.train import TrainingPlan


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    times.sort()
    return 1e3 * times[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pyro.set_rng_seed(0)
    vae = VAE(n_input=args.genes, n_hidden=128, n_latent=10)
    plan = TrainingPlan(vae, n_epochs_kl_warmup=None)
    optimizer = plan.configure_optimizers()
    x = torch.poisson(torch.rand(args.batch, args.genes) * 3)
    batch = {"X": x, "batch": torch.zeros(args.batch, dtype=torch.long), "indices": torch.arange(args.batch)}
    guard = plan.nonfinite_guard
    guard.start_fit(
        [b for m in vae.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for b in m.buffers()],
        plan.named_parameters,
    )
    guard.start_epoch(first_step=0)

    def step() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        guard.before_forward()
        loss = plan._loss(batch, 10_000, 1.0)
        loss.backward()
        guard.watch(loss)
        plan.on_before_optimizer_step(optimizer)
        optimizer.step()
        return loss

    for _ in range(20):
        step()
    full = _median_ms(step, args.repeats)
    loss = step()

    def check() -> None:
        guard.watch(loss)
        guard.check(optimizer, step=0, epoch=0)

    check_ms = _median_ms(check, args.repeats)
    snapshot = _median_ms(guard.before_forward, args.repeats)
    # the optimiser step alone, with the gradients in place: the fused Adam pyrovi builds vs torch's default
    adam = {}
    for fused in (True, False):
        settings = {"lr": 1e-3, "eps": 0.01, "weight_decay": 1e-6}
        opt = torch.optim.Adam(optimizer.param_groups[0]["params"], fused=fused, **settings) if fused else \
            torch.optim.Adam(optimizer.param_groups[0]["params"], **settings)
        adam[fused] = _median_ms(opt.step, args.repeats)
    n_params = sum(p.numel() for p in vae.parameters())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.batch} x {args.genes}, "
          f"{n_params:,} parameters")
    print(f"full training step        {full:8.3f} ms")
    print(f"finiteness guard          {check_ms:8.3f} ms  ({100 * check_ms / full:.2f} % of a step)")
    print(f"BatchNorm buffer snapshot {snapshot:8.3f} ms  ({100 * snapshot / full:.2f} % of a step)")
    print(f"Adam step, fused          {adam[True]:8.3f} ms")
    print(f"Adam step, torch default  {adam[False]:8.3f} ms  ({adam[False] / adam[True]:.1f} x the fused one)")


if __name__ == "__main__":
    main()
