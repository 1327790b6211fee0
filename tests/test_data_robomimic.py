"""robomimic HDF5 -> store converter (synthetic HDF5) and the store summary command."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from s2_policy.data.robomimic_hdf5 import convert_robomimic
from s2_policy.data.robomimic_hdf5 import main as convert_main
from s2_policy.data.sequence import SequenceDataset
from s2_policy.data.store import ReplayStore
from s2_policy.data.summary import format_summary, summarize
from s2_policy.data.summary import main as summary_main

DEMOS = {"demo_10": 4, "demo_2": 3, "demo_0": 5}  # written out of order on purpose


def make_hdf5(path: Path) -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    content = {}
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps(
            {"env_name": "Lift", "type": 1, "env_kwargs": {"control_freq": 20}}
        )
        for name, T in DEMOS.items():
            g = data.create_group(name)
            d = {
                "agentview_image": rng.integers(0, 255, (T, 6, 6, 3), dtype=np.uint8),
                "robot0_eef_pos": rng.normal(size=(T, 3)),
                "robot0_eef_quat": rng.normal(size=(T, 4)),
                "robot0_gripper_qpos": rng.normal(size=(T, 2)),
                "object": rng.normal(size=(T, 10)),
                "actions": rng.normal(size=(T, 7)),
            }
            for k, v in d.items():
                g.create_dataset(k if k == "actions" else f"obs/{k}", data=v)
            g.create_dataset("rewards", data=np.zeros(T))
            g.attrs["num_samples"] = T
            content[name] = d
        mask = f.create_group("mask")
        mask.create_dataset("train", data=np.array([b"demo_0", b"demo_10"]))
        mask.create_dataset("valid", data=np.array([b"demo_2"]))
    return content


def test_convert(tmp_path: Path) -> None:
    content = make_hdf5(tmp_path / "lift.hdf5")
    store = convert_robomimic(tmp_path / "lift.hdf5", tmp_path / "lift.zarr", progress=False)
    order = ["demo_0", "demo_2", "demo_10"]
    assert store.n_episodes == 3 and list(store.episode_lengths) == [DEMOS[n] for n in order]
    a = store.attrs
    assert (
        a["demo_names"] == order
        and a["env_id"] == "Lift"
        and a["env_args"]["env_kwargs"]["control_freq"] == 20
    )
    assert a["cameras"] == ["agentview_image"]
    assert a["split"] == {"train": [0, 2], "valid": [1]}
    assert a["state_keys"] == ["robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos"]
    for i, name in enumerate(order):
        ep, d = store.get_episode(i), content[name]
        np.testing.assert_array_equal(ep["agentview_image"], d["agentview_image"])
        np.testing.assert_allclose(ep["action"], d["actions"].astype(np.float32))
        np.testing.assert_allclose(ep["object"], d["object"].astype(np.float32))
        want_state = np.concatenate([d["robot0_eef_pos"], d["robot0_eef_quat"], d["robot0_gripper_qpos"]], 1)
        np.testing.assert_allclose(ep["state"], want_state.astype(np.float32))
    assert not (tmp_path / "lift.zarr.partial").exists()
    ds = SequenceDataset(
        tmp_path / "lift.zarr", cameras=["agentview_image"], horizon=2, n_obs_steps=1, n_action_steps=2
    )
    assert list(ds.episodes) == [0, 2] and list(ds.get_validation_dataset().episodes) == [1]
    with pytest.raises(ValueError, match="already exists"):
        convert_robomimic(tmp_path / "lift.hdf5", tmp_path / "lift.zarr", progress=False)


def test_flip_and_key_selection_and_resume(tmp_path: Path) -> None:
    content = make_hdf5(tmp_path / "lift.hdf5")
    # an interrupted earlier run with the same options: 1 of 3 demos done
    opts = dict(obs_keys=["agentview_image", "object"], state_keys=["object"], flip_images=True)
    convert_robomimic(tmp_path / "lift.hdf5", tmp_path / "full.zarr", progress=False, **opts)
    partial = ReplayStore.create(
        tmp_path / "out.zarr.partial", attrs=ReplayStore.open(tmp_path / "full.zarr").attrs
    )
    first = ReplayStore.open(tmp_path / "full.zarr").get_episode(0)
    first["object"] += 1000  # marks the episode the resumed run must keep, not rewrite
    partial.add_episode(first)
    store = convert_robomimic(tmp_path / "lift.hdf5", tmp_path / "out.zarr", progress=False, **opts)
    assert store.keys() == ["action", "agentview_image", "object", "state"]
    assert store.n_episodes == 3 and store.attrs["images_flipped"]
    for i, name in enumerate(["demo_0", "demo_2", "demo_10"]):
        ep = store.get_episode(i)
        np.testing.assert_array_equal(ep["agentview_image"], content[name]["agentview_image"][:, ::-1])
        np.testing.assert_allclose(ep["state"], content[name]["object"].astype(np.float32))
        assert (ep["object"].min() > 500) == (i == 0)


def test_convert_errors(tmp_path: Path) -> None:
    make_hdf5(tmp_path / "lift.hdf5")
    with pytest.raises(ValueError, match="not in demo_0/obs"):
        convert_robomimic(tmp_path / "lift.hdf5", tmp_path / "o.zarr", obs_keys=["eye_in_hand_image"])
    with pytest.raises(ValueError, match="not low-dim"):
        convert_robomimic(tmp_path / "lift.hdf5", tmp_path / "o.zarr", state_keys=["agentview_image"])
    with h5py.File(tmp_path / "empty.hdf5", "w") as f:
        f.create_group("data")
    with pytest.raises(ValueError, match="no data/demo_<int>"):
        convert_robomimic(tmp_path / "empty.hdf5", tmp_path / "o.zarr")


def test_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_hdf5(tmp_path / "lift.hdf5")
    convert_main([str(tmp_path / "lift.hdf5"), str(tmp_path / "lift.zarr"), "--flip-images"])
    assert "3 episodes, 12 frames" in capsys.readouterr().out
    summary_main([str(tmp_path / "lift.zarr")])
    text = capsys.readouterr().out
    assert "episodes     3   frames 12" in text and "agentview_image" in text and "(12, 6, 6, 3)" in text
    summary_main([str(tmp_path / "lift.zarr"), "--json"])
    assert json.loads(capsys.readouterr().out)["frames"] == 12


def test_summary_dict(tmp_path: Path) -> None:
    make_hdf5(tmp_path / "lift.hdf5")
    convert_robomimic(tmp_path / "lift.hdf5", tmp_path / "lift.zarr", progress=False)
    s = summarize(tmp_path / "lift.zarr")
    assert s["episodes"] == 3 and s["length_max"] == 5 and s["zarr_format"] == 3
    img = s["keys"]["agentview_image"]
    assert img["dtype"] == "uint8" and img["chunks"][0] == 1 and img["stored_bytes"] > 0
    assert "zstd" in img["codec"] and s["uncommitted_frames"] == {}
    assert "agentview_image" in format_summary(s)
    json.dumps(s)
