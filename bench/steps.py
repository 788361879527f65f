"""The training step every benchmark times on minilora's side: zero_grad, forward, loss, backward, AdamW."""
from minilora.optim import AdamW


def minilora_training_step(model, idx, targets, lr=1e-4):
    """(step, optimizer): ``step()`` runs one AdamW step of ``model`` on the batch; only trainable weights get state."""
    optimizer = AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)

    def step():
        optimizer.zero_grad()
        _, loss = model(idx, targets)
        loss.backward()
        optimizer.step()
    return step, optimizer
