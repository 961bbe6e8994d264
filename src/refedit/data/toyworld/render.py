"""Procedural scenes and clips with exact ground truth, rendered analytically at any resolution.

World model (top-down, orthographic camera; the frame covers world [pan, pan + 1]^2 at time t):

- a ground plane with a smooth texture (colour gradient, two octaves of periodic value noise, optional
  stripes), lit by one point light at (x, y, height): brightness falls off with distance to the light;
- 1-3 flat objects floating at different heights above the ground (higher = nearer the camera = occludes
  lower ones). Each object is a signed-distance shape x colour x pattern with a centre, angle and radius
  that move linearly in normalised clip time t in [0, 1]. Objects are shaded as shallow domes
  (diffuse + specular from the point light), so their shading depends on where they are; they cast a
  soft shadow (the silhouette projected from the light) on the ground and on lower objects;
- edges, stripes, dots and shadows are anti-aliased analytically from the signed distance (ramps of
  1-1.5 px at the rendering resolution), so a scene renders cleanly at 64, 256 or 512 px.

Determinism: the scene is sampled with numpy ``Generator(PCG64(seed))`` and rendered with element-wise
IEEE operations only (+ - * / sqrt floor abs min max; cos/sin by a fixed polynomial (`cos_sin`), no libm
or SIMD transcendental functions, no BLAS, no reductions over pixels), then quantised to 8-bit levels,
so a seed gives bit-identical pixels on any machine and for any thread count.

Flow: the texture (albedo, pattern, masks) moves exactly with `Clip.flow`; shading and shadows do not,
because they depend on where an object is relative to the light (on purpose: a pasted object must look
wrong where it lands). Render with ``lighting=False`` to get pixels that follow the flow.

Speed: every object and shadow is evaluated on its bounding window only, vectorised over all requested
views (frames / crops) at once; numpy's per-call overhead, not arithmetic, dominates at 64 px.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "hexagon", "cross", "crescent", "ring")
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.10, 0.09),
    "orange": (0.97, 0.50, 0.05),
    "yellow": (0.96, 0.86, 0.12),
    "green": (0.12, 0.68, 0.18),
    "cyan": (0.08, 0.78, 0.86),
    "blue": (0.12, 0.24, 0.92),
    "purple": (0.56, 0.18, 0.82),
    "pink": (0.98, 0.50, 0.74),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
PATTERNS: tuple[str, ...] = ("plain", "striped", "dotted", "checkered")
_COLOUR_RGB = np.array(list(COLOURS.values()), np.float32)

# Per-pixel depth = distance from the camera: ground at Z_FAR, object surfaces in [Z_NEAR, Z_FAR).
Z_NEAR, Z_FAR = 0.4, 1.0
# Bounding radius of each shape in its local units (the object's radius scales local units to world).
_RMAX = {"circle": 0.95, "square": 1.11, "triangle": 1.0, "star": 1.0, "hexagon": 0.95, "cross": 1.0,
         "crescent": 1.0, "ring": 1.0}
_AMBIENT = 0.38
_BUMP = 0.55  # dome steepness of the object normals
_SHADOW = 0.5  # fraction of light a shadow removes


@dataclass(frozen=True)
class ObjectSpec:
    """One object; positions are world coordinates of its centre at clip time 0 and 1."""

    shape: int
    colour: int
    pattern: int
    height: float
    start: tuple[float, float]
    end: tuple[float, float]
    angle: tuple[float, float]
    radius: tuple[float, float]
    pattern_freq: float
    pattern_phase: tuple[float, float]

    @property
    def labels(self) -> dict[str, int]:
        return {"shape": self.shape, "colour": self.colour, "pattern": self.pattern}

    @property
    def attributes(self) -> dict[str, str]:
        return {"shape": SHAPES[self.shape], "colour": COLOUR_NAMES[self.colour],
                "pattern": PATTERNS[self.pattern]}

    def at(self, t: np.ndarray | float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Centre x, centre y, angle, radius at clip times t (float64)."""
        t = np.asarray(t, np.float64)
        cx = self.start[0] + (self.end[0] - self.start[0]) * t
        cy = self.start[1] + (self.end[1] - self.start[1]) * t
        ang = self.angle[0] + (self.angle[1] - self.angle[0]) * t
        rad = self.radius[0] + (self.radius[1] - self.radius[0]) * t
        return cx, cy, ang, rad


@dataclass(frozen=True, eq=False)
class BackgroundSpec:
    colour_a: tuple[float, float, float]
    colour_b: tuple[float, float, float]
    gradient: tuple[float, float]
    noise: tuple[np.ndarray, ...]  # periodic lattices (G, G) in [-1, 1], one per octave
    noise_amp: tuple[float, ...]
    stripes: tuple[float, float, float, float] | None  # (fx, fy, phase, contrast): stripes across (fx, fy)


@dataclass(frozen=True, eq=False)
class SceneSpec:
    """Everything needed to render a clip at any resolution; objects sorted by height (paint order)."""

    seed: int
    objects: tuple[ObjectSpec, ...]
    light: tuple[float, float, float, float]  # x, y, height, spread (world units)
    pan: tuple[tuple[float, float], tuple[float, float]]  # world origin of the frame at t = 0 and t = 1
    background: BackgroundSpec

    def origin(self, t: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        t = np.asarray(t, np.float64)
        (x0, y0), (x1, y1) = self.pan
        return x0 + (x1 - x0) * t, y0 + (y1 - y0) * t

    def without_pan(self) -> SceneSpec:
        return replace(self, pan=((0.0, 0.0), (0.0, 0.0)))

    def without_object(self, index: int) -> SceneSpec:
        return replace(self, objects=tuple(o for i, o in enumerate(self.objects) if i != index))


# ----------------------------------------------------------------------------------------------- sampling
_C = [(-1) ** n / math.factorial(2 * n) for n in range(1, 10)]  # Taylor coefficients of cos
_S = [(-1) ** n / math.factorial(2 * n + 1) for n in range(1, 10)]  # ... and of sin / r


def cos_sin(x: float) -> tuple[float, float]:
    """cos and sin from + - * only (range reduction + Taylor series in Horner form): the same bits on every
    IEEE machine, unlike libm / SIMD implementations that may differ in the last bit."""
    x = float(x)
    q = math.floor(x * (2 / math.pi) + 0.5)
    r = x - q * (math.pi / 2)  # |r| <= pi/4: terms beyond r^18 are below double precision
    z = r * r
    c = 1.0 + z * (_C[0] + z * (_C[1] + z * (_C[2] + z * (_C[3] + z * (_C[4] + z * (_C[5] + z * (_C[6] + z * (
        _C[7] + z * _C[8]))))))))
    s = r + r * z * (_S[0] + z * (_S[1] + z * (_S[2] + z * (_S[3] + z * (_S[4] + z * (_S[5] + z * (_S[6] + z * (
        _S[7] + z * _S[8]))))))))
    return ((c, s), (-s, c), (-c, -s), (s, -c))[q % 4]


def rng_for(seed: int, *salt: int) -> np.random.Generator:
    """The only way this package makes random numbers: PCG64 from an explicit seed (+ salts)."""
    if seed < 0:
        raise ValueError(f"toyworld seeds must be >= 0, got {seed}")
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), *map(int, salt)])))


def sample_spec(seed: int, *, n_objects: int | None = None) -> SceneSpec:
    """The scene (resolution independent) of a seed: the same seed renders the same world at any size.

    Random numbers are drawn in a few fixed-layout blocks (fast, and each field has a fixed place)."""
    rng = rng_for(seed)
    n = int(rng.integers(1, 4)) if n_objects is None else int(n_objects)
    if not 1 <= n <= len(COLOURS):
        raise ValueError(f"n_objects must be in [1, {len(COLOURS)}], got {n}")
    colours = rng.permutation(len(COLOURS))[:n]  # distinct colours: a caption names one object
    levels = rng.permutation(max(4, n))[:n]  # distinct heights: a strict occlusion order
    u = rng.random(20).tolist()  # scene block
    uo = rng.random((n, 18)).tolist()  # one block per object
    noise = (rng.uniform(-1, 1, (4, 4)).astype(np.float32), rng.uniform(-1, 1, (9, 9)).astype(np.float32))

    def lerp(x: float, lo: float, hi: float) -> float:
        return lo + (hi - lo) * x

    pan_len, pan_ang = lerp(u[1], 0.05, 0.18), lerp(u[2], 0, 2 * math.pi)
    pc, ps = cos_sin(pan_ang)
    pan1 = (pan_len * pc, pan_len * ps) if u[0] < 0.5 else (0.0, 0.0)
    step = 0.17 / max(3, n - 1)
    heights = sorted(0.05 + step * int(lv) + 0.02 * b[17] for lv, b in zip(levels, uo))
    objects = []
    for i, b in enumerate(uo):
        r0 = lerp(b[2], 0.10, 0.17)
        a0 = lerp(b[4], 0, 2 * math.pi)
        s0 = (lerp(b[6], 0.2, 0.8), lerp(b[7], 0.2, 0.8))
        if b[10] < 0.85:
            s1 = (lerp(b[8], 0.2, 0.8), lerp(b[9], 0.2, 0.8))
        else:  # (almost) still
            s1 = (s0[0] + lerp(b[11], -0.03, 0.03), s0[1] + lerp(b[12], -0.03, 0.03))
        objects.append(ObjectSpec(
            shape=int(b[0] * len(SHAPES)), colour=int(colours[i]), pattern=int(b[1] * len(PATTERNS)),
            height=heights[i], start=s0, end=(s1[0] + pan1[0], s1[1] + pan1[1]),
            angle=(a0, a0 + lerp(b[5], -1.6, 1.6)), radius=(r0, r0 * lerp(b[3], 0.75, 1.3)),
            pattern_freq=lerp(b[13], 1.4, 1.9), pattern_phase=(b[14], b[15])))
    la, ld = lerp(u[3], 0, 2 * math.pi), lerp(u[4], 0.25, 0.75)
    lc, ls = cos_sin(la)
    light = (0.5 + ld * lc, 0.5 + ld * ls, lerp(u[5], 0.6, 1.0), lerp(u[6], 0.45, 0.75))
    base = [lerp(x, 0.3, 0.75) for x in u[7:10]]
    mean = sum(base) / 3
    base = [mean + (x - mean) * 0.45 for x in base]  # low saturation: objects stand out
    other = [min(max(x + lerp(y, -0.18, 0.18), 0.1), 0.9) for x, y in zip(base, u[10:13])]
    g_ang, g_mag = lerp(u[13], 0, 2 * math.pi), lerp(u[14], 0.2, 0.9)
    stripes = None
    if u[15] < 0.4:
        s_ang, s_freq = lerp(u[16], 0, math.pi), lerp(u[17], 4.0, 9.0)
        sc_, ss_ = cos_sin(s_ang)
        stripes = (s_freq * sc_, s_freq * ss_, u[18], lerp(u[19], 0.05, 0.14))
    bg = BackgroundSpec(colour_a=tuple(base), colour_b=tuple(other),
                        gradient=(g_mag * cos_sin(g_ang)[0], g_mag * cos_sin(g_ang)[1]), noise=noise,
                        noise_amp=(lerp(u[16], 0.15, 0.35), lerp(u[17], 0.05, 0.15)), stripes=stripes)
    return SceneSpec(seed=int(seed), objects=tuple(objects), light=light, pan=((0.0, 0.0), pan1),
                     background=bg)


# ------------------------------------------------------------------------------------------ SDF shapes
def _sdf_local(shape: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Signed distance (local units, < 0 inside) of a unit-sized shape; iq's 2D SDFs, branch-free."""
    if shape == "circle":
        return np.sqrt(x * x + y * y) - 0.95
    if shape == "square":
        dx, dy = np.abs(x) - 0.78, np.abs(y) - 0.78
        ox, oy = np.maximum(dx, 0), np.maximum(dy, 0)
        return np.sqrt(ox * ox + oy * oy) + np.minimum(np.maximum(dx, dy), 0)
    if shape == "triangle":
        k, r = math.sqrt(3.0), 0.86
        px = np.abs(x) - r
        py = -y + r / k  # flip y so the apex points up on screen
        flip = px + k * py > 0
        px, py = np.where(flip, (px - k * py) * 0.5, px), np.where(flip, (-k * px - py) * 0.5, py)
        px = px - np.minimum(np.maximum(px, -2 * r), 0)
        return -np.sqrt(px * px + py * py) * np.sign(py)
    if shape == "star":
        k1x, k1y = 0.809016994375, -0.587785252292
        px, py = np.abs(x), -y
        d = np.maximum(k1x * px + k1y * py, 0)
        px, py = px - 2 * d * k1x, py - 2 * d * k1y
        d = np.maximum(-k1x * px + k1y * py, 0)
        px, py = px + 2 * d * k1x, py - 2 * d * k1y
        px, py = np.abs(px), py - 1.0
        bax, bay = 0.45 * -k1y, 0.45 * k1x - 1.0
        h = _clip01((px * bax + py * bay) * (1.0 / (bax * bax + bay * bay)))
        qx, qy = px - bax * h, py - bay * h
        return np.sqrt(qx * qx + qy * qy) * np.sign(py * bax - px * bay)
    if shape == "hexagon":
        kx, ky, kz, r = -0.866025404, 0.5, 0.577350269, 0.82
        px, py = np.abs(x), np.abs(y)
        d = np.minimum(kx * px + ky * py, 0)
        px, py = px - 2 * d * kx, py - 2 * d * ky
        px, py = px - np.minimum(np.maximum(px, -kz * r), kz * r), py - r
        return np.sqrt(px * px + py * py) * np.sign(py)
    if shape == "cross":
        bx, by = 0.95, 0.32
        px, py = np.abs(x), np.abs(y)
        px, py = np.maximum(px, py), np.minimum(px, py)
        qx, qy = px - bx, py - by
        k = np.maximum(qx, qy)
        wx, wy = np.where(k > 0, qx, by - px), np.where(k > 0, qy, -k)
        wx, wy = np.maximum(wx, 0), np.maximum(wy, 0)
        return np.sign(k) * np.sqrt(wx * wx + wy * wy)
    if shape == "crescent":
        outer = np.sqrt(x * x + y * y) - 1.0
        ix = x - 0.5
        inner = np.sqrt(ix * ix + y * y) - 0.78
        return np.maximum(outer, -inner)
    if shape == "ring":
        return np.abs(np.sqrt(x * x + y * y) - 0.66) - 0.3
    raise ValueError(f"unknown toyworld shape {shape!r} (known: {SHAPES})")


def _tri(a: np.ndarray) -> np.ndarray:
    """Triangle wave, period 1, 0 at integers and 1 at half-integers."""
    return np.abs(a - np.floor(a + 0.5)) * 2


def _smooth01(a: np.ndarray) -> np.ndarray:
    return a * a * (3 - 2 * a)


# ------------------------------------------------------------------------------------------ rendering
@dataclass
class _Views:
    """V views of the world: pixel (i, j) centre = (ox + (j + .5) px, oy + (i + .5) px) at clip time t."""

    t: np.ndarray  # (V,)
    ox: np.ndarray
    oy: np.ndarray
    px: np.ndarray
    height: int
    width: int

    def xs(self, j0: np.ndarray | int, n: int) -> np.ndarray:
        """World x of columns j0 .. j0 + n - 1 of each view, (V, 1, n) float64."""
        j = np.asarray(j0, np.float64).reshape(-1, 1) + np.arange(n) + 0.5
        return (self.ox[:, None] + j * self.px[:, None])[:, None, :]

    def ys(self, i0: np.ndarray | int, n: int) -> np.ndarray:
        i = np.asarray(i0, np.float64).reshape(-1, 1) + np.arange(n) + 0.5
        return (self.oy[:, None] + i * self.px[:, None])[:, :, None]


@dataclass
class Render:
    """Output of rendering V views: 8-bit rgb, per-object amodal coverage, the visible
    owner of each pixel (-1 = ground), per-pixel depth and the shadow darkening of the visible surface."""

    rgb: np.ndarray  # (V, 3, H, W) uint8
    coverage: np.ndarray  # (V, N, H, W) float32 amodal anti-aliased coverage
    owner: np.ndarray  # (V, H, W) int8
    depth: np.ndarray  # (V, H, W) float32 in [Z_NEAR, Z_FAR]
    shadow: np.ndarray  # (V, H, W) float32 in [0, 1)

    def mask(self, obj: int) -> np.ndarray:
        """Visible mask (V, H, W) bool: the object covers >= half the pixel and no nearer object does."""
        return self.owner == obj


def _f32(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, np.float32)


def _window(views: _Views, cx: np.ndarray, cy: np.ndarray, rad: np.ndarray) -> tuple[list[int], list[int], int, int]:
    """Per-view pixel windows (same size for all views) covering a disc of world radius `rad`; size 0 when
    the disc misses every view (plain Python: V is small and numpy's per-call overhead would dominate)."""
    H, W = views.height, views.width
    lo_i, lo_j, hh, ww = [], [], 0, 0
    for r, x, y, ox, oy, px in zip(np.broadcast_to(rad, cx.shape).tolist(), cx.tolist(), cy.tolist(),
                                   views.ox.tolist(), views.oy.tolist(), views.px.tolist()):
        half = r / px + 1.5
        cj, ci = (x - ox) / px - 0.5, (y - oy) / px - 0.5
        j0, j1 = math.floor(cj - half), math.ceil(cj + half) + 1
        i0, i1 = math.floor(ci - half), math.ceil(ci + half) + 1
        ww = max(ww, min(max(j1, 0), W) - min(max(j0, 0), W))
        hh = max(hh, min(max(i1, 0), H) - min(max(i0, 0), H))
        lo_i.append(i0)
        lo_j.append(j0)
    if hh <= 0 or ww <= 0:  # outside every view
        return [], [], 0, 0
    hh, ww = min(hh, H), min(ww, W)
    return [min(max(i, 0), H - hh) for i in lo_i], [min(max(j, 0), W - ww) for j in lo_j], hh, ww


class _ObjState:
    """An object's transform in each view as float32 (V, 1, 1) arrays."""

    def __init__(self, obj: ObjectSpec, t: np.ndarray):
        cx, cy, ang, rad = obj.at(t)
        self.obj, self.shape = obj, SHAPES[obj.shape]
        self.cx, self.cy, self.rad = cx, cy, rad
        cs = np.array([cos_sin(a) for a in np.atleast_1d(ang).tolist()], np.float64).reshape(-1, 2)
        self.cos = _f32(cs[:, 0])[:, None, None]
        self.sin = _f32(cs[:, 1])[:, None, None]
        self.inv_rad = _f32(1.0 / rad)[:, None, None]
        self.rmax = _RMAX[self.shape]

    def local(self, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Local coordinates u = R(-angle) (x - c) / radius of world columns xs (V,1,w) and rows ys (V,h,1)."""
        dx = _f32(xs - self.cx[:, None, None]) * self.inv_rad
        dy = _f32(ys - self.cy[:, None, None]) * self.inv_rad
        return self.cos * dx + self.sin * dy, self.cos * dy - self.sin * dx

    def sdf(self, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Signed distance in local units plus the local coordinates."""
        ux, uy = self.local(xs, ys)
        return _sdf_local(self.shape, ux, uy), ux, uy


def _pattern(obj: ObjectSpec, ux: np.ndarray, uy: np.ndarray, px_local: np.ndarray) -> np.ndarray | None:
    """Secondary-tone weight in [0, 1] of the object's pattern (None for plain); about 1 px anti-aliasing."""
    name = PATTERNS[obj.pattern]
    if name == "plain":
        return None
    f = obj.pattern_freq
    gain = np.minimum(1.0 / (1.5 * 2 * f * px_local), 50.0)
    if name == "striped":
        return _clip01((_tri(ux * f + obj.pattern_phase[0]) - 0.5) * gain + 0.5)
    if name == "checkered":
        sx = _clip01((_tri(ux * f + obj.pattern_phase[0]) - 0.5) * gain + 0.5)
        sy = _clip01((_tri(uy * f + obj.pattern_phase[1]) - 0.5) * gain + 0.5)
        return sx + sy - 2 * sx * sy
    if name == "dotted":
        fx = ux * f + obj.pattern_phase[0]
        fy = uy * f + obj.pattern_phase[1]
        fx = fx - np.floor(fx) - 0.5
        fy = fy - np.floor(fy) - 0.5
        r = np.sqrt(fx * fx + fy * fy)
        return _clip01((0.3 - r) / (1.5 * f * px_local) + 0.5)
    raise ValueError(f"unknown toyworld pattern {name!r} (known: {PATTERNS})")


def _clip01(a: np.ndarray) -> np.ndarray:
    return np.minimum(np.maximum(a, 0), 1)


def _noise(lattice: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Periodic (period 1) smooth value noise from row gathers only. xs (V,1,W), ys (V,H,1) -> (V,H,W)."""
    g = lattice.shape[0]
    fx = xs[:, 0, :] * g
    ix = np.floor(fx)
    wx = _f32(_smooth01(fx - ix))  # (V, W)
    ix = ix.astype(np.int64) % g
    cols = lattice[:, ix] * (1 - wx) + lattice[:, (ix + 1) % g] * wx  # (G, V, W): lattice rows along x
    fy = ys[:, :, 0] * g
    iy = np.floor(fy)
    wy = _f32(_smooth01(fy - iy))[:, :, None]  # (V, H, 1)
    iy = iy.astype(np.int64) % g
    v = np.arange(len(iy))[:, None]
    return cols[iy, v] * (1 - wy) + cols[(iy + 1) % g, v] * wy


def _irradiance(spec: SceneSpec, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    lx, ly, _, spread = spec.light
    dx = _f32((xs - lx) / spread)
    dy = _f32((ys - ly) / spread)
    return 1.0 / (1.0 + dx * dx + dy * dy)


def _shadow_cov(caster: _ObjState, xs: np.ndarray, ys: np.ndarray, light: tuple[float, ...], k: float,
                pen: float, px: np.ndarray) -> np.ndarray:
    """Soft coverage of the caster's shadow on a plane where the light's projection scales it by k."""
    lx, ly = light[0], light[1]
    d = caster.sdf(lx + (xs - lx) * (1.0 / k), ly + (ys - ly) * (1.0 / k))[0]
    return _clip01(0.5 - d * _f32(caster.rad * k / (pen + px))[:, None, None])


def _ground_planes(spec: SceneSpec, xs: np.ndarray, ys: np.ndarray, lighting: bool) -> np.ndarray:
    """Lit ground colour (V, 3, H, W) at world columns xs (V,1,W) and rows ys (V,H,1), without shadows."""
    bg = spec.background
    m = _f32(0.5 + 0.5 * bg.gradient[0] * (xs - 0.5)) + _f32(0.5 * bg.gradient[1] * (ys - 0.5))
    for lat, amp in zip(bg.noise, bg.noise_amp):
        m = m + _noise(lat, xs, ys) * amp
    m = _clip01(m)
    bright = None
    if bg.stripes is not None:
        sfx, sfy, sph, contrast = bg.stripes
        bright = 1 - contrast * _smooth01(_tri(_f32(xs * sfx + sph) + _f32(ys * sfy)))
    if lighting:
        light = _AMBIENT + (1.3 - _AMBIENT) * _irradiance(spec, xs, ys)
        bright = light if bright is None else bright * light
    ca = np.array(bg.colour_a, np.float32)[:, None, None]
    cb = np.array(bg.colour_b, np.float32)[:, None, None]
    out = ca + m[:, None] * (cb - ca)  # (V, 3, H, W)
    if bright is not None:
        out *= bright[:, None]
    return out


def _ground(spec: SceneSpec, views: _Views, lighting: bool) -> np.ndarray:
    """Ground colour of every view. Views whose pixel grids coincide up to whole-pixel shifts (the frames
    of a clip: the pan is snapped to whole pixels) are cut from one shared canvas: same values, less work."""
    V, H, W = len(views.t), views.height, views.width
    px = views.px[0]
    di, dj = (views.oy - views.oy[0]) / px, (views.ox - views.ox[0]) / px
    ri, rj = np.round(di), np.round(dj)
    shared = V > 1 and bool(np.all(views.px == px) and np.all(np.abs(di - ri) < 1e-6) and
                            np.all(np.abs(dj - rj) < 1e-6))
    if not shared:
        return _ground_planes(spec, views.xs(0, W), views.ys(0, H), lighting)
    ri, rj = ri.astype(np.int64), rj.astype(np.int64)
    i_min, j_min = int(ri.min()), int(rj.min())
    ch, cw = H + int(ri.max()) - i_min, W + int(rj.max()) - j_min
    # canvas pixel (i, j) = pixel (i + i_min, j + j_min) of view 0, computed exactly like the views' pixels
    one = _Views(views.t[:1], views.ox[:1], views.oy[:1], views.px[:1], ch, cw)
    canvas = _ground_planes(spec, one.xs(j_min, cw), one.ys(i_min, ch), lighting)[0]
    out = np.empty((V, 3, H, W), np.float32)
    for v in range(V):
        i, j = ri[v] - i_min, rj[v] - j_min
        out[v] = canvas[:, i:i + H, j:j + W]
    return out


def render_views(spec: SceneSpec, t: Sequence[float] | np.ndarray, origin: np.ndarray,
                 px: Sequence[float] | np.ndarray | float, height: int, width: int, *,
                 lighting: bool = True) -> Render:
    """Render V views of the scene: view v shows world (origin[v] + pixel * px[v]) at clip time t[v].

    `lighting=False` renders albedo only (no shading, no shadows): the texture then moves exactly with
    the flow, which is what the flow tests compare."""
    t = np.asarray(t, np.float64).reshape(-1)
    origin = np.asarray(origin, np.float64).reshape(-1, 2)
    px = np.broadcast_to(np.asarray(px, np.float64), t.shape).copy()
    views = _Views(t, origin[:, 0].copy(), origin[:, 1].copy(), px, int(height), int(width))
    V, H, W, N = len(t), views.height, views.width, len(spec.objects)
    lx, ly, lh, _ = spec.light

    # ---- ground: texture and light do not depend on time, so views on one pixel lattice share one canvas
    states = [_ObjState(o, t) for o in spec.objects]
    rgb = _ground(spec, views, lighting)  # (V, 3, H, W)
    shadow = np.zeros((V, H, W), np.float32)
    if lighting:
        ground = np.ones((V, H, W), np.float32)
        for st in states:  # ground shadows: the silhouette projected from the light, scaled by k
            k = lh / (lh - st.obj.height)
            pen = 0.004 + 0.09 * st.obj.height  # penumbra grows with the height of the caster
            gx, gy = lx + (st.cx - lx) * k, ly + (st.cy - ly) * k
            i0, j0, hh, ww = _window(views, gx, gy, st.rmax * st.rad * k + pen)
            if not hh:
                continue
            f = 1 - _SHADOW * _shadow_cov(st, views.xs(j0, ww), views.ys(i0, hh), spec.light, k, pen, px)
            for v, (i, j) in enumerate(zip(i0, j0)):
                ground[v, i:i + hh, j:j + ww] *= f[v]
        rgb *= ground[:, None]
        shadow = np.subtract(1, ground, out=ground)

    # ---- objects, lowest first
    coverage = np.zeros((V, N, H, W), np.float32)
    owner = np.full((V, H, W), -1, np.int8)
    depth = np.full((V, H, W), Z_FAR, np.float32)
    for o, st in enumerate(states):
        obj = st.obj
        i0, j0, hh, ww = _window(views, st.cx, st.cy, st.rmax * st.rad)
        if not hh:
            continue
        wxs, wys = views.xs(j0, ww), views.ys(i0, hh)
        d, ux, uy = st.sdf(wxs, wys)
        px_local = _f32(px / st.rad)[:, None, None]
        cov = _clip01(0.5 - d * _f32(st.rad / px)[:, None, None])
        base = _COLOUR_RGB[obj.colour][None, :, None, None]
        pat = _pattern(obj, ux, uy, px_local)
        col = base if pat is None else base + pat[:, None] * (base * -0.7 + 0.62)  # second tone: pastel
        wshadow = None
        if lighting:
            # dome normal n = (bump * (x - c) / r, 1); light vector l = L - (x, y, height); camera above
            bx = _f32((wxs - st.cx[:, None, None]) * (_BUMP / st.rad[:, None, None]))
            by = _f32((wys - st.cy[:, None, None]) * (_BUMP / st.rad[:, None, None]))
            lxv, lyv = _f32(lx - wxs), _f32(ly - wys)
            lz = lh - obj.height
            ll = (lxv * lxv + lz * lz) + lyv * lyv
            diff = np.maximum((bx * lxv + lz) + by * lyv, 0) / np.sqrt(ll * ((bx * bx + 1.0) + by * by))
            spread2 = spec.light[3] * spec.light[3]
            irr = spread2 / (ll + (spread2 - lz * lz))  # = 1 / (1 + |(x, y) - L_xy|^2 / spread^2)
            sp = diff * diff
            sp *= sp
            sp *= sp
            sp *= sp  # diff^16: a highlight where the dome faces the light
            light = (diff * irr) * (1.45 - _AMBIENT) + _AMBIENT
            sp *= irr
            sp *= 0.4
            for sc in states[o + 1:]:  # shadows of higher objects on this one
                k = (lh - obj.height) / (lh - sc.obj.height)
                pen = 0.004 + 0.09 * (sc.obj.height - obj.height)
                gx, gy = lx + (sc.cx - lx) * k - st.cx, ly + (sc.cy - ly) * k - st.cy
                reach = (sc.rmax * sc.rad * k + pen) + st.rmax * st.rad
                if np.all(gx * gx + gy * gy > reach * reach):
                    continue  # the shadow misses this object in every view
                f = 1 - _SHADOW * _shadow_cov(sc, wxs, wys, spec.light, k, pen, px)
                light *= f
                sp *= f
                wshadow = 1 - f if wshadow is None else 1 - (1 - wshadow) * f
            col = col * light[:, None] + sp[:, None]
        colcov = col * cov[:, None]  # (V, 3, hh, ww)
        keep = 1 - cov
        inside = cov >= 0.5
        zwin = (1.0 - 1.5 * obj.height) - 0.05 * _clip01(1 - (ux * ux + uy * uy))  # shallow dome
        if lighting and wshadow is None:
            wshadow = np.zeros_like(cov)
        # per-view slices: much cheaper than fancy indexing for small windows
        for v, (i, j) in enumerate(zip(i0, j0)):
            sl = (v, slice(i, i + hh), slice(j, j + ww))
            win = rgb[v, :, i:i + hh, j:j + ww]
            win *= keep[v]
            win += colcov[v]
            coverage[v, o, i:i + hh, j:j + ww] = cov[v]
            np.copyto(owner[sl], o, where=inside[v])
            np.copyto(depth[sl], zwin[v], where=inside[v])
            if wshadow is not None:
                np.copyto(shadow[sl], wshadow[v], where=inside[v])
    # in place: fresh large temporaries cost page faults that dominate at small sizes
    np.minimum(rgb, 1, out=rgb)  # every term is >= 0 by construction
    rgb *= 255
    rgb += 0.5
    return Render(rgb=rgb.astype(np.uint8), coverage=coverage, owner=owner, depth=depth, shadow=shadow)


# ---------------------------------------------------------------------------------------------- clips
def frame_times(frames: int) -> np.ndarray:
    """Normalised clip time of each frame: motion over a clip is the same whatever its length."""
    if frames < 1:
        raise ValueError(f"a toyworld clip needs frames >= 1, got {frames}")
    return np.linspace(0.0, 1.0, frames) if frames > 1 else np.zeros(1)


def frame_origin(spec: SceneSpec, t: np.ndarray | float, size: int) -> tuple[np.ndarray, np.ndarray]:
    """World position of a frame's top-left corner: the camera pan snapped to whole pixels (the ground of
    all frames is then cut from one canvas, and its flow is a whole number of pixels)."""
    ox, oy = spec.origin(t)
    return np.round(ox * size) / size, np.round(oy * size) / size


def boxes_of(masks: np.ndarray) -> np.ndarray:
    """Tight boxes [x0, y0, x1, y1) (exclusive ends, pixels) of boolean masks (..., H, W); empty -> zeros."""
    rows, cols = masks.any(-1), masks.any(-2)
    H, W = masks.shape[-2:]
    y0 = np.where(rows.any(-1), rows.argmax(-1), 0)
    y1 = np.where(rows.any(-1), H - rows[..., ::-1].argmax(-1), 0)
    x0 = np.where(cols.any(-1), cols.argmax(-1), 0)
    x1 = np.where(cols.any(-1), W - cols[..., ::-1].argmax(-1), 0)
    return np.stack([x0, y0, x1, y1], -1).astype(np.int32)


@dataclass
class Clip:
    """A rendered clip (or a subset of its frames). Arrays are indexed by position in `frame_ids`; methods
    take clip frame indices."""

    spec: SceneSpec
    size: int
    num_frames: int
    frame_ids: tuple[int, ...]
    times: np.ndarray  # (F,)
    render: Render
    lighting: bool = True

    @property
    def rgb(self) -> np.ndarray:
        """(F, 3, H, W) float32 in [0, 1] (8-bit levels)."""
        return self.render.rgb.astype(np.float32) * np.float32(1 / 255)

    @property
    def rgb_u8(self) -> np.ndarray:
        """(F, 3, H, W) uint8, the rendered pixels."""
        return self.render.rgb

    @cached_property
    def masks(self) -> np.ndarray:
        """(F, N, H, W) bool visible masks (they partition the objects' pixels; the rest is ground)."""
        n = len(self.spec.objects)
        return self.render.owner[:, None] == np.arange(n, dtype=np.int8)[None, :, None, None]

    @property
    def amodal_masks(self) -> np.ndarray:
        """(F, N, H, W) bool: the whole object, occluded parts included."""
        return self.render.coverage >= 0.5

    @cached_property
    def boxes(self) -> np.ndarray:
        """(F, N, 4) int32 tight boxes [x0, y0, x1, y1) of the visible masks (zeros if not visible)."""
        return boxes_of(self.masks)

    @property
    def depth(self) -> np.ndarray:
        """(F, H, W) float32 distance from the camera in [Z_NEAR, Z_FAR] (ground = Z_FAR)."""
        return self.render.depth

    @property
    def owner(self) -> np.ndarray:
        return self.render.owner

    @property
    def order(self) -> list[int]:
        """Occlusion order: object indices from the farthest to the nearest (= index order)."""
        return list(range(len(self.spec.objects)))

    def index(self, frame: int) -> int:
        try:
            return self.frame_ids.index(frame)
        except ValueError:
            raise IndexError(f"frame {frame} was not rendered (rendered: {self.frame_ids})") from None

    def flow(self, a: int, b: int) -> np.ndarray:
        """Exact forward flow (2, H, W) float32 (dx, dy in pixels) from frame a to frame b: the pixel (x, y)
        of frame a shows the surface point that is at (x + dx, y + dy) in frame b (whether visible there
        or not). Computed analytically from each object's similarity transform; ground moves with the pan."""
        ia = self.index(a)
        tb = frame_times(self.num_frames)[b]
        ta = self.times[ia]
        H = W = self.size
        px = 1.0 / self.size
        oax, oay = frame_origin(self.spec, ta, self.size)
        obx, oby = frame_origin(self.spec, tb, self.size)
        xs = oax + (np.arange(W) + 0.5) * px
        ys = oay + (np.arange(H) + 0.5) * px
        fx = np.full((H, W), (oax - obx) / px)
        fy = np.full((H, W), (oay - oby) / px)
        owner = self.render.owner[ia]
        for o, obj in enumerate(self.spec.objects):
            sel = owner == o
            if not sel.any():
                continue
            cax, cay, aa, ra = obj.at(ta)
            cbx, cby, ab, rb = obj.at(tb)
            k, (c, s) = rb / ra, cos_sin(ab - aa)
            X = np.broadcast_to(xs[None, :] - cax, (H, W))[sel]
            Y = np.broadcast_to(ys[:, None] - cay, (H, W))[sel]
            x2 = cbx + k * (c * X - s * Y)
            y2 = cby + k * (s * X + c * Y)
            fx[sel] = (x2 - obx) / px - (X + cax - oax) / px
            fy[sel] = (y2 - oby) / px - (Y + cay - oay) / px
        return np.stack([fx, fy]).astype(np.float32)

    def flow_next(self) -> np.ndarray:
        """(F-1, 2, H, W) forward flow from each rendered frame to the next clip frame."""
        return np.stack([self.flow(f, f + 1) for f in self.frame_ids if f + 1 < self.num_frames])

    def captions(self, a: int = 0, b: int | None = None) -> list[str]:
        """One motion caption per object between frames a and b (default: the whole clip)."""
        b = self.num_frames - 1 if b is None else b
        t = frame_times(self.num_frames)
        return [motion_caption(self.spec, o, t[a], t[b]) for o in range(len(self.spec.objects))]

    @property
    def labels(self) -> list[dict[str, int]]:
        return [o.labels for o in self.spec.objects]


def render_clip(seed: int | SceneSpec, size: int = 64, frames: int = 8, *, which: Sequence[int] | None = None,
                lighting: bool = True) -> Clip:
    """Render frames `which` (default all) of the F-frame clip of a seed (or a spec) at size x size px."""
    if size < 8:
        raise ValueError(f"toyworld size must be >= 8 px, got {size}")
    spec = seed if isinstance(seed, SceneSpec) else sample_spec(seed)
    ids = tuple(range(frames)) if which is None else tuple(int(f) for f in which)
    for f in ids:
        if not 0 <= f < frames:
            raise IndexError(f"frame {f} out of range for a clip of {frames} frames")
    t = frame_times(frames)[list(ids)]
    ox, oy = frame_origin(spec, t, size)
    r = render_views(spec, t, np.stack([ox, oy], -1), 1.0 / size, size, size, lighting=lighting)
    return Clip(spec=spec, size=size, num_frames=frames, frame_ids=ids, times=t, render=r, lighting=lighting)


def render_scene(seed: int | SceneSpec, size: int = 64, *, lighting: bool = True) -> Clip:
    """A single scene = frame 0 of the seed's clip (a one-frame Clip)."""
    return render_clip(seed, size, frames=1, lighting=lighting)


# ------------------------------------------------------------------------------------------- captions
def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def object_caption(obj: ObjectSpec) -> str:
    """'a red striped star' ('a plain red star' for the plain pattern)."""
    a = obj.attributes
    words = [a["colour"], a["pattern"], a["shape"]] if a["pattern"] != "plain" else \
        ["plain", a["colour"], a["shape"]]
    return f"{_article(words[0])} {' '.join(words)}"


def visible_objects(clip: Clip, frame: int = 0, min_pixels: int = 12, min_fraction: float = 0.3) -> list[int]:
    """Objects that a viewer of frame `frame` can name: at least `min_pixels` visible pixels and `min_fraction`
    of the whole object visible (not mostly hidden or outside the frame), the most visible first."""
    i = clip.index(frame)
    vis = clip.masks[i].sum((-1, -2))
    whole = clip.amodal_masks[i].sum((-1, -2))
    keep = [o for o in range(len(clip.spec.objects)) if vis[o] >= min_pixels and vis[o] >= min_fraction * whole[o]]
    return sorted(keep, key=lambda o: (-int(vis[o]), o))


def scene_caption(clip: Clip, frame: int = 0) -> str:
    """What the frame shows, as a text-to-image caption: 'a red striped star and a plain blue ring' (visible
    objects, the most visible first); '' for a frame with no nameable object."""
    caps = [object_caption(clip.spec.objects[o]) for o in visible_objects(clip, frame)]
    return caps[0] if len(caps) <= 1 else ", ".join(caps[:-1]) + " and " + caps[-1]


def motion_words(spec: SceneSpec, index: int, t0: float, t1: float) -> list[str]:
    """How the object moves on screen between clip times t0 and t1: 'moving left', 'growing', ..."""
    obj = spec.objects[index]
    ax, ay, aa, ra = obj.at(t0)
    bx, by, ab, rb = obj.at(t1)
    ox0, oy0 = spec.origin(t0)
    ox1, oy1 = spec.origin(t1)
    dx, dy = float((bx - ox1) - (ax - ox0)), float((by - oy1) - (ay - oy0))
    words = []
    if dx * dx + dy * dy >= 0.06 * 0.06:
        horiz = "left" if dx < 0 else "right"
        vert = "up" if dy < 0 else "down"
        if abs(dx) >= 2.4 * abs(dy):
            words.append(f"moving {horiz}")
        elif abs(dy) >= 2.4 * abs(dx):
            words.append(f"moving {vert}")
        else:
            words.append(f"moving {vert} and {horiz}")
    if rb / ra >= 1.15:
        words.append("growing")
    elif rb / ra <= 1 / 1.15:
        words.append("shrinking")
    if abs(float(ab - aa)) >= 0.8:
        words.append("spinning")
    return words or ["staying still"]


def motion_caption(spec: SceneSpec, index: int, t0: float, t1: float) -> str:
    """'a red striped star moving left', 'a plain blue ring moving up and right, growing and spinning'."""
    words = motion_words(spec, index, t0, t1)
    tail = words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
    return f"{object_caption(spec.objects[index])} {tail}"


def vocabulary() -> list[str]:
    """Every word a toyworld caption can contain (for tokenizers)."""
    words = {"a", "an", "moving", "and", "left", "right", "up", "down", "growing", "shrinking", "spinning",
             "staying", "still", *SHAPES, *COLOUR_NAMES, *PATTERNS}
    return sorted(words)
