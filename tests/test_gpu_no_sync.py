"""A training step on the GPU never makes the host wait for the GPU.

The test keeps the GPU busy for two seconds with a kernel that only waits,
then runs one whole training step (host batch, forward, loss, backward, AdamW).
Work queued behind the busy kernel cannot start, so if anything in the step
waits for a result (``.get()``, ``float(x)``, ``bool(x.any())``, a
data-dependent size such as ``unique``), the host stalls until the two seconds
are over. Without such a wait the host queues the whole step in milliseconds.
On failure the message lists the Python functions where the host spent its time.
"""
import cProfile
import pstats
import time

import numpy as np
import pytest

from minilora import backend
from minilora.lora import LoraConfig, get_peft_model
from minilora.models import GPT, GPTConfig
from minilora.optim import AdamW

pytestmark = pytest.mark.gpu

BUSY_SECONDS = 2.0

# Spins on the GPU's nanosecond clock; one thread is enough to hold the stream.
_SPIN_SOURCE = r"""
extern "C" __global__ void spin(unsigned long long nanoseconds) {
    unsigned long long start, now;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
    do { asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now)); } while (now - start < nanoseconds);
}
"""


def keep_gpu_busy(seconds):
    import cupy

    cupy.RawKernel(_SPIN_SOURCE, "spin")((1,), (1,), (np.uint64(seconds * 1e9),))


def where_the_host_waited(profile):
    stats = pstats.Stats(profile)
    slowest = sorted(stats.stats.items(), key=lambda item: item[1][2], reverse=True)[:6]  # by own time
    return "; ".join(f"{func[2]} ({func[0].rsplit('/', 1)[-1]}:{func[1]}) {own:.2f} s" for func, (_, _, own, _, _) in slowest)


def assert_step_does_not_wait(step):
    step()  # compiles the kernels and fills the memory pool, which may wait
    backend.synchronize()
    keep_gpu_busy(BUSY_SECONDS)
    profile = cProfile.Profile()
    start = time.perf_counter()
    profile.runcall(step)
    queued = time.perf_counter() - start
    backend.synchronize()
    assert queued < BUSY_SECONDS / 2, (
        f"the training step took {queued:.2f} s to queue while the GPU was busy for {BUSY_SECONDS} s: "
        f"something in it waited for the GPU. Host time went to: {where_the_host_waited(profile)}"
    )


def training_step(lora):
    rng = np.random.default_rng(0)
    config = GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=64, dropout=0.0)
    model = GPT(config)
    if lora:
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q", "v"]))
    opt = AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)

    def step():
        batch = rng.integers(0, config.vocab_size, size=(4, config.block_size + 1))  # (B, T + 1), on the host
        _, loss = model(batch[:, :-1], batch[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad()
    return step


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_training_step_never_waits_for_the_gpu(lora):
    with backend.using_backend("cupy"):
        assert_step_does_not_wait(training_step(lora))
