"""get_peft_model and LoraModel: put adapters into a model by module name, train them, merge them.

    model = get_peft_model(gpt, LoraConfig(r=4, lora_alpha=32))   # adapts every "q" and "v" Linear
    trainable, total = count_parameters(model)                    # only A and B train
    model.merge_adapter(); ...; model.unmerge_adapter()           # explicit, never inside eval()

LoraModel changes the wrapped model in place (each targeted Linear becomes a
LoRALinear holding it), as PEFT does, and forwards calls to it.
"""
import contextlib
import dataclasses

from .. import backend
from ..nn import Module, Parameter
from .config import LoraConfig
from .files import adapter_size, check_adapter_fits, copy_adapter_arrays, load_adapter, read_adapter, save_adapter
from .layer import LoRALinear, check_adapter_name
from .targets import find_target_names, lora_layers


def mark_only_lora_as_trainable(model, bias="none"):
    """Freeze everything except each layer's active A and B (and biases: "none", "all", or "lora_only")."""
    if bias not in ("none", "all", "lora_only"):
        raise ValueError(f"mark_only_lora_as_trainable: bias={bias!r} is not one of 'none', 'all', 'lora_only'.")
    # BEGIN SOLUTION 22 "Trainable parameters"
    for name, p in model.named_parameters():
        p.requires_grad_(bias == "all" and name.split(".")[-1] == "bias")
    for _, layer in lora_layers(model):
        if layer.active_adapter is not None:
            layer.lora_A[layer.active_adapter].requires_grad_(True)
            layer.lora_B[layer.active_adapter].requires_grad_(True)
        if bias == "lora_only" and layer.base_layer.bias is not None:
            layer.base_layer.bias.requires_grad_(True)
    # END SOLUTION 22
    return model


def count_parameters(model):
    """(trainable, total) numbers of parameter values. For LoRA on L̂ square d x d matrices: 2 L̂ d r trainable."""
    # BEGIN SOLUTION 22 "Trainable parameters"
    trainable = total = 0
    for p in model.parameters():
        total += p.size
        trainable += p.size if p.requires_grad else 0
    return trainable, total
    # END SOLUTION 22


def _set_submodule(model, name, module):
    """Put ``module`` where ``name`` was, keeping its place in the parent (so parameter order is unchanged)."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name)
    parent._modules[child] = module  # assigning into the OrderedDict keeps the position; setattr would move it last
    object.__setattr__(parent, child, module)


def _untie(model, linear):
    """Give ``linear`` its own copy of a weight it shares with another module (GPT-2's lm_head and wte).

    Merging and PiSSA write into the base weight; a shared weight would carry
    those writes into the other module too (the token embedding), so the copy
    is made before any adapter exists. It costs one more (out, in) matrix,
    frozen like the original. A model that says it ties (GPT's
    ``config.tie_weights``) gets a config that says it no longer does.
    """
    if not any(m is not linear and any(p is linear.weight for p in m._parameters.values()) for m in model.modules()):
        return
    own = Parameter._wrap(linear.weight.data.copy()).requires_grad_(linear.weight.requires_grad)
    linear._parameters["weight"] = own  # in place, so the parameter order is unchanged
    object.__setattr__(linear, "weight", own)
    config = getattr(model, "config", None)
    if getattr(config, "tie_weights", False) and dataclasses.is_dataclass(config):
        model.config = dataclasses.replace(config, tie_weights=False)


class LoraModel(Module):
    """A model with LoRA adapters: calls go to ``self.model``; only the active adapter's A and B train.

    ``peft_config`` maps adapter name -> LoraConfig; ``active_adapter`` is the
    name in use; ``adapters_disabled`` is True inside ``disable_adapter()``.
    Attributes the wrapper lacks are looked up on the model.

    A targeted Linear whose weight is shared with another module (GPT-2's
    lm_head, tied to the token embedding wte) is untied first: it gets its own
    frozen copy, so merging or PiSSA changes only the adapted layer.
    """

    def __init__(self, model, config, adapter_name="default", rng=None):
        super().__init__()
        self.model = model
        self.peft_config = {}
        self.active_adapter = None
        self.adapters_disabled = False
        self.rng = rng if rng is not None else backend.default_rng()
        self.add_adapter(adapter_name, config)
        self.set_adapter(adapter_name)

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def __getattr__(self, name):  # only called when ordinary lookup fails
        modules = self.__dict__.get("_modules", {})
        if "model" in modules:
            return getattr(modules["model"], name)
        raise AttributeError(name)

    # ---- adapters -----------------------------------------------------------
    def add_adapter(self, adapter_name, config):
        """Give every targeted layer a new adapter; nothing changes if any layer would refuse it."""
        check_adapter_name(adapter_name)
        if not isinstance(config, LoraConfig):
            raise TypeError(f"add_adapter needs a LoraConfig, got {type(config).__name__}")
        if adapter_name in self.peft_config:
            raise ValueError(f"adapter {adapter_name!r} exists already (adapters: {list(self.peft_config)}). Fix: pick another name.")
        config = config.for_model(self.model)  # kept resolved, so a saved adapter_config.json names its layers
        names = find_target_names(self.model, config)
        for name in names:
            m = self.model.get_submodule(name)
            r, _ = config.rank_and_alpha(name)
            if r > min(m.in_features, m.out_features):
                raise ValueError(
                    f"layer {name!r} ({m.in_features} -> {m.out_features}): rank r={r} exceeds min(in, out) = "
                    f"{min(m.in_features, m.out_features)}. Fix: lower r, or rank_pattern={{'{name}': smaller r}}."
                )
        for name in names:
            m = self.model.get_submodule(name)
            if not isinstance(m, LoRALinear):
                _untie(self.model, m)
                m = LoRALinear(m, rng=self.rng)
                m.disable_adapters = self.adapters_disabled
                _set_submodule(self.model, name, m)
            r, alpha = config.rank_and_alpha(name)
            m.add_adapter(adapter_name, r, alpha, config.scaling(r, alpha), config.lora_dropout,
                          config.init_lora_weights, layer_name=name)
            m.active_adapter = self.active_adapter if self.active_adapter in m.lora_A else None  # new ones wait for set_adapter
        self.peft_config[adapter_name] = config
        if self.active_adapter is not None:
            mark_only_lora_as_trainable(self.model, self.peft_config[self.active_adapter].bias)

    def set_adapter(self, adapter_name):
        """Make ``adapter_name`` the one in use and the only one that trains."""
        self._require(adapter_name)
        self._refuse_if_merged(f"set_adapter({adapter_name!r})")
        for _, layer in lora_layers(self.model):
            layer.active_adapter = adapter_name if adapter_name in layer.lora_A else None
        self.active_adapter = adapter_name
        mark_only_lora_as_trainable(self.model, self.peft_config[adapter_name].bias)

    @contextlib.contextmanager
    def disable_adapter(self):
        """Inside this block the model is the base model alone (the adapters are kept, only switched off).

        A flag on each layer switches them off, so what happens inside the block
        (set_adapter, add_adapter, delete_adapter, merge_and_unload) keeps its
        usual meaning and its effect shows once the block ends, as in PEFT.
        """
        self._refuse_if_merged("disable_adapter()")
        previous = self.adapters_disabled
        self._set_disabled(True)
        try:
            yield self
        finally:
            self._set_disabled(previous)

    def _set_disabled(self, flag):
        self.adapters_disabled = flag
        for _, layer in lora_layers(self.model):
            layer.disable_adapters = flag

    def delete_adapter(self, adapter_name):
        """Remove an adapter from every layer; a layer left with none becomes its plain Linear again.

        Deleting the active adapter makes the first remaining one (in the order
        they were added) active and trainable, as PEFT does; with none left, the
        model computes the base model alone.
        """
        self._require(adapter_name)
        self._refuse_if_merged(f"delete_adapter({adapter_name!r})")
        for name, layer in lora_layers(self.model):
            if adapter_name in layer.lora_A:
                layer.delete_adapter(adapter_name)
            if not layer.lora_A.keys():
                _set_submodule(self.model, name, layer.base_layer)
        del self.peft_config[adapter_name]
        if self.active_adapter == adapter_name:
            self.active_adapter = None
            if self.peft_config:
                self.set_adapter(next(iter(self.peft_config)))

    def _require(self, adapter_name):
        if adapter_name not in self.peft_config:
            raise KeyError(f"no adapter named {adapter_name!r}; this model has {list(self.peft_config)}")

    def _merged(self):
        return [name for name, layer in lora_layers(self.model) if layer.merged_adapter is not None]

    def _refuse_if_merged(self, action):
        merged = self._merged()
        if merged:
            raise RuntimeError(f"{action}: an adapter is merged into {merged}. Fix: unmerge_adapter() first.")

    # ---- merging ------------------------------------------------------------
    def merge_adapter(self):
        """W0 <- W0 + s B A in every adapted layer (the active adapter). Merging twice is refused."""
        if self.active_adapter is None:
            raise RuntimeError(f"merge_adapter(): no adapter is active (adapters: {list(self.peft_config)}). Fix: set_adapter(name).")
        if self._merged():
            raise RuntimeError(
                f"merge_adapter(): adapter {self.active_adapter!r} is already merged; merging again would add "
                "B A twice. Fix: unmerge_adapter() first."
            )
        if self.adapters_disabled:
            raise RuntimeError(
                "merge_adapter(): adapters are disabled (inside disable_adapter()), and a merged adapter cannot be "
                "switched off. Fix: merge after the with block."
            )
        self._merge()

    def _merge(self):
        for _, layer in lora_layers(self.model):
            layer.merge()

    def unmerge_adapter(self):
        """W <- W - s B A: W0 comes back to within one ulp (see LoRALinear.unmerge)."""
        if not self._merged():
            raise RuntimeError("unmerge_adapter(): nothing is merged. Fix: call merge_adapter() first.")
        for _, layer in lora_layers(self.model):
            layer.unmerge()

    def merge_and_unload(self):
        """Merge the active adapter and return the plain model, every LoRALinear replaced by its merged Linear.

        Inside ``disable_adapter()`` too: the caller asks for the trained model, so it is merged, not dropped.
        """
        if not self._merged() and self.active_adapter is not None:
            self._merge()
        for name, layer in lora_layers(self.model):
            _set_submodule(self.model, name, layer.base_layer)
        self.peft_config.clear()
        self.active_adapter = None
        return self.model


    # ---- files (minilora.lora.files) ----
    def save_pretrained(self, path, adapter_name=None):
        """Write only the adapter: adapter_model.safetensors + adapter_config.json."""
        return save_adapter(self, path, adapter_name)

    def load_adapter(self, path, adapter_name):
        """Add a saved adapter under ``adapter_name``; set_adapter(adapter_name) to use it."""
        return load_adapter(self, path, adapter_name)

    @classmethod
    def from_pretrained(cls, model, path, adapter_name="default"):
        """Wrap ``model`` with a saved adapter, active."""
        return from_pretrained(model, path, adapter_name)

    def adapter_size(self, adapter_name=None):
        """{"adapter_bytes", "full_bytes", "ratio"}: the adapter file's payload beside a full checkpoint's."""
        return adapter_size(self, adapter_name)


def from_pretrained(model, path, adapter_name="default"):
    """Wrap a plain ``model`` with the adapter saved in ``path``, active (PEFT's PeftModel.from_pretrained)."""
    config, arrays = read_adapter(path)
    check_adapter_fits(model, config, arrays, source=path)
    lora_model = LoraModel(model, config, adapter_name)
    copy_adapter_arrays(lora_model, adapter_name, arrays)
    return lora_model


def attach_adapter(model, config, arrays, adapter_name, source):
    """Put an adapter read from a file onto ``model``: a plain model gets a new LoraModel, a LoraModel adds it.

    ``arrays`` are minilora's adapter arrays (read_adapter's, or a PEFT file's converted); ``source``
    names the file in the error if they do not fit the model.
    """
    base = model.model if isinstance(model, LoraModel) else model
    check_adapter_fits(base, config, arrays, source=source)
    if isinstance(model, LoraModel):
        model.add_adapter(adapter_name, config)
    else:
        model = LoraModel(model, config, adapter_name)
    copy_adapter_arrays(model, adapter_name, arrays)
    return model


def get_peft_model(model, config, adapter_name="default", rng=None):
    """Add LoRA adapters to ``model`` (in place) and return the LoraModel wrapping it; only A and B train."""
    return LoraModel(model, config, adapter_name, rng=rng)
