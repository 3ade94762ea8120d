"""The decision transformer (and its behaviour-cloning variant) on a TransformerLens 4 bridge.

After Chen et al. (2021), "Decision Transformer: Reinforcement Learning via Sequence Modeling"
(arXiv:2106.01345), laid out as in Bloom & Colognese's DecisionTransformerInterpretability:

- every timestep t contributes the tokens (R_t, s_t, a_t) — return-to-go, state, action — or
  (s_t, a_t) for ``bc`` (no return-to-go token at all);
- each token is its type's embedding plus a learned timestep embedding of t (the position in the
  episode, not in the context);
- the action a_t is predicted from the transformer's output at the state token s_t, which by
  causality sees R_{<=t}, s_{<=t} and a_{<t} only;
- a context of K timesteps, left-padded (padding is masked out of attention) for short histories.

The transformer itself is a TransformerLens-native model built with
``TransformerBridge.boot_native``; the embedded tokens enter it with ``start_at_layer=0``
(the bridge's own token and position embeddings are bypassed), its unembedding produces the
action logits, and ``run_with_cache`` gives the usual hook names (``blocks.0.hook_resid_post``,
``blocks.0.attn.hook_pattern``, ...). Shapes are written beside tensors.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn
import transformer_lens.model_bridge.sources.native  # noqa: F401  (attaches boot_native)
from transformer_lens.config import TransformerBridgeConfig
from transformer_lens.model_bridge import TransformerBridge


@dataclass
class DTModelConfig:
    """Everything that determines the network's shape; stored in ``run.json`` as ``model_config``."""

    obs_dim: int
    """Length of the (flat) observation vector."""
    n_actions: int
    """Number of discrete actions."""
    context: int = 10
    """K: timesteps in the context window."""
    use_rtg: bool = True
    """True for the decision transformer, False for behaviour cloning (no return-to-go token)."""
    d_model: int = 64
    """Width of the residual stream."""
    n_layers: int = 2
    """Transformer blocks."""
    n_heads: int = 2
    """Attention heads per block (``d_model`` must be divisible by it)."""
    d_mlp: int = 256
    """Hidden width of each block's MLP."""
    max_timestep: int = 1000
    """Largest episode step the timestep embedding covers (later steps share the last row)."""
    rtg_scale: float = 1.0
    """Returns-to-go are divided by this before embedding (about the dataset's largest |return|)."""
    act_fn: str = "gelu"
    """MLP activation."""
    seed: int = 0
    """Seeds the initial weights."""

    @property
    def tokens_per_step(self) -> int:
        return 3 if self.use_rtg else 2

    @property
    def n_ctx(self) -> int:
        return self.tokens_per_step * self.context

    @property
    def state_offset(self) -> int:
        """Position of the state token within one timestep's group of tokens."""
        return 1 if self.use_rtg else 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DTModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def boot_transformer(cfg: DTModelConfig) -> Any:
    """The TransformerLens-native transformer (a ``TransformerBridge``) for ``cfg``."""
    if cfg.d_model % cfg.n_heads:
        raise ValueError(f"d_model ({cfg.d_model}) must be divisible by n_heads ({cfg.n_heads})")
    tl_cfg = TransformerBridgeConfig(
        d_model=cfg.d_model,
        d_head=cfg.d_model // cfg.n_heads,
        n_heads=cfg.n_heads,
        n_layers=cfg.n_layers,
        n_ctx=cfg.n_ctx,
        d_mlp=cfg.d_mlp,
        d_vocab=1,  # the token embedding is bypassed (start_at_layer=0)
        d_vocab_out=cfg.n_actions,  # the unembedding gives the action logits
        act_fn=cfg.act_fn,
        normalization_type="LN",
        attention_dir="causal",
        seed=cfg.seed,
        model_name="decision-transformer",
    )
    return TransformerBridge.boot_native(tl_cfg)


class DecisionTransformer(nn.Module):
    """A decision transformer (``use_rtg``) or behaviour-cloning transformer over K timesteps.

    Inputs of ``forward`` / ``run_with_cache`` (B windows of K timesteps, left-padded):

    - ``states``    [B, K, obs_dim] float
    - ``actions``   [B, K] int, the action taken at each step (any value where unknown: the
      action token of step t is after s_t, so it never influences the prediction of a_t)
    - ``rtg``       [B, K] float, the return-to-go (ignored by ``bc``)
    - ``timesteps`` [B, K] int, the step within the episode
    - ``mask``      [B, K] bool, False on padding
    """

    def __init__(self, cfg: DTModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            d = cfg.d_model
            self.state_embed = nn.Linear(cfg.obs_dim, d)
            self.action_embed = nn.Embedding(cfg.n_actions, d)
            self.rtg_embed = nn.Linear(1, d) if cfg.use_rtg else None
            self.time_embed = nn.Embedding(cfg.max_timestep + 1, d)
            for emb in (self.action_embed, self.time_embed):
                nn.init.normal_(emb.weight, std=0.02)
            self.transformer = boot_transformer(cfg)

    # ------------------------------------------------------------------ embedding
    def embed(self, states: torch.Tensor, actions: torch.Tensor, rtg: torch.Tensor,
              timesteps: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Interleaved token embeddings [B, n_ctx, d_model] and the token mask [B, n_ctx]."""
        cfg = self.cfg
        B, K = states.shape[:2]
        t_emb = self.time_embed(timesteps.clamp(0, cfg.max_timestep))  # [B, K, d]
        s_tok = self.state_embed(states) + t_emb  # [B, K, d]
        a_tok = self.action_embed(actions.clamp(0, cfg.n_actions - 1)) + t_emb  # [B, K, d]
        if self.rtg_embed is not None:
            r_tok = self.rtg_embed((rtg / cfg.rtg_scale).unsqueeze(-1)) + t_emb  # [B, K, d]
            tokens = torch.stack([r_tok, s_tok, a_tok], dim=2)  # [B, K, 3, d]
        else:
            tokens = torch.stack([s_tok, a_tok], dim=2)  # [B, K, 2, d]
        tokens = tokens.reshape(B, K * cfg.tokens_per_step, cfg.d_model)  # [B, n_ctx, d]
        token_mask = mask.repeat_interleave(cfg.tokens_per_step, dim=1)  # [B, n_ctx]
        # Padding tokens carry nothing (they are also masked out of attention as keys).
        tokens = tokens * token_mask.unsqueeze(-1).to(tokens.dtype)
        return tokens, token_mask

    def state_positions(self) -> torch.Tensor:
        """Index of every state token in the token sequence [K]."""
        cfg = self.cfg
        return torch.arange(cfg.context) * cfg.tokens_per_step + cfg.state_offset

    # ------------------------------------------------------------------ forward passes
    def forward(self, states: torch.Tensor, actions: torch.Tensor, rtg: torch.Tensor,
                timesteps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Action logits predicted at every state token [B, K, n_actions]."""
        tokens, token_mask = self.embed(states, actions, rtg, timesteps, mask)
        logits = self.transformer(tokens, start_at_layer=0, attention_mask=token_mask.long())  # [B, n_ctx, A]
        return logits[:, self.state_positions()]

    def run_with_cache(self, states: torch.Tensor, actions: torch.Tensor, rtg: torch.Tensor,
                       timesteps: torch.Tensor, mask: torch.Tensor,
                       names_filter: Callable[[str], bool] | list[str] | None = None
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits at the state tokens [B, K, A] and the TransformerLens activation cache.

        Cache entries keep the bridge's shapes: ``blocks.i.hook_resid_post`` is
        [B, n_ctx, d_model], ``blocks.i.attn.hook_pattern`` is [B, n_heads, n_ctx, n_ctx].
        """
        tokens, token_mask = self.embed(states, actions, rtg, timesteps, mask)
        logits, cache = self.transformer.run_with_cache(
            tokens, start_at_layer=0, attention_mask=token_mask.long(), names_filter=names_filter
        )
        return logits[:, self.state_positions()], {k: cache[k] for k in cache.keys()}


def stored_hooks(cfg: DTModelConfig) -> list[str]:
    """The TransformerLens hook names a recording of this model keeps, in file order (the DT's and
    BC's adapter in ``rl_lab.dt.record``, the transformer policy in ``rl_lab.policies``)."""
    hooks = ["blocks.0.hook_resid_pre"]
    for i in range(cfg.n_layers):
        hooks += [f"blocks.{i}.hook_resid_mid", f"blocks.{i}.hook_resid_post", f"blocks.{i}.mlp.hook_post",
                  f"blocks.{i}.attn.hook_pattern"]
    return hooks


def loss_and_accuracy(logits: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of the taken actions over unpadded steps, and the argmax accuracy."""
    flat_logits = logits[mask]  # [n, A]
    flat_actions = actions[mask]  # [n]
    loss = nn.functional.cross_entropy(flat_logits, flat_actions)
    accuracy = (flat_logits.argmax(-1) == flat_actions).float().mean()
    return loss, accuracy
