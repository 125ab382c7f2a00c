"""A toy pixel world for tests and smoke runs: a gripper square that follows actions.

A grey 'gripper' square moves by (dx, dy) * 3 px per step; when the gripper action
is > 0 over the red 'cube', the cube is carried along; success = the cube ends in
the top quarter of the image. Cheap, deterministic for a seed, and the next frame
depends on the actions, so a model that ignores them cannot fit it.
"""

from __future__ import annotations

import numpy as np

from wmpo_core.store import EpisodeMeta, EpisodeStore

BG = np.array([40, 60, 90], np.uint8)
CUBE = np.array([220, 40, 40], np.uint8)
GRIP = np.array([200, 200, 200], np.uint8)


def render(size: int, grip: np.ndarray, cube: np.ndarray, closed: bool) -> np.ndarray:
    img = np.empty((size, size, 3), np.uint8)
    img[:] = BG
    s = _side(size)
    cx, cy = np.clip(cube.round().astype(int), 0, size - s)
    img[cy : cy + s, cx : cx + s] = CUBE
    gx, gy = np.clip(grip.round().astype(int), 0, size - s)
    img[gy : gy + s, gx : gx + s] = GRIP if not closed else GRIP // 2
    img[gy + s // 3 : gy + s - s // 3, gx + s // 3 : gx + s - s // 3] = BG  # a hollow "gripper"
    return img


def _side(size: int) -> int:
    return max(3, size // 6)


def toy_episode(
    rng: np.random.Generator, size: int = 64, steps: int = 40, random_actions: float = 0.3
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Frames [T,H,W,3], actions [T,7] and the success flag of one toy episode."""
    s = _side(size)
    grip = rng.uniform(0, size - s, 2)
    cube = rng.uniform(size / 3, size - s, 2)
    frames, actions = [], []
    held = False
    for _ in range(steps):
        closed = held
        frames.append(render(size, grip, cube, closed))
        if rng.random() < random_actions:
            a = rng.uniform(-1, 1, 7)
        else:  # a crude expert: go to the cube, close, carry it up
            target = cube if not held else np.array([cube[0], 0.0])
            a = np.zeros(7)
            a[:2] = np.clip((target - grip) / 3.0, -1, 1)
            a[6] = 1.0 if np.abs(grip - cube).max() < 2 or held else -1.0
        a = a.astype(np.float32)
        actions.append(a)
        grip = np.clip(grip + 3.0 * a[:2], 0, size - s)
        if a[6] > 0 and np.abs(grip - cube).max() < s:
            held = True
        elif a[6] <= 0:
            held = False
        if held:
            cube = grip.copy()
    return np.stack(frames), np.stack(actions), bool(cube[1] < size / 4)


def make_toy_store(
    root, n: int = 8, size: int = 64, steps: int = 40, seed: int = 0
) -> EpisodeStore:
    store = EpisodeStore(root, create=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        # Odd episodes act mostly at random: a mix of successes and failures.
        frames, actions, ok = toy_episode(rng, size, steps, 0.1 if i % 2 == 0 else 0.9)
        meta = EpisodeMeta(id=f"toy{i:04d}", task="Toy", instruction="lift", success=ok, seed=i)
        store.add(meta, frames, actions)
    return store


def square_episode(
    rng: np.random.Generator, size: int = 32, steps: int = 24, side: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """The simplest action-driven world: a square moved (dx, dy) * 3 px by random actions.
    Used by the tests to check, in seconds, that a model learns to follow its actions."""
    pos = rng.uniform(0, size - side, 2)
    frames, actions = [], []
    for _ in range(steps):
        frames.append(draw_square(pos, size, side))
        a = np.zeros(7, np.float32)
        a[:2] = rng.uniform(-1, 1, 2)
        actions.append(a)
        pos = np.clip(pos + 3.0 * a[:2], 0, size - side)
    return np.stack(frames), np.stack(actions)


def draw_square(pos: np.ndarray, size: int = 32, side: int = 10) -> np.ndarray:
    img = np.full((size, size, 3), 40, np.uint8)
    x, y = np.clip(np.round(pos).astype(int), 0, size - side)
    img[y : y + side, x : x + side] = (230, 200, 60)
    return img
