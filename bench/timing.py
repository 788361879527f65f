"""The one timing rule of the benchmarks: the median wall-clock time of a call, after untimed warm-up calls."""
import statistics
import time


def median_ms(fn, warmup, steps, sync=lambda: None):
    """Median milliseconds of ``fn()`` over ``steps`` calls after ``warmup``; ``sync()`` (a GPU wait) ends each one."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        sync()
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)
