"""Pathfinder (LRA, Linsley et al. 2018): are the two markers on one dashed curve? Pixels as tokens.

Our own generator after the description in DESIGN §4 and the parameters LRA used for Pathfinder-32.
A curve is a chain of paddles (short line segments of ``paddle_length`` px and ``paddle_thickness`` px)
separated by gaps of ``margin`` px. It grows one paddle at a time: the next direction turns by an angle
drawn with weight cos^2(continuity * turn) (turns up to 90 degrees for continuity 1), restricted to
directions whose paddle stays ``padding`` px inside the image and ``margin`` px clear of everything
already drawn (so curves never touch or cross). Two target curves of ``contour_length`` paddles start
``seed_distance`` px apart and grow in alternation; then ``num_distractors`` curves of
``distractor_length`` paddles are placed where they fit. The markers are discs of ``marker_radius``:
one on the start of target curve A, the other on the far end of A (label 1, connected) or on the far end
of target curve B (label 0). Labels are exactly balanced in every split.

Rendering: each paddle is anti-aliased by 4x4 supersampling (pixel value = covered fraction times
``contrast``, clipped to 1); markers are drawn at full intensity; overlaps take the maximum. Intensities
in [0, 1] are quantised to ``levels`` tokens, ``round(v * (levels - 1))``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sessa.tasks.base import IGNORE_INDEX, TaskConfig, TaskData, TaskSplit, register_task

SUPERSAMPLE = 4  # anti-aliasing: 4x4 sample points per pixel
TURN_STEPS = 36  # candidate turning angles per growth step
MAX_BACKTRACKS = 6  # a stuck target curve backs up 1, 2, ... paddles this many times before a restart


def _point_segment_sq(
    px: np.ndarray,
    py: np.ndarray,
    ax: np.ndarray,
    ay: np.ndarray,
    dx: np.ndarray,
    dy: np.ndarray,
    inv: np.ndarray,
) -> np.ndarray:
    """Squared distance from points (px, py) to segments starting at (ax, ay) with direction (dx, dy)."""
    ux, uy = px - ax, py - ay
    t = np.minimum(np.maximum((ux * dx + uy * dy) * inv, 0.0), 1.0)  # inv = 1 / |d|^2
    ex, ey = ux - t * dx, uy - t * dy
    return ex * ex + ey * ey


def segment_distance(
    p0: np.ndarray, p1: np.ndarray, q0: np.ndarray, q1: np.ndarray, crossing: bool = True
) -> np.ndarray:
    """Shortest distance between segments p0-p1 and q0-q1; inputs (..., 2) broadcast, output (...).

    The minimum of the four endpoint-to-segment distances, or 0 where the segments cross. ``crossing=False``
    skips the crossing test, for callers that only compare with a threshold above half the shorter length
    (crossing segments always have an endpoint that close to the other). Written on x/y components
    because it runs on small arrays in the growth loop, where the count of numpy calls is the cost.
    """
    p0x, p0y, p1x, p1y = p0[..., 0], p0[..., 1], p1[..., 0], p1[..., 1]
    q0x, q0y, q1x, q1y = q0[..., 0], q0[..., 1], q1[..., 0], q1[..., 1]
    dpx, dpy, dqx, dqy = p1x - p0x, p1y - p0y, q1x - q0x, q1y - q0y
    inv_p = 1.0 / np.maximum(dpx * dpx + dpy * dpy, 1e-12)
    inv_q = 1.0 / np.maximum(dqx * dqx + dqy * dqy, 1e-12)
    dist_sq = np.minimum(
        np.minimum(
            _point_segment_sq(p0x, p0y, q0x, q0y, dqx, dqy, inv_q),
            _point_segment_sq(p1x, p1y, q0x, q0y, dqx, dqy, inv_q),
        ),
        np.minimum(
            _point_segment_sq(q0x, q0y, p0x, p0y, dpx, dpy, inv_p),
            _point_segment_sq(q1x, q1y, p0x, p0y, dpx, dpy, inv_p),
        ),
    )
    if not crossing:
        return np.sqrt(dist_sq)
    # the segments cross when each one's endpoints lie on opposite sides of the other (2-D cross products)
    side_p0 = dqx * (p0y - q0y) - dqy * (p0x - q0x)
    side_p1 = dqx * (p1y - q0y) - dqy * (p1x - q0x)
    side_q0 = dpx * (q0y - p0y) - dpy * (q0x - p0x)
    side_q1 = dpx * (q1y - p0y) - dpy * (q1x - p0x)
    crosses = (side_p0 * side_p1 < 0) & (side_q0 * side_q1 < 0)
    return np.where(crosses, 0.0, np.sqrt(dist_sq))


class _Scene:
    """Everything placed so far, as capsules (segment start-end with a radius) that new paddles must clear.

    Rows are paddles or marker-sized discs (start == end) reserved around the ends of the target curves.
    """

    def __init__(self, capacity: int = 128) -> None:
        self.starts = np.zeros((capacity, 2))  # (n, 2) x, y; only the first n rows are in use
        self.ends = np.zeros((capacity, 2))
        self.radii = np.zeros(capacity)
        self.owners = np.zeros(capacity, dtype=np.int64)  # curve index of the row
        self.discs = np.zeros(capacity, dtype=bool)  # True for a reserved marker disc
        self.n = 0

    def add(self, a: np.ndarray, b: np.ndarray, radius: float, owner: int, disc: bool = False) -> None:
        if self.n == len(self.radii):
            for name in ("starts", "ends", "radii", "owners", "discs"):
                old = getattr(self, name)
                setattr(self, name, np.concatenate([old, np.zeros_like(old)]))
        self.starts[self.n], self.ends[self.n] = a, b
        self.radii[self.n], self.owners[self.n], self.discs[self.n] = radius, owner, disc
        self.n += 1

    def remove(self, row: int) -> None:
        for arr in (self.starts, self.ends, self.radii, self.owners, self.discs):
            arr[row : self.n - 1] = arr[row + 1 : self.n]
        self.n -= 1

    def last_paddle(self, owner: int) -> int:
        return int(np.flatnonzero((self.owners[: self.n] == owner) & ~self.discs[: self.n])[-1])

    def curve(self, owner: int) -> np.ndarray:
        """(n_paddles, 2, 2) endpoints of curve ``owner`` in growth order."""
        idx = np.flatnonzero((self.owners[: self.n] == owner) & ~self.discs[: self.n])
        return np.stack([self.starts[idx], self.ends[idx]], axis=1)


@dataclass
class PathfinderExample:
    """One generated image with the geometry it was drawn from.

    image:   (S, S) float32 intensities in [0, 1]
    curves:  list of (n_paddles, 2, 2) arrays of paddle endpoints (x, y) in pixel units; curves[0] and
             curves[1] are the target curves (the first marker is on curves[0]'s start), the rest distractors
    markers: (2, 2) marker centres (x, y)
    label:   1 if both markers are on curves[0], else 0 (the second marker is on curves[1])
    """

    image: np.ndarray
    curves: list[np.ndarray]
    markers: np.ndarray
    label: int


def _unit(theta: np.ndarray | float) -> np.ndarray:
    return np.stack([np.cos(theta), np.sin(theta)], axis=-1)


class _CurveGrower:
    """Places paddles for one image: random seeds and continuity-weighted extensions with clearance."""

    def __init__(self, cfg: PathfinderTask, rng: np.random.Generator) -> None:
        self.cfg, self.rng = cfg, rng
        self.half_width = cfg.paddle_thickness / 2
        self.lo = cfg.padding + self.half_width
        self.hi = cfg.image_size - cfg.padding - self.half_width
        limit = math.pi / 2 / cfg.continuity
        step = 2 * limit / TURN_STEPS
        self.turns = -limit + step * (np.arange(TURN_STEPS) + 0.5)
        self.turn_step = step
        self.turn_weights = np.cos(cfg.continuity * self.turns) ** 2
        # paddles closer than the clearance can cross only if the clearance is below half a paddle
        self.check_crossing = cfg.paddle_length / 2 >= cfg.paddle_thickness + cfg.margin
        self.scene = _Scene()

    def fits(
        self,
        a: np.ndarray,
        b: np.ndarray,
        owner: int,
        skip: int = -1,
        near: np.ndarray | None = None,
        tip: np.ndarray | None = None,
    ) -> np.ndarray:
        """Which candidate paddles a-b (C, 2) of curve ``owner`` stay inside and clear of the scene.

        skip: a row to ignore (the paddle a new one continues); near: (2,) a point all candidates lie within
        ``paddle_length + margin`` of, so only rows close to it are tested; tip: (C, 2) curve ends that need
        room for a marker disc. A curve's own reserved discs do not block it.
        """
        inside = ((a >= self.lo) & (a <= self.hi) & (b >= self.lo) & (b <= self.hi)).all(-1)
        s, cfg = self.scene, self.cfg
        rows = np.flatnonzero(~(s.discs[: s.n] & (s.owners[: s.n] == owner)))
        rows = rows[rows != skip]
        if near is not None and rows.size:  # cheap bounding-circle test around each row's midpoint
            mid = (s.starts[rows] + s.ends[rows]) / 2
            half = np.abs(s.ends[rows] - s.starts[rows]).sum(-1) / 2
            reach = (
                cfg.paddle_length
                + 3 * cfg.margin
                + cfg.marker_radius
                + self.half_width
                + s.radii[rows]
                + half
            )
            rows = rows[((mid - near) ** 2).sum(-1) < reach**2]
        if rows.size == 0:
            return inside
        starts, ends, radii = s.starts[None, rows], s.ends[None, rows], s.radii[rows] + cfg.margin
        dist = segment_distance(a[:, None], b[:, None], starts, ends, crossing=self.check_crossing)
        ok = inside & (dist >= radii + self.half_width).all(-1)
        if tip is not None:
            ok &= (
                segment_distance(tip[:, None], tip[:, None], starts, ends, crossing=False)
                >= radii + cfg.marker_radius
            ).all(-1)
        return ok

    def seed(
        self, owner: int, tail: np.ndarray | None = None, tip: bool = False
    ) -> tuple[np.ndarray, float] | None:
        """First paddle of a curve (from ``tail`` if given, else a random point); returns (head, angle).

        tip: reserve a marker disc around the tail (target curves).
        """
        tries = self.cfg.max_tries
        a = (
            np.broadcast_to(tail, (tries, 2))
            if tail is not None
            else self.rng.uniform(self.lo, self.hi, (tries, 2))
        )
        theta = self.rng.uniform(-math.pi, math.pi, size=tries)
        b = a + self.cfg.paddle_length * _unit(theta)
        ok = np.flatnonzero(self.fits(a, b, owner, tip=a if tip else None))
        if ok.size == 0:
            return None
        k = ok[0]
        self.scene.add(a[k], b[k], self.half_width, owner)
        if tip:
            self.scene.add(a[k], a[k], self.cfg.marker_radius, owner, disc=True)
        return b[k], float(theta[k])

    def extend(
        self, owner: int, head: np.ndarray, theta: float, tip: bool = False
    ) -> tuple[np.ndarray, float] | None:
        """Next paddle of ``owner`` after its last one (ending at ``head``), or None if every turn is blocked.

        tip: this is a target curve's final paddle; reserve a marker disc around its end.
        """
        jitter = self.rng.uniform(-0.5, 0.5, size=TURN_STEPS) * self.turn_step
        angles = theta + self.turns + jitter
        direction = _unit(angles)
        a = head + self.cfg.margin * direction
        b = a + self.cfg.paddle_length * direction
        skip = self.scene.last_paddle(owner)
        fit = self.fits(a, b, owner, skip=skip, near=head, tip=b if tip else None)
        weights = self.turn_weights * fit
        if not weights.any():
            return None
        cumulative = np.cumsum(weights)
        k = min(
            int(np.searchsorted(cumulative, self.rng.random() * cumulative[-1], side="right")), TURN_STEPS - 1
        )
        self.scene.add(a[k], b[k], self.half_width, owner)
        if tip:
            self.scene.add(b[k], b[k], self.cfg.marker_radius, owner, disc=True)
        return b[k], float(angles[k])

    def grow(self, owner: int, n_paddles: int) -> bool:
        """A distractor of ``n_paddles`` from a random seed; on failure the scene is left unchanged."""
        size = self.scene.n
        state = self.seed(owner)
        for _ in range(n_paddles - 1):
            if state is None:
                break
            state = self.extend(owner, *state)
        if state is None:
            self.scene.n = size
            return False
        return True


def _grow_targets(g: _CurveGrower) -> bool:
    """Two target curves (owners 0 and 1) seeded ``seed_distance`` apart, grown paddle by paddle in turn.

    Both ends of each curve keep a marker disc clear of the other curve, so a marker never touches the
    wrong curve. The first seed keeps ``seed_distance`` from the border (LRA keeps its seeds central) so
    the curves have room; a stuck curve backs up 1, 2, ... paddles (``MAX_BACKTRACKS`` times in all).
    """
    cfg, rng = g.cfg, g.rng
    tail = rng.uniform(g.lo + cfg.seed_distance, g.hi - cfg.seed_distance, size=2)
    first = g.seed(0, tail=tail, tip=True)
    tails = tail + cfg.seed_distance * _unit(rng.uniform(-math.pi, math.pi, size=cfg.max_tries))
    inside = ((tails >= g.lo) & (tails <= g.hi)).all(-1)
    second = (
        g.seed(1, tail=tails[np.argmax(inside)], tip=True) if first is not None and inside.any() else None
    )
    if second is None:
        return False
    states = [[first], [second]]  # per curve: (head, angle) after each of its paddles
    backtracks = 0
    while min(len(states[0]), len(states[1])) < cfg.contour_length:
        owner = int(len(states[1]) < len(states[0]))
        last = len(states[owner]) == cfg.contour_length - 1
        state = g.extend(owner, *states[owner][-1], tip=last)
        if state is not None:
            states[owner].append(state)
            continue
        backtracks += 1  # back up further after each failure: 1, 2, 3, ... paddles
        if backtracks > MAX_BACKTRACKS or len(states[owner]) <= backtracks:
            return False
        for _ in range(backtracks):
            g.scene.remove(g.scene.last_paddle(owner))
            states[owner].pop()
    return True


def render(
    size: int, starts: np.ndarray, ends: np.ndarray, radii: np.ndarray, values: np.ndarray
) -> np.ndarray:
    """Anti-aliased capsules (segment + radius) on a (size, size) canvas; a pixel takes its covered fraction
    times the capsule's value, overlaps the maximum. starts, ends: (N, 2) x, y; radii, values: (N,)."""
    image = np.zeros((size, size), dtype=np.float32)
    if len(starts) == 0:
        return image
    reach = np.linalg.norm(ends - starts, axis=-1) / 2 + radii
    width = int(math.ceil(2 * reach.max())) + 1  # pixels per side of each capsule's window
    corner = np.floor((starts + ends) / 2 - reach[:, None]).astype(np.int64)  # (N, 2) window corner x, y
    offsets = (np.arange(width * SUPERSAMPLE) + 0.5) / SUPERSAMPLE
    grid = np.stack(np.meshgrid(offsets, offsets, indexing="xy"), axis=-1).reshape(-1, 2)  # (P, 2) x, y
    points = corner[:, None, :] + grid[None]  # (N, P, 2)
    dist = segment_distance(points, points, starts[:, None], ends[:, None], crossing=False)
    covered = (dist <= radii[:, None]).reshape(-1, width, SUPERSAMPLE, width, SUPERSAMPLE)
    coverage = covered.mean(axis=(2, 4)) * values[:, None, None]  # (N, width rows, width cols)
    rows = corner[:, 1, None, None] + np.arange(width)[None, :, None]
    cols = corner[:, 0, None, None] + np.arange(width)[None, None, :]
    rows, cols = np.broadcast_arrays(rows, cols)
    keep = (rows >= 0) & (rows < size) & (cols >= 0) & (cols < size)
    np.maximum.at(image, (rows[keep], cols[keep]), np.minimum(coverage[keep], 1.0).astype(np.float32))
    return image


def generate_example(cfg: PathfinderTask, label: int, rng: np.random.Generator) -> PathfinderExample:
    """One image with the given label (1: both markers on curves[0]; 0: the second one on curves[1])."""
    for _ in range(cfg.max_tries):
        g = _CurveGrower(cfg, rng)
        if not _grow_targets(g):
            continue
        order = [0, 1] if rng.random() < 0.5 else [1, 0]  # which target carries the first marker
        curves = [g.scene.curve(o) for o in order]
        markers = np.stack([curves[0][0, 0], curves[1 - label][-1, 1]])
        placed = 0
        for owner in range(2, 2 + cfg.n_distractors):
            placed += any(g.grow(owner, cfg.distractor_paddles) for _ in range(cfg.max_tries))
        if placed < cfg.n_distractors:
            continue
        curves += [g.scene.curve(o) for o in range(2, 2 + cfg.n_distractors)]
        paddles = np.concatenate(curves)  # (P, 2, 2)
        starts = np.concatenate([paddles[:, 0], markers])
        ends = np.concatenate([paddles[:, 1], markers])
        radii = np.array([g.half_width] * len(paddles) + [cfg.marker_radius] * 2)
        values = np.array([cfg.contrast] * len(paddles) + [1.0, 1.0])
        image = render(cfg.image_size, starts, ends, radii, values)
        return PathfinderExample(image=image, curves=curves, markers=markers, label=label)
    raise RuntimeError(
        f"could not fit the curves in {cfg.max_tries} attempts: image_size={cfg.image_size}, "
        f"contour_length={cfg.contour_length}, n_distractors={cfg.n_distractors}; use fewer or shorter curves"
    )


def pathfinder_vocab(levels: int) -> list[str]:
    """Pixel tokens ``px0 .. px{levels-1}`` (id = quantised intensity), then specials and the two classes."""
    return [f"px{v}" for v in range(levels)] + ["<pad>", "<cls>", "<disconnected>", "<connected>"]


@register_task("pathfinder")
@dataclass
class PathfinderTask(TaskConfig):
    """Pathfinder-32: 1024 pixel tokens (row-major) then ``<cls>``, whose target is the class token.

    Input length 1025 = 32 * 32 pixels + the ``<cls>`` query. Vocabulary: ``levels`` pixel tokens whose id
    is the quantised intensity, then ``<pad>``, ``<cls>``, ``<disconnected>`` (label 0) and ``<connected>``
    (label 1). Defaults follow LRA's Pathfinder-32 (contour 14, paddle 2 x 0.5, margin 1, padding 1,
    continuity 1, seed distance 7, markers of radius 1.5, 14 // 3 = 4-paddle distractors, 20 // 4 = 5 of
    them); ``contour_length`` 6 and 9 are LRA's easier levels (with 10 and 6 distractors of 2 and 3 paddles).
    Labels are balanced exactly in each split. ``save_example_grid`` draws a sheet of examples
    (docs/pathfinder_examples.png).

    Example:
        >>> data = PathfinderTask(n_train=4, n_valid=2, n_test=2).build(seed=0)
        >>> split = data.splits["train"]
        >>> tuple(split.inputs.shape), split.meta["label"].sum().item()
        ((4, 1025), 2)
        >>> data.vocab[split.targets[0, -1]] in ("<connected>", "<disconnected>")
        True

    Measured cost (one shared CPU core, numpy): about 10-20 ms per image at contour length 14 and 7-10 ms
    at 6 and 9, so the default 5,000 images take about a minute; LRA's 200k would take most of an hour
    (the growth loop is many small numpy calls; batching images would be the next speed-up).
    """

    n_train: int = 4000  # LRA Pathfinder-32 has 160k/20k/20k; a CPU-friendly default (see cost above)
    n_valid: int = 500
    n_test: int = 500
    image_size: int = 32  # pixels per side (sequence length image_size**2 + 1)
    contour_length: int = 14  # paddles per target curve (LRA levels: 6, 9, 14)
    distractor_length: int | None = None  # paddles per distractor; None = contour_length // 3
    num_distractors: int | None = None  # None = 20 // distractor paddles (LRA's rule; 5 at contour 14)
    paddle_length: float = 2.0  # px
    paddle_thickness: float = 0.5  # px
    margin: float = 1.0  # px gap between paddles of a curve and minimum clearance between curves
    padding: float = 1.0  # px border kept empty
    continuity: float = 1.0  # turn weight cos^2(continuity * turn); turns reach 90 / continuity degrees
    seed_distance: float = 7.0  # px between the starts of the two target curves
    marker_radius: float = 1.5  # px
    contrast: float = 1.5  # paddle intensity = covered fraction * contrast (clipped to 1); markers are 1
    levels: int = 256  # intensity tokens (LRA feeds 8-bit pixels, i.e. 256)
    max_tries: int = 50  # retries for a seed, a distractor and a whole image before giving up

    def __post_init__(self) -> None:
        ints = {
            "n_train": 1,
            "n_valid": 0,
            "n_test": 0,
            "image_size": 8,
            "contour_length": 2,
            "levels": 2,
            "max_tries": 1,
        }
        for name, low in ints.items():
            value = getattr(self, name)
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        for name in ("distractor_length", "num_distractors"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be None or an int >= 0, got {value!r}")
        for name in (
            "paddle_length",
            "paddle_thickness",
            "margin",
            "continuity",
            "seed_distance",
            "marker_radius",
            "contrast",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if not 0 <= self.padding < self.image_size / 4:
            raise ValueError(f"padding must be in [0, image_size / 4), got {self.padding!r}")
        room = self.image_size - 2 * self.padding - self.paddle_thickness
        if 2 * self.seed_distance >= room:
            raise ValueError(
                f"seed_distance must be < {room / 2:g} (half the drawable width) for image_size="
                f"{self.image_size}, padding={self.padding}; got {self.seed_distance!r}"
            )
        if self.continuity < 1.0:
            raise ValueError(
                f"continuity must be >= 1 (turns of at most 90 degrees), got {self.continuity!r}"
            )

    @property
    def distractor_paddles(self) -> int:
        return self.contour_length // 3 if self.distractor_length is None else self.distractor_length

    @property
    def n_distractors(self) -> int:
        if self.num_distractors is not None:
            return self.num_distractors
        return 20 // self.distractor_paddles if self.distractor_paddles else 0

    def generate(self, n: int, rng: np.random.Generator) -> list[PathfinderExample]:
        """``n`` examples with exactly balanced labels (one extra 0 if ``n`` is odd), in random order."""
        labels = rng.permutation(np.arange(n) % 2)
        return [generate_example(self, int(label), rng) for label in labels]

    def encode(self, examples: list[PathfinderExample]) -> TaskSplit:
        """inputs (N, S*S + 1): pixel tokens then ``<cls>``; targets: -100 except the class token last."""
        vocab = pathfinder_vocab(self.levels)
        images = np.stack([ex.image for ex in examples]).reshape(len(examples), -1)
        pixels = torch.from_numpy(np.rint(images * (self.levels - 1)).astype(np.int64))
        labels = torch.tensor([ex.label for ex in examples], dtype=torch.long)
        cls = torch.full((len(examples), 1), vocab.index("<cls>"), dtype=torch.long)
        inputs = torch.cat([pixels, cls], dim=1)
        targets = torch.full_like(inputs, IGNORE_INDEX)
        targets[:, -1] = vocab.index("<disconnected>") + labels
        lengths = torch.full((len(examples),), inputs.shape[1], dtype=torch.long)
        return TaskSplit(inputs=inputs, targets=targets, lengths=lengths, meta={"label": labels})

    def _build(self, seed: int) -> TaskData:
        rng = np.random.default_rng(seed)
        sizes = {"train": self.n_train, "valid": self.n_valid, "test": self.n_test}
        splits = {name: self.encode(self.generate(n, rng)) for name, n in sizes.items() if n}
        vocab = pathfinder_vocab(self.levels)
        return TaskData(
            name=self.name,
            vocab=vocab,
            pad_id=vocab.index("<pad>"),
            splits=splits,
            metric="accuracy",
            info={"distractor_length": self.distractor_paddles, "num_distractors": self.n_distractors},
        )


def save_example_grid(path: str | Path, n: int = 16, seed: int = 0, **overrides: object) -> Path:
    """Draw ``n`` examples (4 per row) with their labels to a PNG at ``path``; needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = PathfinderTask(**overrides)  # type: ignore[arg-type]
    examples = cfg.generate(n, np.random.default_rng(seed))
    cols = 4
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, ex in zip(axes.flat, examples, strict=False):
        ax.imshow(ex.image, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_title("1: connected" if ex.label else "0: disconnected", fontsize=9)
    fig.suptitle(f"Pathfinder-{cfg.image_size}, contour length {cfg.contour_length}", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
