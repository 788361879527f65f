"""CUDA graphs: record the kernels of a forward and backward pass once, then replay them with one launch.

A minilora training step on GPT-2 small queues about a thousand kernels, and
Python and CuPy spend some 20-40 microseconds of host time on each. In bf16
the GPU runs the whole step faster than the host can queue it, so the host
sets the pace (``python bench/profile_gpu_step.py --precision bf16`` prints
both times). CUDA can record what a stream receives into a graph and replay
the whole graph with one launch: the kernels then run back to back, on the
same memory, and the host is free after microseconds.

    graphed = cuda_graph(forward_backward, idx, targets)   # runs it `warmup` times, then records one run
    for idx, targets in batches:
        loss = graphed(idx, targets)   # the batch is copied into the recorded inputs, the kernels replayed
        optimizer.step()               # outside: AdamW's step count t lives on the host

The rules are those of torch.cuda.CUDAGraph (and of torch.compile's
"reduce-overhead" mode, which uses it):

- Python runs only while recording. Whatever the function does on the host
  (count steps, draw dropout masks from a host generator, choose a branch from
  a value) happens once, and the replay repeats the kernels of that one run.
  So the optimizer stays outside, and dropout must be 0. A GradScaler's scale
  is a host number too: fp16 with loss scaling stays eager.
- Every call has the shapes and dtypes of the recording.
- Nothing inside may wait for the GPU (``float(x)``, ``.item()``,
  ``if x.any():``): recording cannot include a wait; it fails with an error.
  That includes the ops' check of token ids and labels on the device, which
  is skipped while recording: CuPy wraps an id out of range around silently,
  so check the batches you pass in (``minilora.functional.ids.check_class_ids``
  on the host costs nothing).
- The arrays made inside (the returned loss, every ``.grad`` the backward
  made) live in the graph's own memory pool and are overwritten by each
  replay. Read them before the next call, and call ``zero_grad`` only inside.
"""
import numpy as np

from .. import backend


class CudaGraph:
    """``fn(*inputs)`` recorded as a CUDA graph; calling it copies new inputs in and replays the kernels.

    inputs: arrays (NumPy or CuPy), copied into device arrays that the graph
    reads at every replay. Returns what ``fn`` returned while recording (its
    arrays hold the newest replay's values).
    """

    def __init__(self, fn, *inputs, warmup=3):
        import cupy

        if warmup < 1:
            raise ValueError(f"cuda_graph: warmup={warmup}. Fix: warmup >= 1, so that every kernel is compiled and "
                             "every buffer allocated before recording starts.")
        self.inputs = [cupy.array(x) for x in inputs]  # the recorded inputs: new batches are copied into them
        # The graph writes its intermediates at the addresses it was recorded with, so no one else may be given
        # that memory: a pool of its own, used only inside the graph.
        self.pool = cupy.cuda.MemoryPool()
        self.stream = cupy.cuda.Stream(non_blocking=True)
        cupy.cuda.Device().synchronize()  # the model was built on another stream
        with cupy.cuda.using_allocator(self.pool.malloc), self.stream:
            for _ in range(warmup):
                fn(*self.inputs)
            self.stream.synchronize()
            self.stream.begin_capture()
            try:
                self.outputs = fn(*self.inputs)
            except Exception as error:
                _end_capture_after(self.stream, error)
                raise RuntimeError(
                    f"cuda_graph: recording {getattr(fn, '__name__', fn)!r} failed ({type(error).__name__}: {error}). "
                    "A function that waits for the GPU inside (float(x), .item(), bool(x.any()), a host copy) "
                    "cannot be recorded. Fix: move such reads after the call.") from error
            self.graph = self.stream.end_capture()

    def __call__(self, *inputs):
        import cupy

        if len(inputs) != len(self.inputs):
            raise TypeError(f"cuda_graph: recorded with {len(self.inputs)} inputs, called with {len(inputs)}")
        for i, (recorded, new) in enumerate(zip(self.inputs, inputs)):
            if tuple(new.shape) != recorded.shape or np.dtype(new.dtype) != recorded.dtype:
                raise ValueError(
                    f"cuda_graph: input {i} is {tuple(new.shape)} {np.dtype(new.dtype)}, but the graph was recorded "
                    f"with {recorded.shape} {recorded.dtype}: a graph replays fixed shapes. Fix: pad or drop the "
                    "last batch to the recorded shape, or record another graph for this shape.")
            recorded.set(new) if isinstance(new, np.ndarray) else recorded.__setitem__(Ellipsis, new)
        self.graph.launch(stream=cupy.cuda.get_current_stream())
        return self.outputs


def _end_capture_after(stream, error):
    """Leave the stream out of capture mode after a failed recording (ending it may fail too: the error is the first)."""
    try:
        stream.end_capture()
    except Exception:  # noqa: BLE001 - the recording's own error is what the user needs
        pass


def cuda_graph(fn, *inputs, warmup=3):
    """Record ``fn(*inputs)`` as a CUDA graph (CuPy only); see the module's docstring for the rules."""
    if not all(backend.is_cupy_array(x) or isinstance(x, np.ndarray) for x in inputs):
        raise TypeError("cuda_graph: inputs must be arrays (NumPy or CuPy). Fix: pass idx and targets as arrays.")
    if backend.get_backend() != "cupy":
        raise RuntimeError("cuda_graph records GPU kernels: it needs the cupy backend. Fix: minilora.set_backend('cupy').")
    return CudaGraph(fn, *inputs, warmup=warmup)
