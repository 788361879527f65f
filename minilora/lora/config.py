"""LoraConfig: which layers get an adapter, and of what rank, scale and initialisation.

Field names and meanings follow PEFT's LoraConfig, so a config written here
reads the same to someone who knows PEFT.
"""
import dataclasses
import math
import numbers
import re
from dataclasses import dataclass, field

BIAS_CHOICES = ("none", "all", "lora_only")
INIT_CHOICES = (True, False, "gaussian", "pissa")


@dataclass
class LoraConfig:
    """What get_peft_model needs to add LoRA to a model.

    r: the rank of each update B A.  lora_alpha: with r, sets the scale
    s = alpha / r (alpha / sqrt(r) if use_rslora).  lora_dropout: dropout on the
    input of the low-rank path only.  target_modules: which Linear layers to
    adapt: a list (or set) of name suffixes ("q" matches "blocks.0.attn.q"), a
    regex that must match the whole name, or "all-linear"; None means the model's
    own query and value projections, the paper's choice (``model.lora_target_modules``:
    ["q", "v"] for the GPT, ["q_proj", "v_proj"] for the Llama), resolved by
    get_peft_model as PEFT resolves it by model type.  exclude_modules: the same forms, removed from the
    targets.  bias: which biases train: "none", "all", or "lora_only" (those of
    adapted layers).  init_lora_weights: True (Kaiming-uniform A, zero B, as
    loralib and PEFT), "gaussian" (A ~ N(0, (1/r)^2), zero B, as PEFT), False
    (A and B both random, so the adapter is not zero at init: for tests, as
    PEFT), or "pissa" (A and B from the top-r SVD of W0).  rank_pattern /
    alpha_pattern: per-layer overrides, {regex matched against the end of the
    module name: value}.

    Values are stored as plain Python (a set of names becomes a sorted list,
    numpy numbers become int or float), so ``to_dict()`` is plain JSON.
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
        if self.target_modules is not None:
            self.target_modules = _names("target_modules", self.target_modules)
        if self.exclude_modules is not None:
            self.exclude_modules = _names("exclude_modules", self.exclude_modules)
        self.r = _rank("r", self.r)
        self.lora_alpha = _alpha("lora_alpha", self.lora_alpha)
        if isinstance(self.lora_dropout, bool) or not isinstance(self.lora_dropout, numbers.Real) \
                or not 0 <= self.lora_dropout < 1:
            raise ValueError(f"LoraConfig: lora_dropout={self.lora_dropout!r} must be in [0, 1). Fix: e.g. lora_dropout=0.1.")
        self.lora_dropout = float(self.lora_dropout)
        if self.bias not in BIAS_CHOICES:
            raise ValueError(f"LoraConfig: bias={self.bias!r} is not one of {BIAS_CHOICES}. Fix: bias='none' (the paper's choice).")
        init = self.init_lora_weights
        if not (isinstance(init, bool) or (isinstance(init, str) and init in INIT_CHOICES)):  # 1 == True: check the type
            raise ValueError(
                f"LoraConfig: init_lora_weights={init!r} is not one of {INIT_CHOICES}. "
                "Fix: init_lora_weights=True (Kaiming-uniform A, zero B)."
            )
        self.rank_pattern = {key: _rank(f"rank_pattern[{key!r}]", value)
                             for key, value in _patterns("rank_pattern", self.rank_pattern).items()}
        self.alpha_pattern = {key: _alpha(f"alpha_pattern[{key!r}]", value)
                              for key, value in _patterns("alpha_pattern", self.alpha_pattern).items()}

    # ---- per-layer choices --------------------------------------------------
    def for_model(self, model):
        """This config with target_modules=None replaced by the model's default (PEFT does the same by model type)."""
        if self.target_modules is not None:
            return self
        default = getattr(model, "lora_target_modules", None)
        if default is None:
            raise ValueError(
                f"LoraConfig(target_modules=None) means the model's default targets, but {type(model).__name__} "
                "names none (no lora_target_modules). Fix: pass target_modules, e.g. ['q_proj', 'v_proj'] or 'all-linear'."
            )
        return dataclasses.replace(self, target_modules=list(default))

    def targets(self, name):
        """Does the module called ``name`` get an adapter? (Before the Linear-only and output-head rules.)"""
        wanted = self.target_modules == "all-linear" or _matches(self.target_modules, name)
        return wanted and not (self.exclude_modules is not None and _matches(self.exclude_modules, name))

    def rank_and_alpha(self, name):
        """(r, alpha) for the module called ``name``, after rank_pattern and alpha_pattern."""
        return (pattern_value(self.rank_pattern, name, self.r), pattern_value(self.alpha_pattern, name, self.lora_alpha))

    def scaling(self, r, alpha):
        """s = alpha / r (the paper's and PEFT's default), or alpha / sqrt(r) with rsLoRA.

        Trained from B = 0, alpha / sqrt(r) keeps the size of s B A x about the same
        as r changes, while alpha / r makes it smaller as r grows (measured in
        docs/lora.md with bench/scaling_alpha.py).
        """
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


def _rank(what, r):
    """``r`` as an int; numpy integers are fine, bools and floats are not."""
    if isinstance(r, bool) or not isinstance(r, numbers.Integral) or r <= 0:
        raise ValueError(f"LoraConfig: {what}={r!r} must be a positive integer (the rank of B A). Fix: e.g. r=8.")
    return int(r)


def _alpha(what, alpha):
    """``alpha`` as an int or float: positive and finite (inf or NaN would make every output NaN)."""
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0 < alpha < math.inf:
        raise ValueError(
            f"LoraConfig: {what}={alpha!r} must be a finite positive number (the scale is alpha / r). "
            "Fix: set it to the first r you try, as the paper does, e.g. lora_alpha=8."
        )
    return int(alpha) if isinstance(alpha, numbers.Integral) else float(alpha)


def _regex_error(what, pattern, error):
    return ValueError(
        f"LoraConfig: {what} {pattern!r} is not a valid regular expression ({error}). "
        "Fix: correct it, or escape characters meant literally (re.escape(name))."
    )


def _names(what, value):
    """target_modules / exclude_modules as a regex string (checked) or a list of suffixes (a set is sorted)."""
    if isinstance(value, str):
        if value != "all-linear":
            try:
                re.compile(value)
            except re.error as error:
                raise _regex_error(what, value, error) from None
        return value
    if isinstance(value, (list, tuple, set, frozenset)) and all(isinstance(v, str) for v in value):
        return sorted(value) if isinstance(value, (set, frozenset)) else list(value)
    raise ValueError(
        f"LoraConfig: {what}={value!r} must be a list (or set) of name suffixes, a regex string, or 'all-linear'."
    )


def _patterns(what, pattern):
    """Check rank_pattern / alpha_pattern: a dict whose keys are regexes."""
    if not isinstance(pattern, dict):
        raise ValueError(f"LoraConfig: {what}={pattern!r} must be a dict {{regex: value}}, e.g. {{'attn.v': 16}}.")
    for key in pattern:
        if not isinstance(key, str):
            raise ValueError(f"LoraConfig: {what} key {key!r} must be a string (a regex for the end of a module name).")
        try:
            re.compile(rf"(.*\.)?({key})$")
        except re.error as error:
            raise _regex_error(f"{what} key", key, error) from None
    return pattern


def _matches(spec, name):
    """PEFT's rule: a string is a regex for the whole name; a list holds suffixes ending at a '.'."""
    if isinstance(spec, str):
        return re.fullmatch(spec, name) is not None
    return any(name == s or name.endswith("." + s) for s in spec)


def pattern_value(pattern, name, default):
    """PEFT's per-module override: the value of the first key whose regex matches the end of ``name``."""
    for key, value in pattern.items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return default
