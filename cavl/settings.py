"""The config model: one typed dataclass per section of the configuration, nested as the YAML nests.

    pretrain = load_section(PretrainSection, config, "pretrain")   # validated, defaults filled, typed

Defaults live only in workflow/schemas/config.schema.yaml: section dataclasses have none, and the
few that code also builds piecemeal take the schema's (`schema_defaults`). Mappings keyed by data
(dataset names, methods) are dict fields. Operational keys — those that change nothing a run
computes — are marked once (`operational()`): checkpoint fingerprints leave them out, and the
workflow leaves the job-only ones (memory, run time) out of the stages' settings.

This module imports no torch: the workflow imports it.
"""

from __future__ import annotations

import copy
import functools
import typing
from dataclasses import MISSING, Field, dataclass, field, fields, is_dataclass

from cavl.config import ConfigError, _fill_defaults, load_schema, validate_config

# --- The schema's defaults ---


@functools.lru_cache(maxsize=1)
def _schema() -> dict:
    return load_schema()  # shared: never modified


def schema_node(key: str) -> dict:
    """The schema of the dotted config key (e.g. "pretrain.optim.lr"; "" the whole configuration)."""
    node = _schema()
    for part in key.split(".") if key else []:
        try:
            node = node["properties"][part]
        except KeyError:
            raise KeyError(f"the schema has no config key {key!r}") from None
    return node


def schema_default(key: str):
    """The schema's default of a dotted config key (a fresh copy, a mapping's defaults filled in)."""
    node = schema_node(key)
    if "default" not in node:
        raise KeyError(f"config key {key!r} has no default in the schema")
    value = copy.deepcopy(node["default"])
    if isinstance(value, dict):
        _fill_defaults(value, node)
    return value


def schema_defaults(section: str, **renamed):
    """Class decorator, under @dataclass: each field defaults to the schema's `section.<field>`
    (`section.<renamed[field]>`); the keys are kept in `__schema_defaults__` for `from_settings`."""

    def wrap(cls):
        sources = {}
        for name in cls.__dict__.get("__annotations__", {}):
            key = f"{section}.{renamed.pop(name, name)}"
            value = schema_default(key)
            current = cls.__dict__.get(name, MISSING)
            if current is not MISSING and not isinstance(current, Field):
                raise TypeError(f"{cls.__name__}.{name}: the default is the schema's ({key}); write none")
            f = current if isinstance(current, Field) else field()
            if isinstance(value, (list, dict)):
                f.default_factory = functools.partial(copy.deepcopy, value)
            else:
                f.default = value
            setattr(cls, name, f)
            sources[name] = key
        if renamed:
            raise TypeError(f"{cls.__name__} has no field(s) {sorted(renamed)}")
        cls.__schema_defaults__ = sources
        cls.__schema_section__ = section
        return cls

    return wrap


def from_settings(cls, settings, **values):
    """A `schema_defaults` dataclass with each field read from `settings` (the section's
    dataclass) at the key its default comes from; `values` given instead."""
    prefix = cls.__schema_section__ + "."
    for name, key in cls.__schema_defaults__.items():
        if name not in values:
            value = settings
            for part in key.removeprefix(prefix).split("."):
                value = value[part] if isinstance(value, dict) else getattr(value, part)
            values[name] = copy.deepcopy(value)
    return cls(**values)


# --- Operational keys ---


def operational(job: bool = False):
    """A field whose key changes nothing a run computes (fingerprints leave it out); job=True:
    it only schedules the job, so the workflow leaves it out of the stage's settings too."""
    return field(metadata={"operational": "job" if job else True})


def operational_keys(cls, job: bool = False) -> frozenset:
    """Dotted keys (relative to `cls`) of its operational fields, nested ones included; job=True:
    only the job-only ones."""
    keys = set()
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        mark = f.metadata.get("operational")
        if mark and (not job or mark == "job"):
            keys.add(f.name)
        elif is_dataclass(hints[f.name]):
            keys.update(f"{f.name}.{k}" for k in operational_keys(hints[f.name], job))
    return frozenset(keys)


def without(mapping: dict, keys) -> dict:
    """A copy of a nested mapping less the dotted `keys` (those it lacks are passed over)."""
    out = dict(mapping)
    nested = {}
    for key in keys:
        head, _, rest = key.partition(".")
        if rest:
            nested.setdefault(head, []).append(rest)
        else:
            out.pop(head, None)
    for head, rest in nested.items():
        if isinstance(out.get(head), dict):
            out[head] = without(out[head], rest)
    return out


# --- Building a section's dataclass ---


def _key(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def from_section(cls, section: dict, where: str):
    """The dataclass `cls` of a validated config section (`where`: its dotted key). A key only
    one of the two has (a schema/dataclass mismatch) or a value the dataclass refuses is a
    ConfigError naming the key."""
    if not isinstance(section, dict):
        raise ConfigError(f"config key {where!r}: expected a mapping, got {section!r}")
    names = [f.name for f in fields(cls)]
    unknown = [k for k in section if k not in names]
    if unknown:
        raise ConfigError(f"unknown config key {', '.join(repr(_key(where, k)) for k in unknown)} "
                          f"({cls.__name__} has no such field)")
    missing = [k for k in names if k not in section]
    if missing:
        raise ConfigError(f"config key {', '.join(repr(_key(where, k)) for k in missing)} missing "
                          f"(the schema gives {cls.__name__} no default for it)")
    hints = typing.get_type_hints(cls)
    values = {name: from_section(hints[name], section[name], _key(where, name)) if is_dataclass(hints[name])
              else copy.deepcopy(section[name]) for name in names}
    try:
        return cls(**values)
    except ValueError as e:
        raise ConfigError(f"config key {where!r}: {e}") from e


@functools.lru_cache(maxsize=None)
def _section_schema(name: str) -> dict:
    """The schema cut down to one top-level section (definitions kept)."""
    schema = {k: v for k, v in _schema().items() if k not in ("properties", "required")}
    return {**schema, "properties": {name: _schema()["properties"][name]}}


def load_section(cls, config: dict, name: str):
    """`config[name]` validated, defaults filled in, as the dataclass `cls` (ConfigError names a bad key)."""
    section = validate_config({name: config.get(name) or {}}, _section_schema(name))[name]
    return from_section(cls, section, name)


# --- model ---


@dataclass
class ModelSettings:
    """`model:` — the backbone every stage builds on."""
    bert: str  # Hugging Face BERT folder; package:NAME = NAME.get_model_path()
    hidden_dropout: float | None  # override the checkpoint's hidden_dropout_prob (None = keep)
    attention_dropout: float | None  # override attention_probs_dropout_prob (None = keep)
    standardize_features: bool  # per-dimension mean/std of the pretraining regions, kept with the model


# --- pretrain (OptimConfig, TrainConfig: also the training loop's, with pretrain's defaults) ---


@dataclass
class PretrainData:
    """`pretrain.data:` — what the batches are made of."""
    sources: list | None  # caption sources (coco, vg); None = those configured (cavl.config.resolve_config)
    max_captions_per_image: dict  # per source, at most this many captions per image (0 = all)
    max_text_len: int  # wordpiece tokens per caption, [CLS] and [SEP] included
    max_regions: int  # region tokens per image
    num_workers: int = operational()  # DataLoader worker processes per training process


@dataclass
class MlmSettings:
    """`pretrain.mlm:` — masked language modelling."""
    weight: float  # weight of mlm_loss in the total (0 = off)
    probability: float  # fraction of text tokens chosen (80/10/10 mask/random/keep)


@dataclass
class ItmSettings:
    """`pretrain.itm:` — image-text matching."""
    weight: float  # weight of itm_loss in the total (0 = off)
    negative_fraction: float  # fraction of pairs whose caption is another image's


@dataclass
class PwclSettings:
    """`pretrain.pwcl:` — the pair-wise contrastive loss between E' and F'."""
    weight: float  # weight of pwcl_loss in the total (0 = off)
    loss: str  # pairwise (the paper's) | infonce (CLIP's)
    encoding: str  # joint | joint_clean | separate (cavl.model.PWCL_ENCODINGS)
    temperature: float  # tau in exp(cos / tau)
    learnable_temperature: bool  # learn log(tau) with the model


@dataclass
@schema_defaults("pretrain.optim")
class OptimConfig:
    """Optimiser and learning-rate schedule (`pretrain.optim:`; finetuning builds one per task)."""
    name: str  # sgd: SGD with momentum (the paper) | adamw
    lr: float  # peak learning rate, reached at the end of warm-up
    momentum: float  # SGD momentum
    weight_decay: float  # L2 / decoupled decay; never on biases, LayerNorm or temperature
    betas: list  # AdamW betas
    eps: float  # AdamW epsilon
    warmup_fraction: float  # linear warm-up over this fraction of the steps, then linear decay to 0
    grad_clip: float  # clip the global gradient norm to this (0 = no clipping)
    new_lr_scale: float  # lr multiplier for the model's `new_parameter_names()` (trained from scratch)

    def __post_init__(self):
        if self.name not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {self.name!r}")
        if self.new_lr_scale <= 0:
            raise ValueError(f"new_lr_scale must be > 0, got {self.new_lr_scale}")


@dataclass
@schema_defaults("pretrain.train")
class TrainConfig:
    """Loop length, precision, logging, checkpoints (`pretrain.train:`; finetuning builds one per task)."""
    batch_size: int  # examples per process per micro-batch
    grad_accum: int  # micro-batches per optimiser step
    epochs: int  # passes over the data (ignored when max_steps > 0)
    max_steps: int  # optimiser steps in total; 0 = epochs × steps per epoch
    precision: str  # autocast dtype on GPU: bf16 | fp16 (with a grad scaler) | fp32; CPU runs fp32
    seed: int  # seeds weights init, dropout and the data order
    log_every: int = operational()  # optimiser steps between log lines
    checkpoint_every: int = operational()  # optimiser steps between checkpoints (and one at the end)
    keep_checkpoints: int = operational()  # newest checkpoints kept (>= 2 so a corrupt newest has a fallback)
    eval_every: int = operational()  # optimiser steps between evaluations (0 = only at the end)

    def __post_init__(self):
        if self.precision not in ("bf16", "fp16", "fp32"):
            raise ValueError(f"precision must be bf16, fp16 or fp32, got {self.precision!r}")
        for name in ("batch_size", "grad_accum", "log_every", "checkpoint_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")


@dataclass
class PretrainEval:
    """`pretrain.eval:` — held-out losses and retrieval by E'·F' on the val split."""
    val_batches: int  # val batches whose losses are averaged
    retrieval_pairs: int  # held-out (caption, image) pairs, distinct images, ranked by cos(E', F')


@dataclass
class PretrainSection:
    """`pretrain:` — contrastive pretraining."""
    gpus: int  # processes under torchrun, one per GPU (0 = one CPU process); in the fingerprint
    threads: int = operational()  # torch CPU threads per process
    mem_mb: int = operational(job=True)  # memory per job (the Snakemake rule's resource)
    data: PretrainData = field()
    mlm: MlmSettings = field()
    itm: ItmSettings = field()
    pwcl: PwclSettings = field()
    optim: OptimConfig = field()
    train: TrainConfig = field()
    eval: PretrainEval = operational()  # what the log reports on the val split, not what trains


# --- finetune ---

# Backbone parts that may train besides Adapter II (`also_train`).
BACKBONE_GROUPS = ("layer_norm", "visual_embeddings", "pooler")


@dataclass
@schema_defaults("finetune.adapters")
class AdapterSettings:
    """`finetune.adapters:` — architecture of the adapters (cavl.adapters)."""
    bottleneck: int  # Adapter II width r: Down hidden→r, Up r→hidden
    shortcut_layers: int  # Adapter I: transformer layers of the shortcut block
    shortcut_width: int  # Adapter I: hidden width of the shortcut block
    shortcut_heads: int  # Adapter I: attention heads of the shortcut block (must divide the width)
    also_train: list  # with Adapter II: backbone groups that train too

    def __post_init__(self):
        unknown = set(self.also_train) - set(BACKBONE_GROUPS)
        if unknown:
            raise ValueError(f"also_train: unknown group(s) {sorted(unknown)}; known: {BACKBONE_GROUPS}")
        if self.bottleneck < 1 or self.shortcut_layers < 1 or self.shortcut_width < 1:
            raise ValueError("bottleneck, shortcut_layers and shortcut_width must be >= 1")
        if self.shortcut_width % self.shortcut_heads:
            raise ValueError(f"shortcut_width {self.shortcut_width} is not a multiple of "
                             f"shortcut_heads {self.shortcut_heads}")


@dataclass
class CacheSettings:
    """`finetune.cache:` — the frozen-backbone cache (adapter1, linear)."""
    enabled: bool  # compute the frozen backbone's states once, reuse them every epoch
    dtype: str  # storage type of the cached states: float16 | float32


@dataclass
class FinetuneOptim:
    """`finetune.optim:` — as OptimConfig, with a peak learning rate per method."""
    name: str  # adamw | sgd
    lr: dict  # method → peak learning rate
    momentum: float
    weight_decay: float
    betas: list
    eps: float
    warmup_fraction: float
    grad_clip: float


@dataclass
class FinetuneTrain:
    """`finetune.train:` — as TrainConfig, less epochs and batch_size (per task)."""
    grad_accum: int
    max_steps: int
    precision: str
    seed: int
    log_every: int = operational()
    checkpoint_every: int = operational()
    keep_checkpoints: int = operational()
    eval_every: int = operational()


@dataclass
class TaskSection:
    """What every `finetune.tasks.<task>` entry has (evaluate-only zs_tir: this and its options)."""
    eval_split: str = operational()  # split evaluated (rule evaluate; in training only with train.eval_every)
    max_text_len: int = field()  # wordpiece tokens per sequence
    max_regions: int = field()  # region tokens per image


@dataclass
class TrainedTaskSection(TaskSection):
    """What a finetuned task's entry has besides its options."""
    method: str = field()  # full | linear | adapter1 | adapter2 | adapter1+2
    train_split: str = field()  # split trained on
    select_split: str | None = field()  # split the best epoch is chosen on; None: held-out train images
    epochs: int = field()
    batch_size: int = field()


@dataclass
class VqaSection(TrainedTaskSection):
    answer_vocab_size: int = field()  # answer classes: the K most frequent train answers


@dataclass
class VcrSection(TrainedTaskSection):
    pass


@dataclass
class Nlvr2Section(TrainedTaskSection):
    pass


@dataclass
class RpgSection(TrainedTaskSection):
    pass


@dataclass
class TirSection(TrainedTaskSection):
    lr: float | dict | None = field()  # this task's peak lr (a number or per method) over finetune.optim.lr
    retrieval: str = field()  # two_stage | exhaustive
    shortlist_k: int = field()  # candidates re-ranked per query (0 = E'·F' only)
    sim_weight: float = field()  # re-ranking score = ITM log-odds + sim_weight · cos(E', F')
    pwcl_weight: float = field()  # auxiliary PwCL on E', F' (0 = off)
    temperature: float = field()  # its tau and that of the hard-negative sampling


@dataclass
class ZsTirSection(TaskSection):
    retrieval: str = field()
    shortlist_k: int = field()
    sim_weight: float = field()


@dataclass
class FinetuneTasks:
    """`finetune.tasks:` — one entry per registered task (cavl.tasks.REGISTRY)."""
    vqa: VqaSection
    vcr: VcrSection
    nlvr2: Nlvr2Section
    rpg: RpgSection
    tir: TirSection
    zs_tir: ZsTirSection


@dataclass
class FinetuneSection:
    """`finetune:` — shared settings; per-task ones under `tasks`."""
    gpus: int = operational()  # processes under torchrun (0 = one CPU process)
    threads: int = operational()  # torch CPU threads per process
    num_workers: int = operational()  # DataLoader worker processes per training process
    mem_mb: int = operational(job=True)  # memory per finetune / evaluate job (the rules' resource)
    eval_batch_size: int = operational()  # items per evaluation batch (and backbone-cache chunk)
    select_fraction: float = field()  # select_split None: share of the train images held out for it
    adapters: AdapterSettings = field()
    cache: CacheSettings = field()
    optim: FinetuneOptim = field()
    train: FinetuneTrain = field()
    tasks: FinetuneTasks = field()


# A task entry's keys besides its options: lr is the task's own finetune.optim.lr.
_NOT_OPTIONS = frozenset(f.name for f in fields(TrainedTaskSection)) | {"lr"}


def task_section(task: str) -> type:
    """The dataclass of `finetune.tasks.<task>`."""
    hints = typing.get_type_hints(FinetuneTasks)
    if task not in hints:
        raise ValueError(f"finetune.tasks has no entry {task!r}; known: {', '.join(hints)}")
    return hints[task]


def option_keys(cls) -> list:
    """A task entry's own keys (e.g. vqa's answer_vocab_size), which its Task reads as `options`."""
    return [f.name for f in fields(cls) if f.name not in _NOT_OPTIONS]


def task_options(task: str) -> dict:
    """A task's options with the schema's defaults (`Task.options`)."""
    return {k: schema_default(f"finetune.tasks.{task}.{k}") for k in option_keys(task_section(task))}


# --- extract ---


@dataclass
class DetectorVocab:
    """`extract.detector.vocab:`"""
    objects: str | None
    attributes: str | None
    num_objects: int
    num_attributes: int


@dataclass
class DetectorSettings:
    """`extract.detector:` — the detector and its input size."""
    config: str
    weights: str | None
    seed: int
    min_size: int | None
    max_size: int | None
    proposals: int | None
    opts: list
    device: str
    amp: bool
    attributes: bool
    vocab: DetectorVocab


@dataclass
class BoxSettings:
    """`extract.boxes:` — which regions each image keeps."""
    mode: str
    max_boxes: int
    min_boxes: int
    score_threshold: float
    nms_threshold: float


@dataclass
class DetectorTrain:
    """`extract.train:` — rule train_detector (extract.train)."""
    sources: list | None
    init_weights: str | None
    opts: list
    iterations: int
    batch_size: int
    lr: float
    lr_steps: list
    warmup_iterations: int
    checkpoint_every: int = operational()
    log_every: int = operational()
    seed: int = field()
    val_fraction: float = field()
    eval_top_n: int | None = operational()  # validation only
    num_workers: int = field()  # 0 = in the training process (exact resumes): not operational
    threads: int = field()
    gpus: int = field()
    mem_mb: int = operational(job=True)
    runtime: int = operational(job=True)


@dataclass
class ExtractSection:
    """`extract:` — region features (rules extract_shard, gather_features, train_detector)."""
    detector: DetectorSettings
    boxes: BoxSettings
    train: DetectorTrain
    given_boxes: dict  # dataset → none | given | given+detected
    feature_dtype: str
    shard_size: int
    batch_size: int
    num_workers: int = operational()  # image-decoding processes per job
    threads: int = operational()
    row_group_size: int = field()
    max_image_pixels: int = field()
    gpu: int = operational(job=True)
    mem_mb: int = operational(job=True)


# --- demo, and the whole configuration ---


@dataclass
class DemoSection:
    """`demo:` — the embedded demo data (rule demo_data)."""
    enabled: bool
    out_dir: str
    seed: int
    image_size: int
    variant: int
    images: dict  # dataset → images generated


# --- the analyses: ablation grid and alignment pictures ---


@dataclass
class AblationsSection:
    """`ablations:` — the ablation grid (cavl.ablations)."""
    variants: list  # one-key mappings name → config overlay, in table order
    tasks: list | None  # None = the tasks of the default target
    seeds: list  # finetune.train.seed of each cell


@dataclass
class VisualiseSection:
    """`visualise:` — word–region alignment pictures (cavl.visualise)."""
    images: int  # val images pictured per dataset
    threads: int = operational()  # torch CPU threads of the job


@dataclass
class Config:
    """The whole configuration (`datasets`: free-form, the schema checks its entries)."""
    extract: ExtractSection
    demo: DemoSection
    datasets: dict
    model: ModelSettings
    pretrain: PretrainSection
    finetune: FinetuneSection
    ablations: AblationsSection
    visualise: VisualiseSection


def config_model(config: dict) -> Config:
    """A validated configuration (cavl.config.validate_config / resolve_config) as the Config dataclass."""
    return from_section(Config, config, "")
