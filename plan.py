"""V-JEPA 2-AC on a laptop (Assran et al. 2025): a two-rooms world with actions, the
action-conditioned predictor on a frozen V-JEPA encoder and its loss (train.py --preset rooms,
then rooms_ac), and planning with it: the cross-entropy method over action sequences toward a
goal frame's features, in closed loop, evaluated on a fixed protocol beside random actions, the
same planner on random-init networks and a greedy controller that knows the true position.

    python plan.py --ckpt out/rooms_ac/ckpt.pt [CKPT ...]   # several: training seeds, mean ± std

An episode: a start and a goal `distance` pixels apart (same room: both in the left or both in
the right room; cross room: the start left, the goal right, through the door), `budget` actions,
success when the agent ends within `radius` pixels of the goal. Writes OUT_DIR/results.json and
episodes.gif (the agent white, the goal's outline green, the plan's path in the world red).
"""
import argparse
import json
import math
import os
import statistics
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageDraw
from tqdm import tqdm

import losses
import model


# ----------------------------------------------------------------------------------------------
# The world

class TwoRooms:
    """A toy world with actions (V-JEPA 2-AC's setting, EB-JEPA's "Two Rooms"): a 6x6 square
    agent (with a glow) in a 64x64 frame with border walls and, with `wall`, a vertical inner
    wall whose door spans y in [24, 40). An action a in [-1, 1]^2 moves the agent by 5a pixels
    as (dy, dx); a move into a wall keeps what it can (first the y part, then the x part), else
    stays.

    sample(): random-action rollouts of num_frames // hold states, each shown for `hold` frames
    (a tubelet holds one state) -> clips [B, 1, T, 64, 64] (normalised as MovingMNIST),
    labels {"pos": [B, n, 2] (y, x) centres, "actions": [B, n, 2] (the last one unused)}."""
    SIZE, HALF, STEP, WALL, DOOR, GLOW = 64, 3, 5.0, (30, 34), (24, 40), 10.0
    MEAN, STD = 0.05, 0.2  # pixels normalised as MovingMNIST's (data.MMNIST_MEAN, MMNIST_STD)

    def __init__(self, num_frames=16, hold=2, wall=True):
        self.states, self.hold, self.wall = num_frames // hold, hold, wall
        r = torch.arange(self.SIZE)
        border = (r < 2) | (r >= self.SIZE - 2)
        self.walls = 0.5 * (border[:, None] | border[None, :]).float()
        if wall:
            cols = (r >= self.WALL[0]) & (r < self.WALL[1])
            door = (r >= self.DOOR[0]) & (r < self.DOOR[1])
            self.walls[~door[:, None] & cols[None, :]] = 0.5

    def blocked(self, pos):
        """[..., 2] centres -> whether the agent there overlaps a wall."""
        y, x = pos.unbind(-1)
        lo, hi = 2 + self.HALF, self.SIZE - 2 - self.HALF
        out = (y < lo) | (y > hi) | (x < lo) | (x > hi)
        if self.wall:
            in_cols = (x + self.HALF > self.WALL[0]) & (x - self.HALF < self.WALL[1])
            in_door = (y - self.HALF >= self.DOOR[0]) & (y + self.HALF <= self.DOOR[1])
            out |= in_cols & ~in_door
        return out

    def step(self, pos, action):
        """pos [..., 2], action [..., 2] -> the next positions [..., 2]."""
        move = self.STEP * action.clamp(-1, 1)
        new = pos
        for m in (move * torch.tensor([0.0, 1.0]), move * torch.tensor([1.0, 0.0]), move):
            new = torch.where(self.blocked(pos + m)[..., None], new, pos + m)
        return new

    def render(self, pos):
        """[..., 2] centres -> frames [..., 64, 64], normalised: the agent white, with a glow
        (0.6 exp(-d^2 / 2 GLOW^2)) that lets every 16x16 patch see how far it is."""
        r = torch.arange(self.SIZE) + 0.5
        dy, dx = r - pos[..., :1], r - pos[..., 1:]  # [..., 64]
        agent = ((dy.abs() <= self.HALF)[..., :, None] & (dx.abs() <= self.HALF)[..., None, :])
        glow = 0.6 * torch.exp(-(dy[..., :, None] ** 2 + dx[..., None, :] ** 2)
                               / (2 * self.GLOW ** 2))
        frames = torch.maximum(torch.maximum(agent.float(), glow), self.walls)
        return (frames - self.MEAN) / self.STD

    def start(self, batch, g):
        """Uniform free positions [B, 2], in either room."""
        lo, hi = 2 + self.HALF, self.SIZE - 2 - self.HALF
        pos = lo + (hi - lo) * torch.rand(batch, 2, generator=g)
        while (bad := self.blocked(pos)).any():  # redraw the few inside the inner wall
            pos[bad] = lo + (hi - lo) * torch.rand(int(bad.sum()), 2, generator=g)
        return pos

    def sample(self, batch, generator):
        actions = 2 * torch.rand(batch, self.states, 2, generator=generator) - 1
        pos = [self.start(batch, generator)]
        for t in range(self.states - 1):  # a loop over time steps, vectorised over the batch
            pos.append(self.step(pos[-1], actions[:, t]))
        pos = torch.stack(pos, 1)  # (B, n, 2)
        clips = self.render(pos).repeat_interleave(self.hold, dim=1)[:, None]
        return clips, {"pos": pos, "actions": actions}


# ----------------------------------------------------------------------------------------------
# The action-conditioned predictor and its loss

class ActionPredictor(nn.Module):
    """V-JEPA 2-AC's predictor, small: from a frozen encoder's features of states 0..n-1
    [B, n, S, D] and the action taken after each [B, n, A], those of states 1..n [B, n, S, D].
    Each step is [action token; its S state tokens] with sin-cos positions over (step, h, w)
    (the action token's over the step); block-causal: a token sees its step and earlier ones."""

    def __init__(self, enc_dim, grid_hw, max_steps, action_dim=2, dim=96, depth=4, heads=3):
        super().__init__()
        self.state_embed, self.action_embed = nn.Linear(enc_dim, dim), nn.Linear(action_dim, dim)
        self.register_buffer("pos", model.sincos_3d(dim, (max_steps, *grid_hw)).view(
            max_steps, math.prod(grid_hw), dim), persistent=False)
        self.register_buffer("step_pos", model.sincos_1d(dim, torch.arange(max_steps)).float(),
                             persistent=False)
        self.blocks = nn.ModuleList([model.Block(dim, heads) for _ in range(depth)])
        self.norm, self.proj = nn.LayerNorm(dim, eps=1e-6), nn.Linear(dim, enc_dim)
        model.init_weights(self, self.blocks)

    def forward(self, states, actions):
        B, n, S, _ = states.shape
        x = self.state_embed(states) + self.pos[:n].to(states.dtype)
        a = self.action_embed(actions.to(x.dtype)) + self.step_pos[:n].to(x.dtype)
        x = torch.cat([a[:, :, None], x], 2).flatten(1, 2)  # (B, n (1 + S), dim)
        step = torch.arange(n, device=x.device).repeat_interleave(S + 1)
        x = model.run_blocks(self.blocks, x, mask=step[:, None] >= step[None, :])
        return self.proj(self.norm(x.view(B, n, S + 1, -1)[:, :, 1:]))


def encode_states(encoder, clips, tubelet_size):
    """Each state of world clips [B, C, n t, H, W] (one state per tubelet) encoded alone, as
    V-JEPA 2-AC does, layer-normed -> [B, n, S, D] float32."""
    B, C, T, H, W = clips.shape
    states = clips.view(B, C, T // tubelet_size, tubelet_size, H, W).transpose(1, 2)
    z = encoder(states.flatten(0, 1)).float()  # (B n, S, D)
    return F.layer_norm(z, z.shape[-1:]).unflatten(0, (B, -1))


def action_loss(run, clips, actions):
    """V-JEPA 2-AC (Assran et al. 2025, sec. 3) on a world's rollouts [B, C, n t, H, W] with
    actions [B, n, A]: the frozen encoder's features z of each state alone; the predictor,
    teacher-forced, predicts z_1..z_{n-1} from z_0..z_{n-2}, and, from z_0 and its own
    prediction of z_1 (a 2-step rollout), z_2; the loss is cfg.loss of each."""
    cfg, loss = run.cfg, losses.PREDICTION_LOSSES[run.cfg.loss]
    with torch.no_grad():
        z = encode_states(run.nets["target_encoder"], clips, cfg.tubelet_size)
    forced = run.net(z[:, :-1], actions[:, :-1])  # [B, n-1, S, D]: z_1 .. z_{n-1}
    rolled = run.net(torch.cat([z[:, :1], forced[:, :1]], 1), actions[:, :2])[:, 1]  # z_2
    terms = {"teacher": loss([forced.flatten(1, 2)], [z[:, 1:].flatten(1, 2)]),
             "rollout": loss([rolled], [z[:, 2]])}
    return sum(terms.values()), terms, z


def check_config(cfg):
    """The action objective's settings of a train.Config: ValueError naming the first bad one."""
    if cfg.objective == "action" and cfg.dataset != "two_rooms":
        raise ValueError("--objective action needs a world with actions (--dataset two_rooms)")
    if cfg.objective == "action" and not os.path.isfile(cfg.encoder_ckpt):
        raise ValueError(f"--encoder_ckpt {cfg.encoder_ckpt}: no such file (train the world's "
                         "encoder first: python train.py --preset rooms)")


def build(cfg, device):
    """train.build for the action objective: (the predictor, {checkpoint name: module}, None)."""
    encoder = model.from_checkpoint(model.read_checkpoint(cfg.encoder_ckpt), "target_encoder",
                                    cfg.encoder_ckpt)[0].requires_grad_(False).to(device)
    net = ActionPredictor(encoder.dim, encoder.grid[1:], cfg.num_frames // cfg.tubelet_size, 2,
                          cfg.pred_dim, cfg.pred_depth, cfg.enc_heads).to(device)
    return net, {"encoder": encoder, "target_encoder": encoder, "action_predictor": net}, None


# ----------------------------------------------------------------------------------------------
# Planning

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
    return encode_states(encoder, frames.contiguous(), tubelet_size)[:, 0]


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
    return ((goals - pos) / TwoRooms.STEP).clamp(-1, 1), None


def load(path):
    """(encoder, action predictor, config) of a train.py --objective action checkpoint."""
    ckpt = model.read_checkpoint(path, "action_predictor")
    cfg = ckpt["config"]
    encoder = model.from_checkpoint(ckpt, "target_encoder", path)[0]
    steps = cfg["num_frames"] // cfg["tubelet_size"]
    predictor = ActionPredictor(encoder.dim, encoder.grid[1:], steps, 2, cfg["pred_dim"],
                                      cfg["pred_depth"], cfg["enc_heads"])
    model.load_strict(predictor, ckpt["action_predictor"], f"{path} action_predictor")
    return encoder.eval(), predictor.eval(), cfg


def draw_gif(world, starts, goals, paths, plans, path, scale=4):
    """A few episodes side by side, one frame per step: agent, goal outline, planned path."""
    frames = []
    for t in range(paths.shape[1]):
        tiles = []
        for e in range(len(starts)):
            gray = (world.render(paths[e, t]) * world.STD + world.MEAN).clamp(0, 1)
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


def mean_std(values):
    """(mean, sample std) of a list; std 0 for one value."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


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
    world = TwoRooms(nets[0][2]["num_frames"], t)
    pipelines = {"CEM, trained": [planner(e, pr, world, t, 7) for e, pr, _ in nets],
                 "CEM, random init": [planner(model.random_init_like(nets[0][0], 100 + i),
                                              model.random_init_like(nets[0][1], 200 + i),
                                              world, t, 7)
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
