"""Decision-transformer training throughput on CPU, beside a plain torch transformer of the same size.

    python benchmarks/dt_train.py [--steps 40] [--repeats 3] [--batch 64] [--context 10] [--threads 1]
    python benchmarks/dt_train.py --source RUN --runs-dir DIR [--dt-steps 3000] [--episodes-per-policy 20]
        [--deterministic]   # + the 80% criterion

Both models get the same embedded token batches (the DT's own embedding layers, drawn from the
same synthetic windows) and train with the same AdamW steps; the reference replaces the
TransformerLens bridge by ``torch.nn.TransformerEncoder`` (pre-LN, GELU, causal + padding
masks) with the same d_model, heads, MLP width and layers. Tokens per second count every token
of every window (3 per timestep); the best of ``--repeats`` timings counts.

It also times PPO on ``lab/Forage-v0`` with the transformer policy (``--policy transformer``: the
same transformer as BC, trained by RL) against SB3's MLP policy: environment steps per second of
``model.learn`` over ``--ppo-steps`` steps (rollouts and updates, 4 environments, the lab's PPO
settings, one torch thread), reported as ``transformer_vs_mlp_fps`` (transformer / MLP).

With ``--source RUN`` it also trains a DT from that RL run's trajectories
(``rl_lab.dt.train.train_dt``) and reports the issue's criterion: the return achieved when
conditioned on the dataset's best episode return, as a fraction of it.
Last line: one JSON object with ``name`` and each figure named with its unit.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn as nn

from rl_lab.config import TrainConfig
from rl_lab.dt.evaluate import evaluate, format_table
from rl_lab.dt.model import DecisionTransformer, DTModelConfig, loss_and_accuracy
from rl_lab.dt.train import DTTrainConfig, train_dt
from rl_lab.train import algo_class, make_vec_env, policy_class


class ReferenceDT(nn.Module):
    """The same decision transformer with ``nn.TransformerEncoder`` in place of the bridge."""

    def __init__(self, cfg: DTModelConfig) -> None:
        super().__init__()
        self.dt = DecisionTransformer(cfg)  # for its embedding layers (the bridge is unused)
        layer = nn.TransformerEncoderLayer(cfg.d_model, cfg.n_heads, cfg.d_mlp, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)
        self.ln = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.n_actions, bias=False)
        self.register_buffer("causal", torch.triu(torch.ones(cfg.n_ctx, cfg.n_ctx, dtype=torch.bool), 1))

    def forward(self, states: torch.Tensor, actions: torch.Tensor, rtg: torch.Tensor,
                timesteps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        tokens, token_mask = self.dt.embed(states, actions, rtg, timesteps, mask)
        h = self.encoder(tokens, mask=self.causal, src_key_padding_mask=~token_mask)
        return self.head(self.ln(h))[:, self.dt.state_positions()]


def params_of(model: nn.Module) -> list[nn.Parameter]:
    if isinstance(model, ReferenceDT):
        skip = {id(p) for p in model.dt.transformer.parameters()}
        return [p for p in model.parameters() if id(p) not in skip]
    return list(model.parameters())


def tokens_per_second(model: nn.Module, batches: list[dict[str, torch.Tensor]], n_ctx: int, repeats: int) -> float:
    opt = torch.optim.AdamW(params_of(model), lr=1e-3)

    def step(b: dict[str, torch.Tensor]) -> None:
        logits = model(b["states"], b["actions"], b["rtg"], b["timesteps"], b["mask"])
        loss, _ = loss_and_accuracy(logits, b["actions"], b["mask"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for b in batches[:3]:  # warm-up
        step(b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for b in batches:
            step(b)
        best = min(best, time.perf_counter() - t0)
    tokens = sum(b["states"].shape[0] for b in batches) * n_ctx
    return tokens / best


def ppo_steps_per_second(policy: str, steps: int, context: int) -> float:
    """Environment steps per second of PPO's ``learn`` on Forage (rollouts + updates) for a policy type."""
    cfg = TrainConfig(env_id="lab/Forage-v0", algo="ppo", policy=policy, total_timesteps=steps, context=context)
    vec = make_vec_env(cfg)
    try:
        model = algo_class("ppo")(policy_class(cfg), vec, **cfg.algo_kwargs())
        t0 = time.perf_counter()
        model.learn(total_timesteps=steps)
        return model.num_timesteps / (time.perf_counter() - t0)
    finally:
        vec.close()


def synthetic_batches(cfg: DTModelConfig, n: int, batch: int, seed: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    K = cfg.context
    for _ in range(n):
        mask = torch.ones(batch, K, dtype=torch.bool)
        pad = torch.randint(0, K, (batch,), generator=g)
        mask &= torch.arange(K)[None, :] >= pad[:, None] * (torch.rand(batch, generator=g) < 0.2)[:, None]
        out.append({
            "states": torch.randn(batch, K, cfg.obs_dim, generator=g) * mask[..., None],
            "actions": torch.randint(0, cfg.n_actions, (batch, K), generator=g),
            "rtg": torch.randn(batch, K, generator=g) * mask,
            "timesteps": torch.randint(0, cfg.max_timestep, (batch, K), generator=g),
            "mask": mask,
        })
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="timed training steps per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--context", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ppo-steps", type=int, default=2048,
                        help="PPO environment steps timed per policy type (0: skip the PPO comparison)")
    parser.add_argument("--source", default=None, help="RL run to train a DT from for the 80%% criterion")
    parser.add_argument("--runs-dir", default=None)
    parser.add_argument("--dt-steps", type=int, default=3000)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--episodes-per-policy", type=int, default=20,
                        help="episodes per source checkpoint in the offline dataset")
    parser.add_argument("--trajectories", default="default", help="trajectory file name under SOURCE/trajectories/")
    parser.add_argument("--deterministic", action="store_true", help="evaluate the DT with argmax actions")
    parser.add_argument("--temperature", type=float, default=1.0, help="evaluate sampling softmax(logits / T)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    cfg = DTModelConfig(obs_dim=11, n_actions=5, context=args.context, max_timestep=200)
    batches = synthetic_batches(cfg, args.steps, args.batch, seed=0)
    dt_tps = tokens_per_second(DecisionTransformer(cfg), batches, cfg.n_ctx, args.repeats)
    ref_tps = tokens_per_second(ReferenceDT(cfg), batches, cfg.n_ctx, args.repeats)
    print(f"decision transformer (TransformerLens bridge): {dt_tps:10.0f} tokens/s")
    print(f"reference (nn.TransformerEncoder, same size):  {ref_tps:10.0f} tokens/s")
    print(f"ratio bridge / reference: {dt_tps / ref_tps:.2f}")
    result: dict[str, object] = {
        "name": "dt_train", "dt_tokens_per_s": round(dt_tps, 1), "reference_tokens_per_s": round(ref_tps, 1),
        "ratio_dt_vs_reference": round(dt_tps / ref_tps, 3), "batch": args.batch, "context": args.context,
        "threads": args.threads,
    }
    if args.ppo_steps > 0:
        mlp_fps = ppo_steps_per_second("mlp", args.ppo_steps, args.context)
        tf_fps = ppo_steps_per_second("transformer", args.ppo_steps, args.context)
        print(f"PPO on Forage, MLP policy:         {mlp_fps:10.0f} env steps/s")
        print(f"PPO on Forage, transformer policy: {tf_fps:10.0f} env steps/s")
        result.update({"ppo_mlp_steps_per_s": round(mlp_fps, 1), "ppo_transformer_steps_per_s": round(tf_fps, 1),
                       "transformer_vs_mlp_fps": round(tf_fps / mlp_fps, 4), "ppo_steps": args.ppo_steps})
    if args.source:
        t0 = time.perf_counter()
        run = train_dt(DTTrainConfig(source_run=args.source, steps=args.dt_steps, eval_episodes=0, seed=0,
                                     threads=args.threads, episodes_per_policy=args.episodes_per_policy,
                                     trajectories=args.trajectories), args.runs_dir,
                       name=f"bench-dt-{time.strftime('%Y%m%d-%H%M%S')}")
        train_s = time.perf_counter() - t0
        ev = evaluate(run, episodes=args.eval_episodes, deterministic=args.deterministic,
                      temperature=args.temperature)
        print(format_table(ev))
        # The metrics line of the weights kept (early stopping ends on the lowest held-out loss).
        val_lines = [m for m in run.metrics() if "val_loss" in m]
        last = next((m for m in val_lines if m["step"] == run.info.get("best_step")), val_lines[-1])
        result.update({
            "dt_run": run.name, "dt_train_s": round(train_s, 1), "dataset_best_return": ev["dataset_best_return"],
            "dataset_mean_return": ev["dataset_mean_return"], "return_at_best_target": ev["return_at_best_target"],
            "fraction_of_best": ev.get("fraction_of_best"), "normalised_score": ev.get("normalised_score"),
            "calibration_corr": ev.get("calibration_corr"), "best_policy_mean_return": ev.get("best_policy_mean_return"),
            "fraction_of_best_policy_mean": ev.get("fraction_of_best_policy_mean"),
            "val_loss": round(last["val_loss"], 4), "val_accuracy": round(last["val_accuracy"], 4),
            "train_loss": round(last["loss"], 4), "deterministic": args.deterministic,
            "temperature": args.temperature, "best_step": run.info.get("best_step"),
        })
    print(json.dumps(result))


if __name__ == "__main__":
    main()
