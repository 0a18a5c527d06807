"""LoRA RL (PPO, GRPO) and an SFT warm start for the judge, written in MLX to be read against the papers.

Modules: `ppo` (the math: GAE, clipped surrogate, clipped value loss, adaptive KL), `reward` (correctness +
calibration + format), `lora` (adapters in mlx-lm's format, LoRA off for the reference), `value` (value head),
`rollout` (engine samples laid out for the update), `prefix` (a prompt group through the blocks once; the frozen
trunk), `passes` (the seam: whole rows or shared prompts, picked once per rollout), `task` (the judge task: prompts,
prompt selection, the score of an answer as a typed `Scored`, per-step numbers, holdout evaluation), `grpo`
(group advantages and the GRPO / DAPO / Dr. GRPO losses), `algorithms` (the PPO | GRPO seam: advantages and
loss), `curriculum` (the level schedule, the step sampler, several training files), `trainer` (the loop,
checkpoints, resume, ranks; it knows nothing about decisions), `sft` (the supervised warm start on mlx-lm's
tuner), `plot` (curves).

What we follow — PPO (Schulman et al. 2017), cleanrl's ppo.py and "The N implementation details of RLHF with
PPO" (Huang et al.): score added at the final token plus a per-token KL penalty against the reference; adaptive
KL controller (Ziegler et al. 2019); GAE; advantage whitening; clipped surrogate; clipped value loss; entropy
bonus; several epochs over shuffled minibatches; gradient clipping; AdamW; dropout off during rollouts and
updates; logits divided by the sampling temperature when computing log-probs; value head initialised at zero;
a penalty for answers that never end (truncation); EOS kept as the last response token and padding told apart by
length, never by id (SmolLM2 uses id 2 for both).

Where we depart, and why:
1. **One model in memory.** The reference policy is the same weights with every LoRA adapter switched off
   (`lora.lora_disabled`), not a second copy (TRL, mlx-lm-lora) — half the memory, and exact: at step 0 the
   policy *is* the reference, KL = 0. A run that starts from an adapter (`init_adapter`, e.g. an SFT warm
   start) keeps a copy of only that adapter's weights and swaps them in for the reference pass
   (`lora.lora_weights`; `kl_reference: init`, TRL's choice of the starting policy), so KL is again 0 at step 0;
   `kl_reference: base` measures KL against the base model instead.
2. **A reward function, not a reward model.** The task has a gold label, so the score is computed
   (`reward.reward`: decision correctness + 1 − Brier of the stated confidence, RLCR-style; −1 for unparseable
   answers), not learned.
3. **The critic reads `stop_gradient(h)`.** The value head sits on the policy's final hidden states but its loss
   does not flow into the LoRA weights (TRL shares the trunk). With a few dozen samples per step a noisy critic
   otherwise drags the policy. What `vf_coef` then does: it scales the value loss's gradient, which under AdamW
   (step size invariant to a constant gradient scale) barely changes the head's own steps, and it sets the head's
   share of the one global-norm gradient clip taken over LoRA weights and head together
   (`trainer.update_minibatch`): when clipping is active, a larger `vf_coef` shrinks the LoRA step.
4. **Old log-probs and values are recomputed** by a full forward pass after the rollout rather than taken from
   the sampler; the engine's log-probs agree to 1e-4, but recomputing makes the ratio exactly 1 at the first
   minibatch regardless of KV-cache numerics.
5. **Reward whitening is off by default** (`whiten_rewards`): our score has a fixed, known scale, and whitening a
   batch of 8-16 scores amplifies noise. Advantages are whitened.
6. **No `mx.compile`** over the update: sequence shapes change every minibatch (response lengths), so compiled
   graphs would be rebuilt each time; a peer's report of compiled LoRA steps treating adapters as constants is
   another reason (docs/design.md). Tests check that gradients reach the adapters.
7. **Non-finite steps are skipped**: one sync per minibatch reads the loss and gradient norm before the update is
   applied; a NaN/Inf step is counted (`skipped_updates`) and never applied.
8. **KL target in nats per answer** (sequence KL, Ziegler's definition) with a short horizon (1000 samples):
   our runs are tens of steps, not thousands.
9. **Minibatches are whole prompt groups** when prompts are shared (`share_prompts`, the default for plain
   decoders): the k answers to a prompt sit in the same minibatch so the prompt runs once per pass
   (`passes.GroupPasses`); groups, not rows, are shuffled. The numbers of each pass equal a whole-row pass
   (tested, `rl_iteration` included).
10. **Optional leave-one-out score baseline** (`score_baseline: "loo"`, RLOO, Ahmadian et al. 2024): each
   answer's score minus the mean score of the other answers to its prompt, before the KL penalty, GAE and the
   value head. Off by default. Without it a policy that cannot yet tell the classes apart is pushed towards
   the class it already favours (run 5, README); with it, prompts whose answers all score alike teach nothing.
11. **GRPO on the same loop** (`algo: grpo`): the group mean is the baseline, there is no critic (the value head
   is left out of the passes and the loss), and the KL to the LoRA-off reference is a k3 loss term instead of a
   per-token reward; the rest of the iteration (rollouts, passes, minibatch epochs, clipping) is PPO's.
12. **Data parallel over `mx.distributed`**: each rank samples its share of a step; whitening, the KL
   controller and logged means are taken over every rank, and each rank's loss is weighted by its share of the
   tokens (or rows) the loss averages over before `nn.average_gradients`, so N ranks compute the gradient of the
   union batch (tested against one process to 1e-5). Minibatch sizes are per rank.
"""
