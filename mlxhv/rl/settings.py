"""The settings of one RL run (`RLSettings`, PPO or GRPO), what `--resume` restores of them, and the prompt an
`init_adapter` brings. Settings that cannot apply together are refused when the dataclass is built."""

from __future__ import annotations


import json
from dataclasses import dataclass, field, fields
from pathlib import Path


from mlxhv.errors import SettingsError
from mlxhv.paths import resolve_path
from mlxhv.prompts import PROMPT_CONFIG_FILE
from mlxhv.rl.algorithms import ALGORITHMS
from mlxhv.rl.curriculum import CURRICULA
from mlxhv.rl.grpo import GRPOSettings
from mlxhv.rl.lora import (LoRASettings)
from mlxhv.rl.ppo import PPOLossSettings
from mlxhv.rl.reward import RewardSettings


@dataclass
class RLSettings:
    """One RL run's settings, PPO or GRPO (`algo`); `mlxhv train ppo` builds it from a config file and options."""

    # what to train on, and how
    algo: str = "ppo"  # ppo (critic, GAE) | grpo (group-normalised advantages, no critic): rl/algorithms.py
    model: str = "smollm2-135m"
    precision: str = "auto"
    # paths, or the names of shipped files (data/train.jsonl, smollm2-135m-judge: mlxhv.paths.resolve_path)
    train: str | list[str] = "data/train.jsonl"  # one file or several (rl/curriculum.load_training_sets)
    synth: int = 0  # add this many `data synth` examples (every level) to the training prompts
    synth_seed: int = 0
    holdout: str | None = "data/holdout.jsonl"
    out: str = "runs/ppo"
    # schedule
    steps: int = 20
    max_minutes: float | None = None  # wall-clock budget: the first step begun after it is spent is the last one
    prompts_per_step: int = 8
    samples_per_prompt: int = 2  # k answers per prompt
    balance_classes: bool = False  # each step draws its prompts evenly from every gold decision
    curriculum: str = "none"  # "levels": difficulty level 1 first, towards level 4 (rl/curriculum.py)
    curriculum_ramp: float = 0.5  # share of the steps after which every level is drawn equally
    ppo_epochs: int = 2
    minibatch_size: int = 4
    # sampling (logits are divided by this temperature when computing log-probs too)
    max_new_tokens: int = 64
    temperature: float = 0.7
    top_p: float = 1.0
    rollout_batch_size: int = 16
    system_prompt_file: str | None = None  # a variant of prompts.SYSTEM_PROMPT (rollouts and holdout evaluation)
    answer_prefix: str = ""  # opens every answer, in rollouts and holdout evaluation (prompts.JSON_ANSWER_PREFIX);
    #                          "" with init_adapter: the adapter's (apply_adapter_prompt)
    # optimisation
    lr: float = 5e-5
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0  # gradient clipping (37 details #11)
    gamma: float = 1.0
    lam: float = 0.95
    whiten_advantages: bool = True  # advantage normalisation (37 details #7)
    whiten_rewards: bool = False  # reward whitening (N details of RLHF): off, our reward has a fixed scale
    score_baseline: str = "none"  # "loo": subtract the mean score of the prompt's other answers (RLOO), k >= 2
    kl_coef: float = 0.05  # initial beta of the per-token KL penalty
    kl_target: float | None = 1.0  # adaptive KL controller target (sequence KL, nats); None: fixed beta
    kl_horizon: int = 1000
    value_inner: int = 256
    train_threads: int | None = 2  # OpenBLAS threads for prompts, reference and update passes; None: as is
    share_prompts: bool = True  # run each prompt once for its k answers in every pass (rl/passes.py)
    cache_trunk: bool | None = None  # with share_prompts: blocks below the first LoRA block once per rollout;
    #                                  None: yes when sharing
    seed: int = 0
    init_adapter: str | None = None  # start from this adapter (ours or mlx_lm.lora's; its LoRA layout is used)
    # the KL term's reference: "init" the policy the run starts from (init_adapter's weights; the base model
    # without one), as TRL's ref_model; "base" the base model (LoRA off) even when starting from an adapter
    kl_reference: str = "init"
    check_every: int = 10  # under mlx.launch: compare the ranks' weights every N steps (0: never)
    # bookkeeping
    save_every: int = 10
    eval_every: int = 0  # 0: evaluate on the holdout only at the end
    eval_limit: int | None = None
    eval_max_tokens: int | None = None  # default: max_new_tokens
    lora: LoRASettings = field(default_factory=LoRASettings)
    loss: PPOLossSettings = field(default_factory=PPOLossSettings)
    reward: RewardSettings = field(default_factory=RewardSettings)
    grpo: GRPOSettings = field(default_factory=GRPOSettings)

    def __post_init__(self):
        from mlxhv.prompts import resolve_answer_prefix

        build_nested(self, {"lora": LoRASettings, "loss": PPOLossSettings, "reward": RewardSettings,
                            "grpo": GRPOSettings})
        self.answer_prefix = resolve_answer_prefix(self.answer_prefix)
        if self.kl_reference not in ("init", "base"):
            raise SettingsError(f"kl_reference must be 'init' or 'base', not {self.kl_reference!r}")
        if self.score_baseline not in ("none", "loo"):
            raise SettingsError(f"score_baseline must be 'none' or 'loo', not {self.score_baseline!r}")
        if self.cache_trunk and not self.share_prompts:
            raise SettingsError("cache_trunk needs share_prompts: the trunk cache is part of the shared-prompt passes")
        if self.score_baseline == "loo" and self.samples_per_prompt < 2:
            raise SettingsError("score_baseline 'loo' needs samples_per_prompt >= 2: with one answer per prompt "
                                "there are no other answers to take the mean of")
        if self.curriculum not in CURRICULA:
            raise SettingsError(f"curriculum must be one of {', '.join(CURRICULA)}, not {self.curriculum!r}")
        if self.curriculum == "none" and self.curriculum_ramp != 0.5:
            raise SettingsError("curriculum_ramp needs curriculum: levels")
        if self.algo not in ALGORITHMS:
            raise SettingsError(f"algo must be one of {', '.join(ALGORITHMS)}, not {self.algo!r}")
        foreign = self._foreign_settings()
        if foreign:
            raise SettingsError(f"{', '.join(foreign)}: not used by algo {self.algo!r} (remove them, or change algo)")
        if self.share_prompts and self.minibatch_size < self.samples_per_prompt:
            raise SettingsError(f"minibatch_size {self.minibatch_size} < samples_per_prompt "
                                f"{self.samples_per_prompt}: with share_prompts a minibatch holds whole prompt "
                                "groups; raise minibatch_size or set share_prompts: false")

    def _foreign_settings(self) -> list[str]:
        """Settings changed from their defaults that the chosen algorithm does not use."""
        if self.algo == "grpo":
            names = [n for n in PPO_ONLY if getattr(self, n) != _FIELDS[n].default]
            names += [f"loss.{n}" for n in PPO_ONLY_LOSS if getattr(self.loss, n) != getattr(PPOLossSettings(), n)]
            return names
        return [f"grpo.{f.name}" for f in fields(GRPOSettings) if getattr(self.grpo, f.name) != f.default]

    @classmethod
    def from_dict(cls, d: dict) -> "RLSettings":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise SettingsError(f"unknown RL setting(s): {', '.join(sorted(unknown))}")
        return cls(**d)


def build_nested(settings, nested: dict) -> None:
    """Turn the nested settings given as dicts (`lora={"rank": 8}`) into their dataclasses, in place; an unknown
    key is a SettingsError naming the field."""
    for name, cls in nested.items():
        value = getattr(settings, name)
        if isinstance(value, dict):
            names = {f.name for f in fields(cls)}
            unknown = sorted(set(value) - names)
            if unknown:
                raise SettingsError(f"{name}: unknown setting(s) {', '.join(unknown)}; known: "
                                    f"{', '.join(sorted(names))}")
            setattr(settings, name, cls(**value))


_FIELDS = {f.name: f for f in fields(RLSettings)}


def _same(a, b) -> bool:
    """Equal settings values; one training file equals a list holding only it."""
    one = lambda v: v[0] if isinstance(v, list) and len(v) == 1 else v  # noqa: E731
    return one(a) == one(b)


# What a resume may change: how long the run goes on and how often it saves and evaluates, none of which changes
# a step it replays. Not `steps` under a curriculum: its level schedule is a share of the steps.
RESUME_OVERRIDES = ("steps", "max_minutes", "save_every", "eval_every", "eval_limit")


def restore_settings(given: dict) -> RLSettings:
    """The settings of the run that `--resume` continues: `<out>/settings.json` (out from `given`, else the
    default). A resumed run replays the run it continues (everything random derives from seed and step), so every
    setting given again must equal the run's (except RESUME_OVERRIDES); one that differs is a SettingsError.
    Without settings.json (no run there yet) `given` starts it."""
    out = Path(given.get("out") or _FIELDS["out"].default)
    path = out / "settings.json"
    if not path.is_file():
        return RLSettings.from_dict(given)
    try:
        saved_d = json.loads(path.read_text())
    except ValueError as e:
        raise SettingsError(f"{path}: not JSON ({e})") from None
    saved = RLSettings.from_dict(saved_d)
    asked = RLSettings.from_dict({**saved_d, **{k: ({**saved_d.get(k, {}), **v} if isinstance(v, dict) else v)
                                                for k, v in given.items()}})
    diffs = []
    safe = RESUME_OVERRIDES if saved.curriculum == "none" else tuple(n for n in RESUME_OVERRIDES if n != "steps")
    for k, v in given.items():
        if k in safe:
            continue
        pairs = ([(f"{k}.{n}", getattr(getattr(asked, k), n), getattr(getattr(saved, k), n)) for n in v]
                 if isinstance(v, dict) else [(k, getattr(asked, k), getattr(saved, k))])
        diffs += [f"{name} {a!r} (the run's: {b!r})" for name, a, b in pairs if not _same(a, b)]
    if diffs:
        raise SettingsError(f"{path}: --resume continues the run with its own settings, and these differ: "
                            f"{'; '.join(diffs)}. Leave them out, or start a new run with another out "
                            f"(a resume may change only {', '.join(safe)})")
    return RLSettings.from_dict({**saved_d, **{k: given[k] for k in safe if k in given}})


def apply_adapter_prompt(s: RLSettings, out: Path) -> None:
    """With `init_adapter`: prompt as the adapter was trained (its judge_prompt.json), as eval, judge and serve do.
    Its answer prefix applies when `answer_prefix` is unset (""); its system prompt when `system_prompt_file` is
    unset (a custom text is written to `<out>/system_prompt.txt` and named there, so settings.json records it). A
    setting that differs from the adapter's is a SettingsError."""
    from mlxhv.prompts import SYSTEM_PROMPT, load_system_prompt, read_prompt_config

    saved = read_prompt_config(resolve_path(s.init_adapter)) if s.init_adapter else None
    if saved is None:
        return
    where = resolve_path(s.init_adapter) / PROMPT_CONFIG_FILE
    if s.answer_prefix and s.answer_prefix != saved.answer_prefix:
        raise SettingsError(f"answer_prefix {s.answer_prefix!r}: init_adapter was trained with "
                            f"{saved.answer_prefix!r} ({where}); leave it unset to use the adapter's")
    s.answer_prefix = saved.answer_prefix
    if s.system_prompt_file:
        if load_system_prompt(s.system_prompt_file) != saved.system_prompt_text:
            raise SettingsError(f"system_prompt_file {s.system_prompt_file}: differs from the system prompt "
                                f"init_adapter was trained with ({where}); leave it unset to use the adapter's")
    elif saved.system_prompt_text != SYSTEM_PROMPT:
        path = out / "system_prompt.txt"
        out.mkdir(parents=True, exist_ok=True)
        if not path.is_file() or path.read_text(encoding="utf-8") != saved.system_prompt_text:
            path.write_text(saved.system_prompt_text, encoding="utf-8")
        s.system_prompt_file = str(path)
PPO_ONLY = ("score_baseline", "whiten_rewards", "whiten_advantages", "gamma", "lam")  # GRPO: group baseline
PPO_ONLY_LOSS = ("clip_range", "clip_range_value", "vf_coef", "ent_coef")  # GRPO: grpo.clip_low / clip_high
