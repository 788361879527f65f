"""LoraConfig: which layers get an adapter, and of what rank, scale and initialisation.

Field names and meanings follow PEFT's LoraConfig, so a config written here
reads the same to someone who knows PEFT.
"""
import dataclasses
import math
import re
from dataclasses import dataclass, field

BIAS_CHOICES = ("none", "all", "lora_only")
INIT_CHOICES = (True, "gaussian", "pissa")


@dataclass
class LoraConfig:
    """What get_peft_model needs to add LoRA to a model.

    r: the rank of each update B A.  lora_alpha: with r, sets the scale
    s = alpha / r (alpha / sqrt(r) if use_rslora).  lora_dropout: dropout on the
    input of the low-rank path only.  target_modules: which Linear layers to
    adapt: a list of name suffixes ("q" matches "blocks.0.attn.q"), a regex that
    must match the whole name, or "all-linear"; None means ["q", "v"], the
    paper's choice.  exclude_modules: the same forms, removed from the targets.
    bias: which biases train: "none", "all", or "lora_only" (those of adapted
    layers).  init_lora_weights: True (Kaiming-uniform A, zero B, as loralib and
    PEFT), "gaussian" (A ~ N(0, (1/r)^2), zero B, as PEFT), or "pissa" (A and B
    from the top-r SVD of W0).  rank_pattern / alpha_pattern: per-layer
    overrides, {regex matched against the end of the module name: value}.
    """

    r: int = 8
    lora_alpha: float = 8
    lora_dropout: float = 0.0
    target_modules: object = None
    exclude_modules: object = None
    bias: str = "none"
    use_rslora: bool = False
    init_lora_weights: object = True
    rank_pattern: dict = field(default_factory=dict)
    alpha_pattern: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.target_modules is None:
            self.target_modules = ["q", "v"]
        if isinstance(self.target_modules, tuple):
            self.target_modules = list(self.target_modules)
        _check_rank("r", self.r)
        _check_alpha("lora_alpha", self.lora_alpha)
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"LoraConfig: lora_dropout={self.lora_dropout!r} must be in [0, 1). Fix: e.g. lora_dropout=0.1.")
        if self.bias not in BIAS_CHOICES:
            raise ValueError(f"LoraConfig: bias={self.bias!r} is not one of {BIAS_CHOICES}. Fix: bias='none' (the paper's choice).")
        if not (self.init_lora_weights is True or self.init_lora_weights in INIT_CHOICES[1:]):
            raise ValueError(
                f"LoraConfig: init_lora_weights={self.init_lora_weights!r} is not one of {INIT_CHOICES}. "
                "Fix: init_lora_weights=True (Kaiming-uniform A, zero B)."
            )
        for name, value in (("target_modules", self.target_modules), ("exclude_modules", self.exclude_modules)):
            if value is not None and not isinstance(value, str) and not (
                isinstance(value, list) and all(isinstance(v, str) for v in value)
            ):
                raise ValueError(
                    f"LoraConfig: {name}={value!r} must be a list of name suffixes, a regex string, or 'all-linear'."
                )
        for key, value in self.rank_pattern.items():
            _check_rank(f"rank_pattern[{key!r}]", value)
        for key, value in self.alpha_pattern.items():
            _check_alpha(f"alpha_pattern[{key!r}]", value)

    # ---- per-layer choices --------------------------------------------------
    def targets(self, name):
        """Does the module called ``name`` get an adapter? (Before the Linear-only and output-head rules.)"""
        wanted = self.target_modules == "all-linear" or _matches(self.target_modules, name)
        return wanted and not (self.exclude_modules is not None and _matches(self.exclude_modules, name))

    def rank_and_alpha(self, name):
        """(r, alpha) for the module called ``name``, after rank_pattern and alpha_pattern."""
        return (_pattern_value(self.rank_pattern, name, self.r), _pattern_value(self.alpha_pattern, name, self.lora_alpha))

    def scaling(self, r, alpha):
        """s = alpha / r, or alpha / sqrt(r) with rsLoRA (which keeps the update's size stable as r grows)."""
        return alpha / math.sqrt(r) if self.use_rslora else alpha / r

    # ---- files --------------------------------------------------------------
    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values, source="adapter config"):
        """Build from a dict; unknown fields are an error that lists them and the known ones."""
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(
                f"{source}: unknown LoraConfig field(s) {unknown}. Known fields: {known}. "
                "Fix: remove them, or if this is a PEFT adapter use minilora.lora.load_peft_gpt2."
            )
        return cls(**values)


def _check_rank(what, r):
    if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
        raise ValueError(f"LoraConfig: {what}={r!r} must be a positive integer (the rank of B A). Fix: e.g. r=8.")


def _check_alpha(what, alpha):
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
        raise ValueError(
            f"LoraConfig: {what}={alpha!r} must be a positive number (the scale is alpha / r). "
            "Fix: set it to the first r you try, as the paper does, e.g. lora_alpha=8."
        )


def _matches(spec, name):
    """PEFT's rule: a string is a regex for the whole name; a list holds suffixes ending at a '.'."""
    if isinstance(spec, str):
        return re.fullmatch(spec, name) is not None
    return any(name == s or name.endswith("." + s) for s in spec)


def _pattern_value(pattern, name, default):
    for key, value in pattern.items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return default
