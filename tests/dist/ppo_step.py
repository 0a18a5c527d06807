"""Run under `mlx.launch -n 2` (or plainly, one rank): one RL iteration on the tiny llama, rank r taking every
2nd prompt of the step; rank 0 writes the updated LoRA weights and the metrics to OUT (argv[1]).

argv[2] (optional) is the algorithm; argv[3] "die" makes rank 1 exit before the update, "die-at-init" right after joining the group (while rank 0
may still be inside init), "hang" makes it sleep."""

import json
import os
import sys
import time
from types import SimpleNamespace

import mlxhv  # noqa: F401  (fast BLAS before mlx.core)
import mlx.core as mx
from mlx.utils import tree_flatten

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from mlxhv import distributed  # noqa: E402
from mlxhv.prompts import JSON_ANSWER_PREFIX  # noqa: E402
from mlxhv.rl.task import JudgeTask  # noqa: E402
from mlxhv.rl.lora import LoRASettings  # noqa: E402
from mlxhv.rl.reward import RewardSettings  # noqa: E402
from mlxhv.rl.trainer import RLSettings, init_state, rl_iteration  # noqa: E402
from tests.rl_tiny import tiny_model  # noqa: E402

PIECES = {3: "VALIDATED", 4: "REJECTED", 5: "REFINED", 6: '", "confidence": 0.8}', 7: '", "confidence": 0.3}'}
TOKENIZER = SimpleNamespace(eos_token_id=2, eos_token_ids={2},
                            decode=lambda ids: "".join(PIECES.get(int(i), " x") for i in ids))


def main(out: str, algo: str = "ppo", fault: str = "") -> None:
    from mlxhv.data import parse_decision_weights, synth_examples

    rank, world = distributed.rank(), distributed.size()
    if fault == "die-at-init" and rank == 1:
        os._exit(5)
    extra = dict(whiten_rewards=True) if algo == "ppo" else dict(grpo={"scale_rewards": "batch", "loss_type": "dapo"})
    s = RLSettings.from_dict(dict(algo=algo, prompts_per_step=4, samples_per_prompt=3, max_new_tokens=4,
                                   temperature=1.0, ppo_epochs=1, minibatch_size=12, lr=1e-2, kl_coef=0.1,
                                   kl_target=1.0, value_inner=8, seed=5, lora={"rank": 4, "alpha": 8, "num_layers": 1},
                                   **extra))
    state = init_state(tiny_model(seed=1, layers=3), TOKENIZER, s)
    exs = synth_examples(8, seed=0, levels=(1,), decision_weights=parse_decision_weights("balanced"))
    prompts = [[1, 8 + i, 9 + (i % 3), 10] for i in range(len(exs))]
    task = JudgeTask(exs, prompts, RewardSettings(), JSON_ANSWER_PREFIX)
    step_idx = task.select(1, s.prompts_per_step, s.seed)
    idx = step_idx[rank::world]
    if fault and rank == 1:
        if fault == "die":
            os._exit(5)
        time.sleep(3600)
    metrics, scored = rl_iteration(state, [prompts[i] for i in idx], lambda j, c: task.score(idx[j], c), 1,
                                   prompt_ids=list(range(rank, len(step_idx), world)))
    if distributed.is_main():
        weights = {k: v for k, v in tree_flatten(state.policy.trainable_parameters())}
        mx.save_safetensors(os.path.join(out, "weights.safetensors"), weights)
        with open(os.path.join(out, "metrics.json"), "w") as f:
            json.dump({"metrics": metrics, "texts": [x.text for x in scored], "world": world}, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
