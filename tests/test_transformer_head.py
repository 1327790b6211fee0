"""Transformer (ACT-style) head: token layout, chunk shapes, VAE, temporal ensembling (worked example, rollout
and real-time wiring), checkpoints (round trip, checkpoints from before the head existed), and a head trained
on a tiny store reaching the MLP's success in the user's env of test_open_pipeline."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import test_evaluation_toyenv  # noqa: F401  (registers ToyWalk-v0)
import torch
from omegaconf import OmegaConf
from test_evaluation import _toy_task
from test_open_pipeline import USER_ENV, _task_yaml, _write_third_party_store
from test_realtime_loop import MeanColourEncoder, _loop, cams  # noqa: F401  (cams: the pytest fixture)

from s2_policy.evaluation.rollout import run_rollouts
from s2_policy.jobs.evaluate import set_temporal_ensemble
from s2_policy.policies import LinearNormalizer, Policy, TemporalEnsembler, TransformerHead, ensemble_weights
from s2_policy.policies.config import PolicyConfig, TransformerHeadConfig
from s2_policy.policies.transformer_head import sinusoidal_embedding
from s2_policy.realtime.loop import ControlLoop, LoopConfig
from s2_policy.realtime.robot import DryRunRobot

REPO = Path(__file__).resolve().parents[1]
CAMS = ["front", "wrist"]
SMALL = {"d_model": 32, "n_heads": 4, "dim_feedforward": 64, "n_decoder_layers": 1, "dropout": 0.0}


def _normalizer(d: int = 4, a: int = 3) -> LinearNormalizer:
    rng = np.random.default_rng(0)
    return LinearNormalizer().fit({"state": rng.normal(size=(200, d)),
                                   "action": rng.uniform(-2, 3, (200, a))})


def _policy(feature_shape=(5, 12), n_obs_steps: int = 2, action_dim: int = 3, **tf) -> Policy:
    cfg = {"head": "transformer", "horizon": 8, "n_obs_steps": n_obs_steps, "n_action_steps": 4,
           "transformer": {**SMALL, **tf}}
    torch.manual_seed(0)
    return Policy(cfg, feature_shape, CAMS, 4, action_dim, _normalizer(a=action_dim)).eval()


def _obs(b: int, feature_shape=(5, 12), to: int = 2, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    obs = {c: torch.randn(b, to, *feature_shape, generator=g) for c in CAMS}
    obs["state"] = torch.randn(b, to, 4, generator=g)
    return obs


# -- config --------------------------------------------------------------------------------------------------
def test_yaml_restates_the_dataclass_defaults_and_errors_name_the_key():
    cfg = OmegaConf.load(REPO / "configs" / "policy" / "transformer.yaml")
    cfg.pop("defaults")
    pc = PolicyConfig.from_dict(cfg)
    assert pc.head == "transformer" and pc.transformer == TransformerHeadConfig()
    assert PolicyConfig.from_dict(json.loads(json.dumps(pc.to_dict()))) == pc
    with pytest.raises(ValueError, match="d_model=130 must be divisible by n_heads=4"):
        TransformerHeadConfig(d_model=130)
    with pytest.raises(ValueError, match="policy.transformer.loss"):
        TransformerHeadConfig(loss="huber")
    with pytest.raises(ValueError, match="n_vae_encoder_layers"):
        TransformerHeadConfig(use_vae=True, n_vae_encoder_layers=0)
    with pytest.raises(ValueError, match="temporal_ensemble_m"):
        PolicyConfig.from_dict({"head": "transformer", "transformer": {"temporal_ensemble_m": -1}})
    with pytest.raises(ValueError, match="Key 'n_layer' not in 'TransformerHeadConfig'"):
        PolicyConfig.from_dict({"transformer": {"n_layer": 2}})


# -- tokens and chunks ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("feature_shape", [(12,), (5, 12)])
def test_token_layout_and_chunk_shapes(feature_shape):
    p = _policy(feature_shape)
    head = p.core.head
    assert isinstance(head, TransformerHead)
    obs = _obs(3, feature_shape)
    feats = p.encode_obs(obs)
    state = p.normalizer.normalize("state", obs["state"])
    tokens = p.core.condition(feats, state)
    n_feat = feature_shape[0] if len(feature_shape) == 2 else 1
    # per step: every camera's feature tokens, then one readout token per step, then one proprio per step
    assert tokens.shape == (3, 2 * 2 * n_feat + 2 + 2, 32) == (3, head.n_tokens, 32)
    assert head.predict(tokens).shape == (3, 8, 3)                        # the whole chunk, normalised
    assert p.predict_action(obs).shape == (3, 4, 3)                       # n_action_steps in env units
    # proprio tokens are the last n_obs_steps: a new state changes them and nothing else
    other = p.core.condition(feats, state + 1)
    changed = (other != tokens).any(-1).any(0)
    assert changed.tolist() == [False] * (head.n_tokens - 2) + [True, True]
    # the slice returned is [n_obs_steps - 1, n_obs_steps - 1 + n_action_steps) of the un-normalised chunk
    want = p.normalizer.unnormalize("action", head.predict(tokens)[:, 1:5])
    torch.testing.assert_close(p.predict_from_features(feats, obs["state"]), want)


def test_embeddings_tell_cameras_steps_and_token_positions_apart():
    """Attention alone is blind to order: without the embeddings swapping two cameras, two observation steps
    or two tokens of a grid would not change the actions."""
    p = _policy((5, 12))
    obs = _obs(2)
    base = p.predict_action(obs)
    swapped_cams = {**obs, "front": obs["wrist"], "wrist": obs["front"]}
    swapped_steps = {**obs, "front": obs["front"].flip(1), "wrist": obs["wrist"].flip(1)}
    swapped_tokens = {**obs, "front": obs["front"][:, :, [1, 0, 2, 3, 4]]}
    for other in (swapped_cams, swapped_steps, swapped_tokens):
        assert (p.predict_action(other) - base).abs().max() > 1e-4


def test_positions_and_queries_start_as_unit_sinusoids_and_every_query_sees_state_and_readout():
    """Known values of the position codes (sin/cos of position x 10000^(-2i/d)); token positions and queries
    start from them; the decoder's queries start from the newest proprio and readout tokens, so the state and
    the whole token grid move the chunk without attention having to find them first."""
    e = sinusoidal_embedding(3, 4)
    want = torch.tensor([[0.0, 1.0, 0.0, 1.0],
                         [math.sin(1.0), math.cos(1.0), math.sin(0.01), math.cos(0.01)],
                         [math.sin(2.0), math.cos(2.0), math.sin(0.02), math.cos(0.02)]])
    torch.testing.assert_close(e, want)
    head = TransformerHead((5, 12), 2, 2, 3, 4, 8, TransformerHeadConfig(n_decoder_layers=1, dropout=0.0))
    torch.testing.assert_close(head.token_embed.detach(), sinusoidal_embedding(5, head.cfg.d_model))
    torch.testing.assert_close(head.queries.detach(), sinusoidal_embedding(8, head.cfg.d_model))
    calls = []
    head.decoder.register_forward_pre_hook(lambda m, args: calls.append(args[0].detach().clone()))
    feats = torch.randn(2, 2, 2, 5, 12)
    state = torch.tensor([[[0.5, -1.0, 0.25], [1.0, 0.0, 0.0]], [[0.0, 0.0, 0.0], [0.0, 0.5, 0.0]]])
    tokens = head.tokens(feats, state)
    head.decode(tokens)
    # layout [..., readout step 0, readout step 1, proprio step 0, proprio step 1]: the newest of each
    with torch.no_grad():
        readout = head.readout_proj(head.readout_token_proj(feats[:, 1]).flatten(1)) + head.step_embed[1]
        proprio = head.state_proj(state[:, 1]) + head.step_embed[1] + head.source_embed[-1]
    torch.testing.assert_close(tokens[:, -3], readout + head.readout_embed[0])
    torch.testing.assert_close(tokens[:, -1], proprio)
    torch.testing.assert_close(calls[0], head.queries.detach() + (tokens[:, -1:] + tokens[:, -3:-2]).detach())
    # readout_dim=0: pure attention (ACT as published), no readout token
    bare = TransformerHead((5, 12), 2, 2, 3, 4, 8, TransformerHeadConfig(readout_dim=0))
    assert bare.tokens(feats, state).shape[1] == bare.n_tokens == 2 * (2 * 5 + 1)
    assert not hasattr(bare, "readout_proj")


def test_obs_projections_of_the_flat_heads_are_not_built():
    p = _policy((5, 12))
    names = set(p.core.state_dict())
    assert not any(n.startswith(("token_proj", "obs_proj")) for n in names)
    assert "obs_norm.weight" not in names   # the head's first (linear) layer absorbs the affine


@pytest.mark.parametrize("use_vae", [False, True])
def test_head_overfits_a_tiny_dataset(use_vae):
    torch.manual_seed(0)
    cfg = TransformerHeadConfig(**SMALL, use_vae=use_vae, latent_dim=4, kl_weight=0.01)
    head = TransformerHead((5, 12), 2, 1, 4, 3, 8, cfg)
    feats, state = torch.randn(16, 1, 2, 5, 12), torch.randn(16, 1, 4)
    target = torch.rand(16, 8, 3) * 2 - 1
    opt = torch.optim.AdamW(head.parameters(), lr=3e-3)
    for _ in range(300):
        loss = head.compute_loss(head.tokens(feats, state), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    head.eval()
    assert (head.predict(head.tokens(feats, state)) - target).abs().mean() < 0.1


def test_vae_adds_a_latent_token_and_a_kl_term_and_infers_from_the_prior_mean():
    p = _policy((5, 12), use_vae=True, latent_dim=4, kl_weight=1.0)
    head = p.core.head
    obs = _obs(4)
    tokens = p.core.condition(p.encode_obs(obs), p.normalizer.normalize("state", obs["state"]))
    action = torch.rand(4, 8, 3) * 2 - 1
    seen = []
    hook = head.decoder.register_forward_hook(lambda m, args, out: seen.append(args[1].shape[1]))
    torch.manual_seed(1)
    with_kl = head.compute_loss(tokens, action)
    hook.remove()
    assert seen == [head.n_tokens + 1]                        # the latent joined the observation tokens
    head.cfg = TransformerHeadConfig(**{**head.cfg.__dict__, "kl_weight": 0.0})
    torch.manual_seed(1)
    without = head.compute_loss(tokens, action)
    mu, logvar = head._latent_stats(tokens, action)
    kl = (-0.5 * (1 + logvar - mu**2 - logvar.exp())).sum(-1).mean()
    torch.testing.assert_close(with_kl - without, kl)
    zero = head.decode(tokens, torch.zeros(4, 4))
    torch.testing.assert_close(head.predict(tokens), zero)    # inference: z = the prior mean
    assert not torch.allclose(head.decode(tokens, torch.ones(4, 4)), zero)


# -- temporal ensembling -------------------------------------------------------------------------------------
def test_ensemble_weights_known_values():
    np.testing.assert_allclose(ensemble_weights(3, 0.01), [0.336672, 0.333322, 0.330006], atol=1e-6)
    np.testing.assert_allclose(ensemble_weights(4, 0.0), [0.25] * 4)
    assert ensemble_weights(2, 1.0)[0] > ensemble_weights(2, 1.0)[1]   # i = 0, the oldest, weighs most
    with pytest.raises(ValueError, match="m must be >= 0"):
        ensemble_weights(2, -0.1)


def test_temporal_ensembler_worked_example():
    """m = 0.5, chunks of 3; the chunk predicted at step k is [k, 10 + k, 20 + k]. Step t blends the
    predictions of steps t-2..t for step t, oldest first, with weights 1, e^-0.5 = 0.60653, e^-1 = 0.36788."""
    ens = TemporalEnsembler(n_envs=2, m=0.5)
    got, counts = [], []
    for k in range(4):
        ens.add(0, np.array([[k], [10 + k], [20 + k]], np.float32))
        counts.append(len(ens.predictions(0)))
        got.append(float(ens.pop(0)[0]))
    assert counts == [1, 2, 3, 3]
    # step 0: 0; step 1: (10 + 0.60653 * 1) / 1.60653; step 2: (20 + 0.60653 * 11 + 0.36788 * 2) / 1.97441;
    # step 3: (21 + 0.60653 * 12 + 0.36788 * 3) / 1.97441 (the step-0 chunk has run out)
    np.testing.assert_allclose(got, [0.0, 6.60222, 13.88137, 14.88137], atol=1e-4)
    # env 1 has its own buffer: nothing yet, and env 0's history is untouched by it
    assert len(ens.predictions(1)) == 0
    with pytest.raises(ValueError, match="no prediction"):
        ens.pop(1)
    ens.add(1, np.array([[5.0], [6.0]]))
    assert float(ens.pop(1)[0]) == 5.0 and len(ens.predictions(0)) == 2
    ens.reset(0)                                      # a new episode of env 0: old chunks are gone
    ens.add(0, np.array([[-1.0], [-2.0], [-3.0]]))
    assert float(ens.pop(0)[0]) == -1.0 and float(ens.pop(1)[0]) == 6.0
    with pytest.raises(ValueError, match="chunk"):
        ens.add(0, np.zeros(3))


class _EnsemblingPolicy:
    """Fake ToyWalk policy asking for temporal ensembling; call k returns the chunk [r_k] * 3 and records the
    newest state it saw (from which the executed actions are recovered)."""

    cameras = ["front"]
    n_obs_steps = 2
    device = torch.device("cpu")
    temporal_ensemble_m = 0.5
    values = [0.6, 0.2, 1.0, 0.4, 0.8, 0.2, 0.6, 1.0, 0.4, 0.2, 0.8, 0.6]

    def __init__(self):
        self.seen: list[float] = []

    def predict_action(self, obs, generator=None):
        self.seen.append(float(obs["state"][0, -1, 0]))
        return torch.full((1, 3, 1), self.values[len(self.seen) - 1])


def test_rollout_queries_every_step_and_resets_the_ensemble_per_episode():
    pol = _EnsemblingPolicy()
    res = run_rollouts(pol, _toy_task(), [0, 1], n_envs=1, progress=False)
    lengths = [e["length"] for e in res["episodes"]]
    assert res["policy_calls"] == sum(lengths) and res["temporal_ensemble_m"] == 0.5
    w = lambda n: ensemble_weights(n, 0.5)  # noqa: E731
    first = 0
    for n in lengths:
        r = pol.values[first:first + n]
        # the independent reference: step t blends calls max(0, t-2)..t of this episode only, oldest first
        want = [float(np.dot(w(min(t, 2) + 1), r[max(0, t - 2):t + 1])) for t in range(n)]
        pos = pol.seen[first:first + n]          # the state before each step of this episode
        executed = [2 * (b - a) for a, b in zip(pos, pos[1:], strict=False)]   # ToyWalk: x += 0.5 * action
        assert len(executed) == n - 1 >= 2
        np.testing.assert_allclose(executed, want[:-1], atol=1e-5)
        first += n
    assert pol.seen[lengths[0]] == -1.0   # episode 2 (seed 1) starts at -1: history and ensemble were reset


def test_evaluate_override_and_the_real_time_loop_follow_the_policy():
    p = _policy((12,))
    assert p.temporal_ensemble_m == 0.01        # the default: ACT's ensembling (chosen on selection seeds)
    assert set_temporal_ensemble(p, False) == "chunked" and p.temporal_ensemble_m is None
    assert set_temporal_ensemble(p, True, 0.2) == "te0.2" and p.temporal_ensemble_m == 0.2
    sources = {c: object() for c in CAMS}    # ControlLoop only maps them at construction
    loop = ControlLoop(p, object(), sources, DryRunRobot(3, np.zeros(4)), LoopConfig(rate_hz=10))
    assert (loop.ensemble, loop.ensemble_k, loop.infer_every) == ("temporal", 0.2, 1)
    loop = ControlLoop(p, object(), sources, DryRunRobot(3, np.zeros(4)),
                       LoopConfig(rate_hz=10, ensemble="none"))
    assert (loop.ensemble, loop.infer_every) == ("none", 4)           # an explicit loop setting wins
    assert set_temporal_ensemble(p, False) == "chunked" and p.temporal_ensemble_m is None
    loop = ControlLoop(p, object(), sources, DryRunRobot(3, np.zeros(4)), LoopConfig(rate_hz=10))
    assert (loop.ensemble, loop.ensemble_k, loop.infer_every) == ("none", 0.01, 4)
    with pytest.raises(ValueError, match="m must be >= 0"):
        set_temporal_ensemble(p, True, -1.0)
    mlp = Policy({"head": "mlp", "horizon": 8, "n_obs_steps": 2, "n_action_steps": 4}, 12, CAMS, 4, 3,
                 _normalizer())
    assert mlp.temporal_ensemble_m is None          # the MLP and diffusion heads execute whole chunks
    assert set_temporal_ensemble(mlp, True, 0.1) == "te0.1" and mlp.temporal_ensemble_m == 0.1  # any head
    assert mlp.config.mlp.temporal_ensemble and not mlp.config.diffusion.temporal_ensemble  # its own block
    dif = PolicyConfig.from_dict({"head": "diffusion", "diffusion": {"temporal_ensemble": True}})
    assert dif.diffusion.temporal_ensemble and dif.diffusion.temporal_ensemble_m == 0.01
    with pytest.raises(ValueError, match="temporal_ensemble_m must be >= 0"):
        PolicyConfig.from_dict({"head": "diffusion", "diffusion": {"temporal_ensemble_m": -0.5}})
    with pytest.raises(ValueError, match="loop.ensemble"):
        LoopConfig(ensemble="mean")


def test_real_time_loop_runs_an_ensembling_transformer_every_tick(cams):  # noqa: F811  (the fixture)
    """Mean-colour features (K, 3) into a transformer head asking for temporal ensembling: the loop infers at
    every tick and blends the overlapping chunks (up to n_action_steps = 4 predictions per tick)."""
    p = _policy((3,), action_dim=4, temporal_ensemble=True, temporal_ensemble_m=0.01)  # _loop's robot: 4 dof
    loop = _loop(cams, encoder=MeanColourEncoder(), policy=p, rate_hz=20, max_steps=8, sync_to_camera=False)
    assert (loop.ensemble, loop.ensemble_k, loop.infer_every) == ("temporal", 0.01, 1)
    loop.run()
    recs = loop.telemetry.records
    assert len(recs) >= 6 and all(r.inferred for r in recs), [(r.step, r.status, r.reason) for r in recs]
    assert all(r.status == "act" for r in recs)


# -- checkpoints ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tf", [{}, {"use_vae": True, "n_encoder_layers": 1, "temporal_ensemble": True}])
def test_checkpoint_round_trip_gives_the_same_actions(tmp_path, tf):
    p = _policy((5, 12), **tf)
    obs = _obs(3)
    a1 = p.predict_action(obs)
    q = Policy.load(p.save(tmp_path / "policy.pt"), load_encoder=False)
    assert q.config == p.config and q.temporal_ensemble_m == p.temporal_ensemble_m
    torch.testing.assert_close(q.predict_action(obs), a1, rtol=0, atol=0)


def test_transformer_checkpoints_from_before_the_chunk_readout_are_refused_with_the_fix():
    ckpt = _policy((5, 12)).checkpoint_dict()
    del ckpt["config"]["transformer"]["readout_dim"]        # as written in round six (per-query readout)
    with pytest.raises(ValueError, match="before the head's chunk readout.*policy=transformer"):
        Policy.from_checkpoint_dict(ckpt, load_encoder=False)


def test_checkpoints_from_before_the_transformer_head_still_load():
    ckpt = Policy({"head": "mlp", "horizon": 8, "n_obs_steps": 2, "n_action_steps": 4}, 12, CAMS, 4, 3,
                  _normalizer()).checkpoint_dict()
    del ckpt["config"]["transformer"]                       # as written by earlier versions
    old = Policy.from_checkpoint_dict(ckpt, load_encoder=False)
    assert old.config.transformer == TransformerHeadConfig() and old.temporal_ensemble_m is None
    feats = torch.randn(1, 2, 2, 12)
    assert old.predict_from_features(feats, np.zeros((1, 2, 4), np.float32)).shape == (1, 4, 3)


# -- a trained head on an easy task --------------------------------------------------------------------------
@pytest.mark.slow
def test_transformer_head_trained_on_a_tiny_store_matches_the_mlp(tmp_path):
    """The user's store and env of test_open_pipeline (push right until x >= 1): the main job trains the MLP
    and the transformer head (one multirun, shared feature cache) and evaluates both on the same 6 test seeds;
    the transformer reaches the MLP's success."""
    (tmp_path / "user_env.py").write_text(USER_ENV)
    store = tmp_path / "user.zarr"
    _write_third_party_store(store)
    cfg_dir = tmp_path / "my_configs"
    (cfg_dir / "task").mkdir(parents=True)
    (cfg_dir / "task" / "user_reach.yaml").write_text(_task_yaml(store))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, str(REPO / "train_policy.py"), "-m", "--config-dir", str(cfg_dir),
           "task=user_reach", "encoder=s2p-nano", "s2=single", "policy=mlp,transformer", "train=smoke",
           "train.steps=60",
           "policy.horizon=4", "policy.n_action_steps=2", "eval.n_episodes=6", "eval.n_videos=0",
           "eval.profile_encoder=false", f"cache.dir={tmp_path / 'caches'}", f"hydra.sweep.dir={sweep}"]
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, (res.stdout[-2000:], res.stderr[-4000:])
    results = {r["policy_config"]["head"]: r for r in
               (json.loads(p.read_text()) for p in sweep.glob("*/result.json"))}
    assert sorted(results) == ["mlp", "transformer"]
    mlp, tf = (results[h]["rollout"] for h in ("mlp", "transformer"))
    assert [e["seed"] for e in tf["episodes"]] == [e["seed"] for e in mlp["episodes"]]
    assert mlp["success_rate"] >= 0.5                       # the task is learnable at these settings
    assert tf["success_rate"] >= mlp["success_rate"]
    assert results["transformer"]["policy_config"]["transformer"]["d_model"] == 128
