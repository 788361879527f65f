"""The training step every benchmark times on minilora's side: zero_grad, forward, loss, backward, AdamW.

With ``precision`` "bf16" or "fp16" the forward and the loss run under
``minilora.amp.autocast`` (and fp16 scales the loss with a GradScaler), the
recipe of PyTorch's automatic mixed precision; the weights stay float32.
With ``graph`` the zero_grad, forward and backward are recorded once as a CUDA
graph (minilora.fused.cuda_graph) and replayed; AdamW runs outside it.
"""
from minilora import amp
from minilora.fused import cuda_graph
from minilora.optim import AdamW

LOW_PRECISION = {"bf16": "bfloat16", "fp16": "float16"}


def minilora_training_step(model, idx, targets, lr=1e-4, precision="fp32", graph=False):
    """(step, optimizer): ``step()`` runs one AdamW step of ``model`` on the batch; only trainable weights get state."""
    if graph and precision == "fp16":
        raise ValueError("--graph records the loss scale as a number; fp16's GradScaler changes it. Use bf16 or fp32.")
    optimizer = AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    dtype = LOW_PRECISION.get(precision)
    scaler = amp.GradScaler(enabled=precision == "fp16")

    def forward_backward(idx, targets):
        optimizer.zero_grad()
        with amp.autocast(dtype or "bfloat16", enabled=dtype is not None):
            _, loss = model(idx, targets)
        scaler.scale(loss).backward()
        return loss

    if graph:
        forward_backward = cuda_graph(forward_backward, idx, targets)

    def step():
        forward_backward(idx, targets)
        scaler.step(optimizer)
        scaler.update()
    return step, optimizer
