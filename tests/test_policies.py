"""Policies: normaliser, heads (overfit a tiny dataset), Policy checkpoint round trip and input checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from s2_policy.policies import DiffusionHead, LinearNormalizer, MLPHead, Policy
from s2_policy.policies.config import DiffusionHeadConfig, MLPHeadConfig
from s2_policy.policies.unet1d import ConditionalUnet1D
from s2_policy.serialization import save_tree

CAMS = ["front", "wrist"]


def _normalizer(d: int = 4, a: int = 4) -> LinearNormalizer:
    rng = np.random.default_rng(0)
    return LinearNormalizer().fit({"state": rng.normal(size=(200, d)),
                                   "action": rng.uniform(-2, 3, (200, a))})


def test_normalizer_limits_roundtrip_and_constant_dims():
    x = np.stack([np.linspace(-3, 5, 50), np.full(50, 7.0)], axis=1)
    n = LinearNormalizer().fit({"action": x}, mode="limits")
    y = n.normalize("action", x)
    assert isinstance(y, np.ndarray)
    np.testing.assert_allclose(y[:, 0].min(), -1, atol=1e-6)
    np.testing.assert_allclose(y[:, 0].max(), 1, atol=1e-6)
    np.testing.assert_allclose(y[:, 1], 0, atol=1e-6)             # constant dim is centred, not blown up
    np.testing.assert_allclose(n.unnormalize("action", y), x, atol=1e-5)
    t = n.normalize("action", torch.as_tensor(x, dtype=torch.float32))
    assert isinstance(t, torch.Tensor)
    np.testing.assert_allclose(t.numpy(), y, atol=1e-6)


def test_normalizer_gaussian_and_state_dict():
    x = np.random.default_rng(1).normal(3, 2, size=(1000, 3))
    n = LinearNormalizer().fit({"state": x}, mode="gaussian")
    y = n.normalize("state", x)
    np.testing.assert_allclose(y.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(y.std(0), 1, atol=1e-4)
    m = LinearNormalizer()
    m.load_state_dict(n.state_dict())
    np.testing.assert_allclose(m.normalize("state", x), y)


def test_normalizer_errors():
    with pytest.raises(ValueError, match="mode"):
        LinearNormalizer().fit({"a": np.zeros((3, 2))}, mode="minmax")
    with pytest.raises(ValueError, match="NaN"):
        LinearNormalizer().fit({"a": np.array([[np.nan, 1.0]])})
    n = LinearNormalizer().fit({"a": np.zeros((3, 2))})
    with pytest.raises(KeyError, match="no statistics"):
        n.normalize("b", np.zeros((1, 2)))
    with pytest.raises(ValueError, match="last dimension"):
        n.normalize("a", np.zeros((1, 3)))


def _overfit(head: torch.nn.Module, cond: torch.Tensor, target: torch.Tensor, steps: int, lr: float) -> None:
    opt = torch.optim.AdamW(head.parameters(), lr=lr)
    for _ in range(steps):
        loss = head.compute_loss(cond, target)
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("loss", ["l2", "l1"])
def test_mlp_head_overfits(loss):
    torch.manual_seed(0)
    cond, target = torch.randn(16, 24), torch.rand(16, 8, 3) * 2 - 1
    head = MLPHead(24, 3, 8, MLPHeadConfig(hidden_dim=128, n_layers=2, loss=loss))
    _overfit(head, cond, target, 400, 3e-3)
    assert (head.predict(cond) - target).abs().mean() < 0.05


def test_diffusion_head_overfits():
    torch.manual_seed(0)
    cond, target = torch.randn(4, 16), torch.rand(4, 8, 2) * 1.6 - 0.8
    head = DiffusionHead(16, 2, 8, DiffusionHeadConfig(down_dims=[32], step_embed_dim=16,
                                                       num_train_timesteps=50, num_inference_steps=10))
    _overfit(head, cond.repeat(16, 1), target.repeat(16, 1, 1), 200, 3e-3)   # many noise levels per step
    pred = head.predict(cond, generator=torch.Generator().manual_seed(0))
    assert pred.shape == target.shape
    assert (pred - target).abs().mean() < 0.1


def test_unet_shapes_and_horizon_check():
    net = ConditionalUnet1D(action_dim=3, cond_dim=5, down_dims=(16, 32, 64), n_groups=8, step_embed_dim=16)
    out = net(torch.randn(2, 16, 3), torch.tensor([1, 7]), torch.randn(2, 5))
    assert out.shape == (2, 16, 3)
    with pytest.raises(ValueError, match="divisible"):
        net(torch.randn(2, 10, 3), 3, torch.randn(2, 5))
    with pytest.raises(ValueError, match="divisible"):
        DiffusionHead(5, 3, 10, DiffusionHeadConfig(down_dims=[16, 32, 64]))


def test_unet_film_condition_computed_once_matches_the_concatenated_film():
    """Sampling reuses the condition's share of every FiLM layer; it must equal Linear(Mish([step, cond]))."""
    torch.manual_seed(0)
    net = ConditionalUnet1D(action_dim=3, cond_dim=5, down_dims=(16, 32), n_groups=8, step_embed_dim=16)
    cond, t = torch.randn(2, 5), torch.tensor([3, 40])
    step = net.step_emb(t)
    blocks = net.blocks()
    assert len(blocks) == 2 * 2 + 2 + 2 * 1     # two per level down, two mid, two per level up
    for r, fc in zip(blocks, net.film_condition(cond), strict=True):
        full = r.film(torch.cat([step, cond], dim=-1))             # the FiLM of the saved weights, as trained
        split = torch.nn.functional.linear(torch.nn.functional.mish(step), r.film[1].weight[:, :16]) + fc
        torch.testing.assert_close(split, full)
    # The whole forward against the concatenated FiLM run block by block in the U-Net's order (catches a
    # mismatch between the order film_condition lists the blocks and the order forward consumes them).
    def film_full(r, h):
        scale, bias = r.film(torch.cat([step, cond], dim=-1)).unsqueeze(-1).chunk(2, dim=1)
        return r.block2(r.block1(h) * (1 + scale) + bias) + r.residual(h)

    x = torch.randn(2, 8, 3)
    h, skips = x.transpose(1, 2), []
    for r1, r2, down in net.down:
        h = film_full(r2, film_full(r1, h))
        skips.append(h)
        h = down(h)
    for r in net.mid:
        h = film_full(r, h)
    for r1, r2, up in net.up:
        h = up(film_full(r2, film_full(r1, torch.cat([h, skips.pop()], dim=1))))
    reference = net.final(h).transpose(1, 2)
    torch.testing.assert_close(net(x, t, cond), reference)
    torch.testing.assert_close(net(x, t, film_cond=net.film_condition(cond)), reference)
    assert net.state_dict()["down.0.0.film.1.weight"].shape == (32, 16 + 5)   # checkpoints keep their layout
    with pytest.raises(ValueError, match="cond"):
        net(x, t)


def _small_mlp() -> Policy:
    """A small MLP policy over 12-d features of the two cameras (state and action dims 4)."""
    return Policy({"head": "mlp", "horizon": 8, "n_obs_steps": 2, "n_action_steps": 4}, 12, CAMS, 4, 4,
                  _normalizer())


def _obs(b: int, f: int = 32, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"front": torch.randn(b, 2, f, generator=g), "wrist": torch.randn(b, 2, f, generator=g),
            "state": torch.randn(b, 2, 4, generator=g)}


@pytest.mark.parametrize("head", ["mlp", "diffusion"])
def test_policy_save_load_identical_actions(tmp_path, head):
    cfg = {"head": head, "horizon": 8, "n_obs_steps": 2, "n_action_steps": 4,
           "diffusion": {"down_dims": [16, 32], "step_embed_dim": 16, "num_inference_steps": 4}}
    p = Policy(cfg, 32, CAMS, 4, 4, _normalizer(), meta={"task": {"name": "x"}})
    obs = _obs(3)
    a1 = p.predict_action(obs, generator=torch.Generator().manual_seed(3))
    assert a1.shape == (3, 4, 4) and a1.dtype == torch.float32
    path = p.save(tmp_path / "sub" / "policy.pt")
    assert not [f for f in path.parent.iterdir() if f.name != "policy.pt"]   # no temp files left behind
    q = Policy.load(path, load_encoder=False)
    a2 = q.predict_action(obs, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a1, a2, rtol=0, atol=0)
    assert q.meta == {"task": {"name": "x"}} and q.config == p.config
    assert q.trainable_parameters() == p.trainable_parameters() > 0


@pytest.mark.parametrize("head", ["mlp", "diffusion"])
def test_policy_without_state_ignores_it_and_round_trips(tmp_path, head):
    """``use_state=false``: the condition holds camera features only, so the actions do not move with the
    state (while they do with it on); the setting survives the checkpoint; the transformer refuses it."""
    cfg = {"head": head, "horizon": 8, "n_obs_steps": 2, "n_action_steps": 4, "use_state": False,
           "diffusion": {"down_dims": [16, 32], "step_embed_dim": 16, "num_inference_steps": 4}}
    p = Policy(cfg, 32, CAMS, 4, 4, _normalizer())
    with_state = Policy({**cfg, "use_state": True}, 32, CAMS, 4, 4, _normalizer())
    obs, moved = _obs(3), _obs(3)
    feats, state = p.encode_obs(obs), p.normalizer.normalize("state", obs["state"])
    width = p.core.condition(feats, state).shape[-1]
    assert width == with_state.core.condition(feats, state).shape[-1] - 2 * 4  # To x state_dim fewer inputs
    moved["state"] = moved["state"] + 5.0

    def act(policy, o):
        return policy.predict_action(o, generator=torch.Generator().manual_seed(3))

    torch.testing.assert_close(act(p, obs), act(p, moved), rtol=0, atol=0)
    assert not torch.allclose(act(with_state, obs), act(with_state, moved))
    q = Policy.load(p.save(tmp_path / "policy.pt"), load_encoder=False)
    assert q.config.use_state is False
    torch.testing.assert_close(act(q, obs), act(p, obs), rtol=0, atol=0)
    with pytest.raises(ValueError, match="use_state=false is supported by the mlp and diffusion heads"):
        Policy({"head": "transformer", "use_state": False}, 32, CAMS, 4, 4, _normalizer())


def test_policy_actions_in_env_units_and_slice():
    """The returned chunk is the un-normalised slice [n_obs_steps-1, n_obs_steps-1+n_action_steps)."""
    n = _normalizer()
    p = Policy({"head": "mlp", "horizon": 8, "n_obs_steps": 2, "n_action_steps": 3}, 32, CAMS, 4, 4, n)
    obs = _obs(2)
    feats = p.encode_obs(obs)
    assert feats.shape == (2, 2, 2, 32)
    cond = p.core.condition(feats, n.normalize("state", obs["state"]))
    chunk = p.core.head(cond)
    want = n.unnormalize("action", chunk[:, 1:4])
    torch.testing.assert_close(p.predict_from_features(feats, obs["state"]), want)


def test_policy_input_errors(tmp_path):
    n = _normalizer()
    with pytest.raises(ValueError, match="n_action_steps"):
        Policy({"horizon": 8, "n_obs_steps": 2, "n_action_steps": 8}, 32, CAMS, 4, 4, n)
    with pytest.raises(ValueError, match="head"):
        Policy({"head": "rnn"}, 32, CAMS, 4, 4, n)
    with pytest.raises(ValueError, match="clip_sample=false"):   # would clip every action beyond 1 std
        Policy({"head": "diffusion", "normalizer_mode": "gaussian"}, 32, CAMS, 4, 4, n)
    assert Policy({"head": "diffusion", "normalizer_mode": "gaussian", "diffusion": {"clip_sample": False}},
                  32, CAMS, 4, 4, n).config.diffusion.clip_sample is False
    p = Policy({"horizon": 8, "n_obs_steps": 2, "n_action_steps": 4}, 32, CAMS, 4, 4, n)
    with pytest.raises(KeyError, match="missing keys"):
        p.predict_action({"front": torch.zeros(1, 2, 32), "state": torch.zeros(1, 2, 4)})
    with pytest.raises(ValueError, match="encoder"):
        img = np.zeros((1, 2, 8, 8, 3), np.uint8)
        p.predict_action({"front": img, "wrist": img, "state": np.zeros((1, 2, 4), np.float32)})
    with pytest.raises(ValueError, match="features have shape"):
        p.predict_action(_obs(1, f=16))
    with pytest.raises(FileNotFoundError):
        Policy.load(tmp_path / "nope.pt")
    save_tree({"config": {}}, tmp_path / "bad.pt", "other")
    with pytest.raises(ValueError, match="bad.pt is not a policy checkpoint .*'other'"):
        Policy.load(tmp_path / "bad.pt", load_encoder=False)


def test_policy_token_features_roundtrip(tmp_path):
    """``pooling="tokens"`` features (N, C) keep the spatial layout; projected per token, then flattened."""
    p = Policy({"head": "mlp", "horizon": 8, "n_obs_steps": 2, "n_action_steps": 4, "token_proj_dim": 4},
               (5, 12), CAMS, 4, 4, _normalizer())
    g = torch.Generator().manual_seed(0)
    obs = {c: torch.randn(3, 2, 5, 12, generator=g) for c in CAMS}
    obs["state"] = torch.randn(3, 2, 4, generator=g)
    a = p.predict_action(obs)
    assert a.shape == (3, 4, 4)
    assert p.core.obs_proj.in_features == 2 * 5 * 4
    q = Policy.load(p.save(tmp_path / "p.pt"), load_encoder=False)
    torch.testing.assert_close(q.predict_action(obs), a)
    with pytest.raises(ValueError, match="features have shape"):
        p.predict_action({c: torch.randn(1, 2, 6, 12) for c in CAMS} | {"state": torch.zeros(1, 2, 4)})


def test_evaluate_ddim_steps_override_changes_the_sampler_and_checks_the_head():
    from s2_policy.jobs.evaluate import set_ddim_steps

    cfg = {"head": "diffusion", "horizon": 8, "n_obs_steps": 2, "n_action_steps": 4,
           "diffusion": {"down_dims": [8, 16], "num_inference_steps": 10, "num_train_timesteps": 50}}
    policy = Policy(cfg, 12, CAMS, 4, 4, _normalizer()).eval()
    calls = []
    policy.core.head.model.register_forward_hook(lambda *a: calls.append(1))
    feats, state = torch.randn(1, 2, 2, 12), np.zeros((1, 2, 4), np.float32)
    policy.predict_from_features(feats, state)
    assert len(calls) == 10
    calls.clear()
    assert set_ddim_steps(policy, 3) == 3
    policy.predict_from_features(feats, state)
    assert len(calls) == 3 and policy.config.diffusion.num_inference_steps == 3
    with pytest.raises(ValueError, match=r"\[1, 50\]"):
        set_ddim_steps(policy, 51)
    mlp = _small_mlp()
    with pytest.raises(ValueError, match="diffusion head"):
        set_ddim_steps(mlp, 3)


def test_diffusion_samples_average_k_chunks_in_one_batch():
    from s2_policy.jobs.evaluate import set_diffusion_samples

    torch.manual_seed(0)
    k = 4
    head = DiffusionHead(6, 2, 8, DiffusionHeadConfig(down_dims=[8, 16], step_embed_dim=16,
                                                      num_train_timesteps=50, num_inference_steps=3,
                                                      num_samples=k)).eval()
    cond = torch.randn(2, 6)
    # by hand: the same noise draws, each chunk denoised on its own, then averaged per condition
    x0 = torch.randn((2 * k, 8, 2), generator=torch.Generator().manual_seed(7))
    sched = head.infer_scheduler
    sched.set_timesteps(3)
    by_hand = []
    for i in range(2 * k):
        x = x0[i:i + 1]
        for t in sched.timesteps:
            x = sched.step(head.model(x, t, cond[i // k:i // k + 1]), t, x, eta=0.0).prev_sample
        by_hand.append(x)
    by_hand = torch.cat(by_hand).view(2, k, 8, 2)
    calls = []
    head.model.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    got = head.predict(cond, generator=torch.Generator().manual_seed(7))
    assert calls == [2 * k] * 3                   # one batched denoising per step, not k
    torch.testing.assert_close(got, by_hand.mean(1), rtol=0, atol=1e-5)
    assert (by_hand.std(1) > 1e-3).any()          # the draws differ: the mean is not one of them

    cfg = {"head": "diffusion", "horizon": 8, "n_obs_steps": 2, "n_action_steps": 4,
           "diffusion": {"down_dims": [8, 16], "num_inference_steps": 3, "num_train_timesteps": 50}}
    policy = Policy(cfg, 12, CAMS, 4, 4, _normalizer()).eval()
    assert policy.core.head.num_samples == 1      # the default: one sample, as Diffusion Policy
    assert set_diffusion_samples(policy, k) == k
    assert policy.config.diffusion.num_samples == k and policy.core.head.num_samples == k
    with pytest.raises(ValueError, match="num_samples"):
        set_diffusion_samples(policy, 0)
    mlp = _small_mlp()
    with pytest.raises(ValueError, match="diffusion head"):
        set_diffusion_samples(mlp, 2)


def test_timestep_spacing_sets_where_ddim_sampling_starts():
    from s2_policy.jobs.evaluate import set_timestep_spacing

    cfg = {"head": "diffusion", "horizon": 8, "n_obs_steps": 2, "n_action_steps": 4,
           "diffusion": {"down_dims": [8, 16], "num_inference_steps": 4, "num_train_timesteps": 100,
                         "timestep_spacing": "leading"}}
    assert Policy({**cfg, "diffusion": {"down_dims": [8, 16]}}, 12, CAMS, 4, 4,
                  _normalizer()).config.diffusion.timestep_spacing == "trailing"     # the default
    policy = Policy(cfg, 12, CAMS, 4, 4, _normalizer()).eval()
    seen: list[int] = []
    policy.core.head.model.register_forward_hook(lambda m, args, out: seen.append(int(args[1])))
    feats, state = torch.randn(1, 2, 2, 12), np.zeros((1, 2, 4), np.float32)
    policy.predict_from_features(feats, state)
    assert seen == [75, 50, 25, 0]             # leading: never the pure-noise level 99
    seen.clear()
    assert set_timestep_spacing(policy, "trailing") == "trailing"
    policy.predict_from_features(feats, state)
    assert seen == [99, 74, 49, 24] and policy.config.diffusion.timestep_spacing == "trailing"
    with pytest.raises(ValueError, match="leading"):
        set_timestep_spacing(policy, "uniform")
    with pytest.raises(ValueError, match="timestep_spacing"):
        Policy({**cfg, "diffusion": {**cfg["diffusion"], "timestep_spacing": "uniform"}}, 12, CAMS, 4, 4,
               _normalizer())
    mlp = _small_mlp()
    with pytest.raises(ValueError, match="diffusion head"):
        set_timestep_spacing(mlp, "trailing")


def test_checkpoint_written_before_timestep_spacing_keeps_its_sampler():
    cfg = {"head": "diffusion", "horizon": 8, "n_obs_steps": 2, "n_action_steps": 4,
           "diffusion": {"down_dims": [8, 16], "num_inference_steps": 4, "timestep_spacing": "trailing"}}
    ckpt = Policy(cfg, 12, CAMS, 4, 4, _normalizer()).checkpoint_dict()
    new = Policy.from_checkpoint_dict(ckpt, load_encoder=False)
    assert new.config.diffusion.timestep_spacing == "trailing"
    del ckpt["config"]["diffusion"]["timestep_spacing"]    # as saved by earlier versions
    old = Policy.from_checkpoint_dict(ckpt, load_encoder=False)
    assert old.config.diffusion.timestep_spacing == "leading"
    old.core.head.infer_scheduler.set_timesteps(4)
    assert old.core.head.infer_scheduler.timesteps.tolist() == [75, 50, 25, 0]


def test_evaluate_action_steps_override_executes_fewer_actions_per_chunk():
    from s2_policy.jobs.evaluate import set_action_steps

    p = _small_mlp().eval()
    feats, state = torch.randn(1, 2, 2, 12), np.zeros((1, 2, 4), np.float32)
    full = p.predict_from_features(feats, state)
    assert set_action_steps(p, 2) == 2 and p.n_action_steps == 2
    short = p.predict_from_features(feats, state)
    assert short.shape == (1, 2, 4)
    torch.testing.assert_close(short, full[:, :2])      # the same chunk, cut after 2 actions
    with pytest.raises(ValueError, match=r"\[1, horizon - n_obs_steps \+ 1 = 7\]"):
        set_action_steps(p, 8)


def test_inpainting_mixes_the_prior_into_every_denoising_step():
    torch.manual_seed(0)
    head = DiffusionHead(6, 2, 8, DiffusionHeadConfig(down_dims=[8, 16], step_embed_dim=16,
                                                      num_train_timesteps=50, num_inference_steps=3)).eval()
    cond, prior = torch.randn(2, 6), torch.rand(2, 8, 2) * 2 - 1
    weight = torch.zeros(2, 8)
    weight[0, :2], weight[0, 2] = 1.0, 0.5            # row 1 has no prior: weight 0 everywhere
    inputs: list[torch.Tensor] = []
    head.model.register_forward_hook(lambda m, args, out: inputs.append(args[0].clone()))
    free = head.predict(cond, generator=torch.Generator().manual_seed(3))
    free_in, inputs[:] = list(inputs), []
    tied = head.predict(cond, generator=torch.Generator().manual_seed(3), prior=prior, prior_weight=weight)
    x_T = torch.randn((2, 8, 2), generator=torch.Generator().manual_seed(3))
    sched = head.infer_scheduler
    for t, x in zip(sched.timesteps, inputs, strict=True):
        known = sched.add_noise(prior, x_T, t.reshape(1))       # the prior at this step's noise level
        torch.testing.assert_close(x[0, :2], known[0, :2])
    half = (x_T[0, 2] + sched.add_noise(prior, x_T, sched.timesteps[:1])[0, 2]) / 2
    torch.testing.assert_close(inputs[0][0, 2], half)                  # weight 0.5: halfway
    torch.testing.assert_close(inputs[0][0, 3:], free_in[0][0, 3:])    # weight 0: untouched at step one
    torch.testing.assert_close(tied[1], free[1])                       # no prior: the free sample
    assert (tied[0] - free[0]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="prior must be"):
        head.predict(cond, prior=prior[:1], prior_weight=weight[:1])


def test_policy_ties_each_env_chunk_to_its_previous_one():
    from s2_policy.jobs.evaluate import set_inpaint

    cfg = {"head": "diffusion", "horizon": 8, "n_obs_steps": 2, "n_action_steps": 4,
           "diffusion": {"down_dims": [8, 16], "num_inference_steps": 3, "num_train_timesteps": 50,
                         "inpaint": "plan"}}
    p = Policy(cfg, 12, CAMS, 4, 4, _normalizer()).eval()
    # new chunk step 0 is the last executed action; the rest of the overlap is the old plan, fading out
    torch.testing.assert_close(p.inpaint_weights(4), torch.tensor([1, .75, .5, .25, 0, 0, 0, 0]))
    torch.testing.assert_close(p.inpaint_weights(1), torch.tensor([1, 6, 5, 4, 3, 2, 1, 0]) / torch.tensor(
        [1, 7, 7, 7, 7, 7, 7, 1]))                                    # temporal ensembling: one step on
    seen: list[dict] = []
    predict = p.core.head.predict
    p.core.head.predict = lambda cond, **kw: (seen.append(kw), predict(cond, **kw))[1]
    feats, state = torch.randn(2, 2, 2, 12), np.zeros((2, 2, 4), np.float32)
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    first = p.predict_from_features(feats, state, generator=g(), env_ids=[0, 1])
    assert float(seen[-1]["prior_weight"].abs().sum()) == 0           # a new episode: nothing to tie to
    torch.testing.assert_close(first, p.predict_from_features(feats, state, generator=g()))
    last1 = p._last_chunks[1]
    p.predict_from_features(feats[1:], state[1:], generator=g(), env_ids=[1])
    torch.testing.assert_close(seen[-1]["prior"][0, :4], last1[4:])   # moved by the 4 executed actions
    torch.testing.assert_close(seen[-1]["prior_weight"][0], p.inpaint_weights(4))
    p.reset([1])
    p.predict_from_features(feats[1:], state[1:], generator=g(), env_ids=[1])
    assert float(seen[-1]["prior_weight"].abs().sum()) == 0 and 0 in p._last_chunks
    p.reset()
    assert not p._last_chunks
    with pytest.raises(ValueError, match="env_ids names 1 envs for a batch of 2"):
        p.predict_from_features(feats, state, env_ids=[0])

    assert set_inpaint(p, "executed") == "executed"
    torch.testing.assert_close(p.inpaint_weights(4), torch.tensor([1., 0, 0, 0, 0, 0, 0, 0]))
    assert set_inpaint(p, "none") == "none" and not p.inpaints
    p.predict_from_features(feats, state, env_ids=[0, 1])
    assert "prior" not in seen[-1] and not p._last_chunks             # off: chunks sampled on their own
    with pytest.raises(ValueError, match="inpaint"):
        set_inpaint(p, "always")
    mlp = _small_mlp()
    with pytest.raises(ValueError, match="diffusion head"):
        set_inpaint(mlp, "plan")


def test_inference_settings_apply_in_one_place_and_name_the_label():
    from s2_policy.jobs.evaluate import apply_inference_settings

    cfg = {"head": "diffusion", "horizon": 8, "n_obs_steps": 2, "n_action_steps": 4,
           "diffusion": {"down_dims": [8, 16], "num_inference_steps": 3, "num_train_timesteps": 50}}
    p = Policy(cfg, 12, CAMS, 4, 4, _normalizer())
    assert apply_inference_settings(p, {"ddim_steps": None, "label": "x"}) == ""    # None: as trained
    suffix = apply_inference_settings(p, {"ddim_steps": 2, "timestep_spacing": "leading",
                                          "diffusion_samples": 3, "inpaint": "plan", "n_action_steps": 2,
                                          "temporal_ensemble": True, "temporal_ensemble_m": 0.5})
    assert suffix == "+ddim2+leading+avg3+inpaint-plan+exec2+te0.5"
    d = p.config.diffusion
    assert (d.num_inference_steps, d.timestep_spacing, d.num_samples, d.inpaint) == (2, "leading", 3, "plan")
    assert p.n_action_steps == 2 and p.temporal_ensemble_m == 0.5 and p.core.head.num_samples == 3
    assert apply_inference_settings(p, {"temporal_ensemble": False}) == "+chunked"
    with pytest.raises(ValueError, match="needs temporal ensembling on"):
        apply_inference_settings(p, {"temporal_ensemble_m": 0.1})
