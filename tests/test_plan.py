"""The two-rooms world, the action-conditioned predictor and its objective, and plan.py."""
import json
import math
import os

import pytest
import torch

import data
import plan
import train

W = plan.TwoRooms()


def test_walls_block_and_the_door_lets_through():
    right = torch.tensor([0.0, 1.0])  # (dy, dx): move right
    below_door, in_door = torch.tensor([[50.0, 20.0]]), torch.tensor([[32.0, 20.0]])
    a, b = below_door, in_door
    for _ in range(6):
        a, b = W.step(a, right[None]), W.step(b, right[None])
    assert a[0, 1] + W.HALF <= W.WALL[0] and a[0, 0] == 50  # stopped at the wall
    assert b[0, 1] - W.HALF >= W.WALL[1]  # through the door into the right room
    corner = W.step(torch.tensor([[6.0, 6.0]]), -torch.ones(1, 2))  # into the border: stays
    assert torch.equal(corner, torch.tensor([[6.0, 6.0]]))
    # along the wall: the y part of a blocked diagonal move is kept
    slid = W.step(torch.tensor([[50.0, 26.0]]), torch.tensor([[-1.0, 1.0]]))
    assert torch.equal(slid, torch.tensor([[45.0, 26.0]]))


def test_rollouts_stay_free_and_frames_draw_the_agent():
    clips, labels = W.sample(16, torch.Generator().manual_seed(0))
    pos, actions = labels["pos"], labels["actions"]
    assert clips.shape == (16, 1, 16, 64, 64) and pos.shape == actions.shape == (16, 8, 2)
    assert not W.blocked(pos).any()
    for t in range(7):  # each state is the world's step from the one before
        assert torch.equal(pos[:, t + 1], W.step(pos[:, t], actions[:, t]))
    assert torch.equal(clips[:, :, 0], clips[:, :, 1])  # a tubelet holds one state
    assert (W.MEAN, W.STD) == (data.MMNIST_MEAN, data.MMNIST_STD)  # normalised as MovingMNIST
    frame = W.render(torch.tensor([20.0, 40.0])) * W.STD + W.MEAN
    agent = [(y, x) for y in range(64) for x in range(64)  # a loop over pixels
             if abs(y + 0.5 - 20) <= 3 and abs(x + 0.5 - 40) <= 3]
    assert len(agent) == 36 and all(abs(frame[y, x] - 1) < 1e-5 for y, x in agent)
    d2 = (20 - 9.5) ** 2 + (40 - 45.5) ** 2  # pixel (9, 45): glow only
    assert abs(float(frame[9, 45]) - 0.6 * math.exp(-d2 / (2 * W.GLOW ** 2))) < 1e-5
    assert abs(float(frame[63, 10]) - 0.5) < 1e-5  # a border wall


def test_the_action_predictor_is_block_causal():
    torch.manual_seed(0)
    p = plan.ActionPredictor(24, (2, 2), 5, 2, dim=16, depth=2, heads=2).eval()
    z, a = torch.randn(3, 5, 4, 24), torch.randn(3, 5, 2)
    out = p(z, a)
    z2, a2 = z.clone(), a.clone()
    z2[:, 3:], a2[:, 3:] = torch.randn(3, 2, 4, 24), torch.randn(3, 2, 2)  # change the future
    out2 = p(z2, a2)
    torch.testing.assert_close(out[:, :3], out2[:, :3])
    assert not torch.allclose(out[:, 3:], out2[:, 3:])
    a3 = a.clone()
    a3[:, 1] += 1  # an earlier action changes what follows
    assert not torch.allclose(p(z, a3)[:, 1:], out[:, 1:])
    torch.testing.assert_close(p(z, a3)[:, 0], out[:, 0])


ROOMS = ["--dataset", "two_rooms", "--num_frames", "8", "--enc_dim", "32", "--enc_depth", "1",
         "--enc_heads", "2", "--pred_dim", "16", "--pred_depth", "1", "--batch_size", "4",
         "--dtype", "float32", "--val_clips", "0", "--log_every", "1"]


@pytest.fixture(scope="module")
def rooms_ckpts(tmp_path_factory):
    """A tiny world encoder, then a tiny action predictor on it: their checkpoints."""
    out = tmp_path_factory.mktemp("rooms")
    enc, ac = str(out / "enc"), str(out / "ac")
    train.main(ROOMS + ["--max_steps", "2", "--out_dir", enc])
    train.main(ROOMS + ["--preset", "rooms_ac", "--encoder_ckpt", f"{enc}/ckpt.pt",
                        "--max_steps", "3", "--out_dir", ac])
    return f"{enc}/ckpt.pt", f"{ac}/ckpt.pt"


def test_the_action_objective_is_teacher_forcing_plus_a_two_step_rollout(rooms_ckpts):
    cfg = train.parse_config(ROOMS + ["--preset", "rooms_ac", "--encoder_ckpt", rooms_ckpts[0]])
    run = train.setup(cfg)
    clips, labels = plan.TwoRooms(8, 2).sample(4, torch.Generator().manual_seed(3))
    actions = labels["actions"]
    loss, terms, z = plan.action_loss(run, clips, actions)
    enc, pred = run.nets["target_encoder"], run.module
    by_hand = []
    for t in range(4):  # each state alone, as a 2-frame clip
        f = enc(clips[:, :, 2 * t:2 * t + 2]).float()
        by_hand.append(torch.nn.functional.layer_norm(f, f.shape[-1:]))
    by_hand = torch.stack(by_hand, 1)
    torch.testing.assert_close(z, by_hand)
    forced = pred(by_hand[:, :3], actions[:, :3])
    step1 = pred(by_hand[:, :1], actions[:, :1])[:, 0]
    step2 = pred(torch.stack([by_hand[:, 0], step1], 1), actions[:, :2])[:, 1]
    torch.testing.assert_close(terms["teacher"], (forced - by_hand[:, 1:]).abs().mean())
    torch.testing.assert_close(terms["rollout"], (step2 - by_hand[:, 2]).abs().mean())
    torch.testing.assert_close(loss, terms["teacher"] + terms["rollout"])
    assert all(p.grad is None for p in enc.parameters()) and not any(
        p.requires_grad for p in enc.parameters())  # frozen


def test_cem_reaches_a_goal_with_a_perfect_model():
    """With a model that is the world without walls on the position as features, the plan's
    mean moves the state to a goal within reach, far closer than a random sequence does."""
    class Exact(torch.nn.Module):
        def forward(self, state, action):  # [EN, 1, 1, 2] position, [EN, 1, 2]
            return state + plan.TwoRooms.STEP * action.clamp(-1, 1)[:, :, None]

    g = torch.Generator().manual_seed(0)
    z = torch.full((6, 1, 2), 30.0)
    goal = z + torch.tensor([[[12.0, -9.0]]])
    mean = plan.cem(Exact(), z, goal, g)
    end = z + plan.TwoRooms.STEP * mean.sum(1, keepdim=True)
    assert (end - goal).norm(dim=-1).max() < 2.0
    rand = z + plan.TwoRooms.STEP * (2 * torch.rand(6, 4, 2, generator=g) - 1).sum(1)[:, None]
    assert (rand - goal).norm(dim=-1).mean() > 5.0


def test_episodes_follow_the_protocol():
    for kind, proto in plan.PROTOCOL.items():
        s, e = plan.episodes(W, kind, 30, proto["distance"], seed=1)
        d = (s - e).norm(dim=-1)
        assert len(s) == 30 and (d >= proto["distance"][0]).all()
        assert (d <= proto["distance"][1]).all()
        left = lambda p: p[:, 1] < W.WALL[0]  # noqa: E731
        assert (left(s) & ~left(e)).all() if kind == "cross_room" else (left(s) == left(e)).all()
        assert not W.blocked(s).any() and not W.blocked(e).any()
    s, e = plan.episodes(W, "same_room", 30, (15, 25), seed=1)
    dist, paths, _ = plan.run_episodes(plan.greedy_policy, W, s, e, 10)
    assert (dist < plan.RADIUS).all()  # the protocol is solvable in the budget


def test_plan_runs_end_to_end(rooms_ckpts, tmp_path, capsys):
    plan.main(["--ckpt", rooms_ckpts[1], "--episodes", "2", "--random_inits", "1",
               "--out_dir", str(tmp_path)])
    res = json.loads((tmp_path / "results.json").read_text())
    for kind in plan.PROTOCOL:
        assert res[kind]["greedy, true position"]["success"][0] >= 0
        assert all(math.isfinite(r["distance"][0]) for r in res[kind].values())
    assert os.path.getsize(tmp_path / "episodes.gif") > 0
    assert "verdict:" in capsys.readouterr().out
