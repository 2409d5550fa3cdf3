"""Planning with a V-JEPA 2-AC world model (train.py --preset rooms, then rooms_ac): the cross-
entropy method over action sequences toward a goal frame's features, in closed loop, and its
evaluation on a fixed protocol beside random actions, the same planner on random-init networks
and a greedy controller that knows the true position.

    python plan.py --ckpt out/rooms_ac/ckpt.pt [CKPT ...]   # several: training seeds, mean ± std

An episode: a start and a goal `distance` pixels apart (same room: both in the left or both in
the right room; cross room: the start left, the goal right, through the door), `budget` actions,
success when the agent ends within `radius` pixels of the goal. Writes OUT_DIR/results.json and
episodes.gif (the agent white, the goal's outline green, the plan's path in the world red).
"""
import argparse
import json
import os
import time

import numpy as np
import torch
from PIL import Image, ImageDraw
from tqdm import tqdm

import data
import model
from probe import mean_std, random_init_like

# The published protocol: every number in README's table comes from these values.
PROTOCOL = {"same_room": dict(episodes=40, distance=(15, 25), budget=10),
            "cross_room": dict(episodes=40, distance=(30, 50), budget=20)}
RADIUS = 4.0  # pixels; the agent is 6 wide and moves up to 5 per action
CEM = dict(horizon=4, samples=32, elites=6, iters=3)  # V-JEPA 2-AC: 800 samples, 10 iterations


def episodes(world, kind, n, distance, seed):
    """n seeded (start, goal) pairs [n, 2] each, free positions `distance` pixels apart."""
    g, starts, goals = torch.Generator().manual_seed(seed), [], []
    while sum(map(len, starts)) < n:
        s, e = world.start(4 * n, g), world.start(4 * n, g)  # draw many, keep those that fit
        d = (s - e).norm(dim=-1)
        ok = (d >= distance[0]) & (d <= distance[1])
        if kind == "cross_room":  # start in the left room, goal in the right
            ok &= (s[:, 1] < world.WALL[0]) & (e[:, 1] > world.WALL[1])
        else:
            ok &= (s[:, 1] < world.WALL[0]) == (e[:, 1] < world.WALL[0])
        starts.append(s[ok]), goals.append(e[ok])
    return torch.cat(starts)[:n], torch.cat(goals)[:n]


def observe(encoder, world, pos, tubelet_size):
    """Features [E, S, D] of the frames with the agent at pos [E, 2] (one state, alone)."""
    frames = world.render(pos)[:, None, None].expand(-1, 1, tubelet_size, -1, -1)
    return model.encode_states(encoder, frames.contiguous(), tubelet_size)[:, 0]


@torch.no_grad()
def cem(predictor, z, goal, g, mean=None):
    """The cross-entropy method: action sequences [E, H, 2] whose predicted final features are
    closest (L1) to the goal's. z, goal: [E, S, D]; mean: a warm start (the last plan, shifted).
    -> the plan's mean [E, H, 2]."""
    E, H, N, K = len(z), CEM["horizon"], CEM["samples"], CEM["elites"]
    mean = torch.zeros(E, H, 2) if mean is None else mean
    std = torch.ones(E, H, 2)
    for _ in range(CEM["iters"]):
        acts = (mean[:, None] + std[:, None] * torch.randn(E, N, H, 2, generator=g)).clamp(-1, 1)
        state = z.repeat_interleave(N, 0)[:, None]  # [E N, 1, S, D]
        flat = acts.reshape(E * N, H, 2)
        for h in range(H):  # the world is Markov: each step from the last predicted state alone
            state = predictor(state, flat[:, h:h + 1])
        energy = (state[:, 0] - goal.repeat_interleave(N, 0)).abs().mean((1, 2)).view(E, N)
        elite = acts.gather(1, energy.topk(K, largest=False).indices[..., None, None].expand(
            -1, -1, H, 2))  # [E, K, H, 2]
        mean, std = elite.mean(1), elite.std(1) + 0.05
    return mean


def run_episodes(policy, world, starts, goals, budget, track=False):
    """Closed loop: each step the policy sees (positions, goals) and returns actions [E, 2]
    (a planner re-plans from the new observation). -> final distances [E], paths [E, budget+1, 2]
    and with track the plans' paths in the world."""
    pos, paths, plans = starts.clone(), [starts], []
    for _ in range(budget):
        actions, plan = policy(pos, goals)
        if track and plan is not None:  # where the whole planned sequence would lead
            p, way = pos, []
            for a in plan.unbind(1):
                p = world.step(p, a)
                way.append(p)
            plans.append(torch.stack(way, 1))
        pos = world.step(pos, actions)
        paths.append(pos)
    return (pos - goals).norm(dim=-1), torch.stack(paths, 1), plans


def planner(encoder, predictor, world, tubelet_size, seed):
    """CEM in closed loop with the given networks, warm-started from the last plan shifted."""
    g, last = torch.Generator().manual_seed(seed), {}

    def policy(pos, goals):
        z, goal = (observe(encoder, world, p, tubelet_size) for p in (pos, goals))
        warm = last.get("plan")
        plan = cem(predictor, z, goal, g, None if warm is None else torch.cat(
            [warm[:, 1:], torch.zeros_like(warm[:, :1])], 1))
        last["plan"] = plan
        return plan[:, 0], plan

    return policy


def random_policy(seed):
    g = torch.Generator().manual_seed(seed)
    return lambda pos, goals: (2 * torch.rand(len(pos), 2, generator=g) - 1, None)


def greedy_policy(pos, goals):
    """Knows the true position: the largest step straight at the goal."""
    return ((goals - pos) / data.TwoRooms.STEP).clamp(-1, 1), None


def load(path):
    """(encoder, action predictor, config) of a train.py --objective action checkpoint."""
    ckpt = data.read_checkpoint(path, "action_predictor")
    cfg = ckpt["config"]
    encoder = model.from_checkpoint(ckpt, "target_encoder", path)[0]
    steps = cfg["num_frames"] // cfg["tubelet_size"]
    predictor = model.ActionPredictor(encoder.dim, encoder.grid[1:], steps, 2, cfg["pred_dim"],
                                      cfg["pred_depth"], cfg["enc_heads"])
    model.load_strict(predictor, ckpt["action_predictor"], f"{path} action_predictor")
    return encoder.eval(), predictor.eval(), cfg


def draw_gif(world, starts, goals, paths, plans, path, scale=4):
    """A few episodes side by side, one frame per step: agent, goal outline, planned path."""
    frames = []
    for t in range(paths.shape[1]):
        tiles = []
        for e in range(len(starts)):
            gray = (world.render(paths[e, t]) * data.MMNIST_STD + data.MMNIST_MEAN).clamp(0, 1)
            img = Image.fromarray((gray.numpy() * 255).astype(np.uint8)).convert("RGB")
            img = img.resize((64 * scale, 64 * scale), Image.NEAREST)
            d = ImageDraw.Draw(img)
            y, x = (goals[e] * scale).tolist()
            r = world.HALF * scale
            d.rectangle([x - r, y - r, x + r, y + r], outline=(0, 220, 0), width=2)
            if t < len(plans):
                for py, px in (plans[t][e] * scale).tolist():
                    d.ellipse([px - 3, py - 3, px + 3, py + 3], fill=(230, 40, 40))
            tiles.append(np.asarray(img))
        frames.append(Image.fromarray(np.concatenate(tiles, 1)))
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=400, loop=0)


@torch.no_grad()
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", nargs="+", required=True, help="rooms_ac checkpoint(s): seeds")
    p.add_argument("--random_inits", type=int, default=3, help="random-init pipelines beside")
    p.add_argument("--episodes", type=int, default=0, help="per kind (0: the protocol's)")
    p.add_argument("--out_dir", default="", help="default: the first checkpoint's folder/plan")
    a = p.parse_args(argv)
    out = a.out_dir or os.path.join(os.path.dirname(a.ckpt[0]) or ".", "plan")
    os.makedirs(out, exist_ok=True)
    nets = [load(c) for c in a.ckpt]
    t = nets[0][2]["tubelet_size"]
    world = data.TwoRooms(nets[0][2]["num_frames"], t)
    pipelines = {"CEM, trained": [planner(e, pr, world, t, 7) for e, pr, _ in nets],
                 "CEM, random init": [planner(random_init_like(nets[0][0], 100 + i),
                                              random_init_like(nets[0][1], 200 + i), world, t, 7)
                                      for i in range(a.random_inits)],
                 "random actions": [random_policy(7)], "greedy, true position": [greedy_policy]}
    results = {"protocol": PROTOCOL, "radius": RADIUS, "cem": CEM, "ckpt": a.ckpt}
    start = time.time()
    for kind, proto in PROTOCOL.items():
        n = a.episodes or proto["episodes"]
        starts, goals = episodes(world, kind, n, proto["distance"], seed=2026)
        rows = {}
        for name, policies in pipelines.items():
            runs = []
            for pol in tqdm(policies, desc=f"{kind}: {name}", leave=False):
                dist, paths, plans = run_episodes(pol, world, starts, goals, proto["budget"],
                                                  track=name == "CEM, trained" and not runs)
                runs.append(((dist < RADIUS).float().mean().item() * 100, dist.mean().item()))
                if plans and kind == "same_room":
                    draw_gif(world, starts[:4], goals[:4], paths[:4], [q[:4] for q in plans],
                             os.path.join(out, "episodes.gif"))
            rows[name] = {"success": mean_std([r[0] for r in runs]),
                          "distance": mean_std([r[1] for r in runs]), "runs": runs}
        results[kind] = rows
        print(f"\n{kind.replace('_', ' ')}: {n} episodes, start-goal {proto['distance'][0]}-"
              f"{proto['distance'][1]} px, {proto['budget']} actions, success within {RADIUS} px")
        print("| pipeline | runs | success % | final distance px |\n| --- | --- | --- | --- |")
        for name, r in rows.items():
            print(f"| {name} | {len(r['runs'])} | {r['success'][0]:.1f} ± {r['success'][1]:.1f} "
                  f"| {r['distance'][0]:.1f} ± {r['distance'][1]:.1f} |")
        trained, rand = rows["CEM, trained"]["success"], rows["CEM, random init"]["success"]
        margin = trained[0] - max(rand[0], rows["random actions"]["success"][0])
        print(f"verdict: the trained world model plans {margin:+.1f} points above the better of "
              f"random actions and the random-init pipeline")
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(f"\n{(time.time() - start) / 60:.1f} min; results: {out}/results.json, "
          f"episodes: {out}/episodes.gif")


if __name__ == "__main__":
    main()
