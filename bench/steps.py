"""The training step every benchmark times on minilora's side: zero_grad, forward, loss, backward, AdamW.

With ``precision`` "bf16" or "fp16" the forward and the loss run under
``minilora.amp.autocast`` (and fp16 scales the loss with a GradScaler), the
recipe of PyTorch's automatic mixed precision; the weights stay float32.
"""
from minilora import amp
from minilora.optim import AdamW

LOW_PRECISION = {"bf16": "bfloat16", "fp16": "float16"}


def minilora_training_step(model, idx, targets, lr=1e-4, precision="fp32"):
    """(step, optimizer): ``step()`` runs one AdamW step of ``model`` on the batch; only trainable weights get state."""
    optimizer = AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    dtype = LOW_PRECISION.get(precision)
    scaler = amp.GradScaler(enabled=precision == "fp16")

    def step():
        optimizer.zero_grad()
        with amp.autocast(dtype or "bfloat16", enabled=dtype is not None):
            _, loss = model(idx, targets)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    return step, optimizer
