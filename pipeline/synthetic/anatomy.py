"""Synthetic abdominal anatomy for :mod:`pipeline.synthetic.phantom`, drawn in world (RAS, mm) coordinates.

World frame: +x is the patient's right, +y anterior, +z superior; the origin is the body's axial
centre at the level of the pancreatic neck. Every organ is an implicit shape (ellipse, ellipsoid, or a
tube swept as a chain of spheres) evaluated only inside its own voxel bounding box, at the world
position of each voxel centre (``affine @ ijk``), so one anatomy gives the same tissues on any grid.
Random draws never depend on the grid, so the same seed gives the same anatomy in RAS, LPS or oblique
storage. Organs are painted in order; a tissue marked protected is never overwritten.
"""

from __future__ import annotations

import itertools
from enum import IntEnum

import numpy as np
from scipy.interpolate import CubicSpline

__all__ = ["Tissue", "Canvas", "Anatomy", "curve", "resample", "arclength", "rz"]


class Tissue(IntEnum):
    """Tissue ids of the label map that the HU image is rendered from."""

    AIR = 0
    SKIN = 1
    SUBCUT_FAT = 2
    FAT = 3
    MUSCLE = 4
    BONE_CORTEX = 5
    BONE_MARROW = 6
    DISC = 7
    CSF = 8
    LUNG = 9
    LIVER = 10
    GALLBLADDER = 11
    SPLEEN = 12
    KIDNEY_CORTEX = 13
    KIDNEY_MEDULLA = 14
    ARTERY = 15
    VEIN = 16
    BOWEL_WALL = 17
    BOWEL_FLUID = 18
    BOWEL_SOFT = 19
    GAS = 20
    PANCREAS = 21
    TABLE = 22


T = Tissue
_WALL = (T.AIR, T.SKIN, T.SUBCUT_FAT, T.MUSCLE, T.BONE_CORTEX, T.BONE_MARROW, T.DISC, T.CSF, T.TABLE)


def curve(ctrl: list, step: float = 1.0) -> np.ndarray:
    """Dense points (about ``step`` mm apart) of a natural cubic spline through control points."""
    ctrl = np.asarray(ctrl, float)
    t = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(ctrl, axis=0), axis=1))])
    return CubicSpline(t, ctrl, bc_type="natural")(np.linspace(0, t[-1], max(int(t[-1] / step), 2) + 1))


def arclength(points: np.ndarray) -> float:
    return float(np.linalg.norm(np.diff(points, axis=0), axis=1).sum())


def resample(points: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Points evenly spaced by arc length, and their arc-length fraction in [0, 1]."""
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))])
    at = np.linspace(0, s[-1], max(int(np.ceil(s[-1] / step)), 1) + 1)
    return np.stack([np.interp(at, s, points[:, d]) for d in range(3)], 1), at / max(s[-1], 1e-9)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def rz(deg: float) -> np.ndarray:
    """Rotation by ``deg`` degrees about the z axis."""
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


class Canvas:
    """A grid of tissue ids plus its affine; shapes are given in world mm and painted voxel by voxel."""

    def __init__(self, shape: tuple[int, int, int], affine: np.ndarray) -> None:
        self.tissue = np.zeros(shape, np.uint8)
        self.affine = np.asarray(affine, float)
        self._inv = np.linalg.inv(self.affine)
        self.protected = np.zeros(256, bool)

    def protect(self, *tissues: int) -> None:
        self.protected[list(tissues)] = True

    def box(self, lo, hi) -> tuple[slice, ...] | None:
        """Voxel slices covering the world box [lo, hi], or None when it misses the grid."""
        corners = np.array(list(itertools.product(*zip(lo, hi))), float)
        ijk = corners @ self._inv[:3, :3].T + self._inv[:3, 3]
        start = np.maximum(np.floor(ijk.min(0)), 0).astype(int)
        stop = np.minimum(np.ceil(ijk.max(0)) + 1, self.tissue.shape).astype(int)
        return None if np.any(stop <= start) else tuple(slice(a, b) for a, b in zip(start, stop))

    def coords(self, sl: tuple[slice, ...]) -> list[np.ndarray]:
        """World x, y, z (float32) of the voxel centres in ``sl``, as small broadcastable arrays."""
        axes = [
            np.arange(s.start, s.stop, dtype=float).reshape([-1 if d == a else 1 for d in range(3)])
            for a, s in enumerate(sl)
        ]
        out = []
        for r in range(3):
            acc = np.full((1, 1, 1), self.affine[r, 3])
            for c in range(3):
                if self.affine[r, c] != 0.0:  # axis-aligned grids keep 1-D coordinates: cheap
                    acc = acc + self.affine[r, c] * axes[c]
            out.append(acc.astype(np.float32))
        return out

    def paint(self, sl: tuple[slice, ...], mask: np.ndarray, tissue: int) -> None:
        block = self.tissue[sl]
        block[np.broadcast_to(mask, block.shape) & ~self.protected[block]] = tissue

    def cylinder(self, cx, cy, a, b, tissue, b_back=None, z=(-1e4, 1e4), deg=0.0) -> None:
        """Elliptic cylinder along z (semi-axes a in x, b in y; b_back for y below cy)."""
        r = max(a, b, b_back or 0.0)
        sl = self.box((cx - r, cy - r, z[0]), (cx + r, cy + r, z[1]))
        if sl is None:
            return
        x, y, zz = self.coords(sl)
        c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
        u, v = c * (x - cx) + s * (y - cy), -s * (x - cx) + c * (y - cy)
        bb = b if b_back is None else np.where(v > 0, b, b_back)
        self.paint(sl, ((u / a) ** 2 + (v / bb) ** 2 <= 1) & (zz >= z[0]) & (zz <= z[1]), tissue)

    def ellipsoid(self, centre, semi, tissue, rot=None, bumps=(), hole=None, y_above=None) -> None:
        """Ellipsoid (rotation ``rot``) wobbled by cosine ``bumps``, minus an axis-aligned ellipsoid ``hole``."""
        centre, semi = np.asarray(centre, float), np.asarray(semi, float)
        rot = np.eye(3) if rot is None else rot
        ext = np.sqrt(((rot * semi) ** 2).sum(1)) * (1 + sum(b[2] for b in bumps))
        sl = self.box(centre - ext, centre + ext)
        if sl is None:
            return
        d = [w - c for w, c in zip(self.coords(sl), centre)]
        u = [(rot[0, k] * d[0] + rot[1, k] * d[1] + rot[2, k] * d[2]) / semi[k] for k in range(3)]
        lim = 1.0
        for w, phase, amp in bumps:
            lim = lim + amp * np.cos(w[0] * u[0] + w[1] * u[1] + w[2] * u[2] + phase)
        mask = u[0] ** 2 + u[1] ** 2 + u[2] ** 2 <= lim**2
        if hole is not None:
            mask &= sum(((dd + c - hc) / hs) ** 2 for dd, c, hc, hs in zip(d, centre, *hole)) > 1
        if y_above is not None:
            mask &= d[1] > y_above
        self.paint(sl, mask, tissue)

    def spheres(self, centres, radii, tissue, y_above=None) -> None:
        """Union of balls (a swept tube); ``y_above``: only where world y - centre y exceeds it."""
        centres = np.asarray(centres, float)
        radii = np.broadcast_to(np.asarray(radii, float), len(centres))
        # Voxel boxes of all balls at once (a ball spans r * |row of inv| voxels along each axis); skip misses.
        ijk = centres @ self._inv[:3, :3].T + self._inv[:3, 3]
        half = radii[:, None] * np.linalg.norm(self._inv[:3, :3], axis=1)
        start = np.maximum(np.floor(ijk - half), 0).astype(int)
        stop = np.minimum(np.ceil(ijk + half) + 1, self.tissue.shape).astype(int)
        for k in np.flatnonzero(np.all(stop > start, axis=1)):
            sl = tuple(slice(a, b) for a, b in zip(start[k], stop[k]))
            (x, y, z), c = self.coords(sl), centres[k]
            mask = (x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2 <= radii[k] ** 2
            if y_above is not None:
                mask &= y - c[1] > np.broadcast_to(y_above, len(centres))[k]
            self.paint(sl, mask, tissue)

    def hollow(self, centres, radii, wall, content, level=None, bubbles=0, rng=None) -> None:
        """A bowel-like tube: wall, then content (GAS above a fluid level when ``level`` is given)."""
        self.spheres(centres, radii, T.BOWEL_WALL)
        inner = np.maximum(np.asarray(radii) - wall, 1.0)
        self.spheres(centres, inner, content)
        if level is not None:
            self.spheres(centres, inner, T.GAS, y_above=level * inner)
        if bubbles and rng is not None:  # mottled stool: small gas pockets inside the lumen
            idx = rng.integers(0, len(centres), bubbles)
            off = _unit(rng.normal(size=(bubbles, 3))) * inner[idx, None] * rng.uniform(0, 0.6, (bubbles, 1))
            self.spheres(centres[idx] + off, rng.uniform(1.5, 4.0, bubbles), T.GAS)


class Anatomy:
    """One random abdomen: the layout is drawn at construction, organs are drawn by :meth:`render`."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        u = rng.uniform
        self.a, self.b_ant, self.b_post = u(138, 165), u(112, 132), u(85, 98)  # body ~300 x 220 mm
        self.t_fat, self.t_back, self.t_muscle = u(8, 30), u(10, 25), u(6, 13)
        self.cy = -self.b_post + self.t_back + 5 + 32  # spinal canal centre
        self.vy = self.cy + 27  # vertebral body centre
        self.ra, self.ax, self.ay = u(9, 13), -u(10, 20), 0.0
        self.ay = self.vy + 17 + self.ra
        self.ivc = (u(18, 28), self.vy + u(22, 30), u(11, 15), u(8, 11))
        # pancreas: uncinate -> head -> neck -> body -> tail, scaled to a drawn head-to-tail length
        n = np.array([u(0, 12), self.ay + self.ra + u(18, 26), 0.0])
        h = n + [u(25, 38), u(-8, 4), -u(8, 18)]
        ctrl = [h + [-u(8, 14), -u(10, 16), -u(15, 25)], h, n, n + [-u(35, 50), u(-2, 10), u(0, 10)]]
        ctrl.append(np.array([-u(75, 95), self.vy + u(28, 42), u(12, 40)]))
        length = u(120, 180)
        scale = length / arclength(curve(ctrl))
        self.ctrl = [n + scale * (p - n) for p in ctrl]
        self.centre, frac = resample(curve(self.ctrl), 1.0)
        knots = [np.argmin(np.linalg.norm(self.centre - p, axis=1)) for p in self.ctrl]
        self.u_knots = frac[knots]
        r_head = u(10.5, 12.5)
        r_k = [0.8 * r_head, r_head, u(6.5, 8.5), u(7.5, 10.5), u(6, 8.5)]
        wobble = 1 + 0.08 * np.sin(2 * np.pi * (frac * u(2, 4) + u(0, 1)))
        self.radius = np.interp(frac, self.u_knots, r_k) * wobble
        self.frac = frac

    def point(self, t: float) -> np.ndarray:
        """World position of the pancreas centreline at arc-length fraction t (0 uncinate, 1 tail)."""
        return np.array([np.interp(t, self.frac, self.centre[:, d]) for d in range(3)])

    def _offset(self, up: tuple, extra: np.ndarray) -> np.ndarray:
        """Centreline shifted perpendicular to itself towards ``up`` by radius + extra (a vessel bed)."""
        tan = _unit(np.gradient(self.centre, axis=0))
        v = np.asarray(up, float) - (tan @ np.asarray(up, float))[:, None] * tan
        return self.centre + _unit(v) * (self.radius + extra)[:, None]

    def _i_at(self, k: int) -> int:  # index of the centreline point nearest control point k
        return int(np.argmin(np.linalg.norm(self.centre - self.ctrl[k], axis=1)))

    def _r_at(self, k: int) -> float:
        return float(self.radius[self._i_at(k)])

    def _bumps(self, n: int, amp: float) -> list:
        rng = self.rng
        return [(_unit(rng.normal(size=3)) * rng.uniform(2, 4), rng.uniform(0, 6.3), amp) for _ in range(n)]

    def render(self, cv: Canvas) -> None:
        """Paint all tissues onto ``cv``; deterministic given the generator passed at construction."""
        self._wall_and_spine(cv)
        self._chest_and_great_vessels(cv)
        self._solid_organs(cv)
        self._gut(cv)
        self._pancreas(cv)
        self._vessels(cv)

    def _wall_and_spine(self, cv: Canvas) -> None:
        u, a, ba, bp, vy, cy = self.rng.uniform, self.a, self.b_ant, self.b_post, self.vy, self.cy
        cv.cylinder(0, -bp - 12, 230, 5, T.TABLE)  # the scanner table under the back
        layers = (
            (0, T.SKIN),
            (2, T.SUBCUT_FAT),
            (2 + self.t_fat, T.MUSCLE),
            (2 + self.t_fat + self.t_muscle, T.FAT),
        )
        for d, t in layers:
            back = d if d <= 2 else d - self.t_fat + self.t_back  # thinner fat over the back
            cv.cylinder(0, 0, a - d, ba - d, t, b_back=bp - back)
        for s in (-1, 1):
            cv.cylinder(s * 30, cy - 16, 24, 20, T.MUSCLE)  # erector spinae
            psoas, frac = resample(
                curve([(s * 22, vy + 4, 80), (s * 32, vy + 10, -60), (s * 50, vy + 24, -280)]), 3
            )
            cv.spheres(psoas, 5 + 17 * frac, T.MUSCLE)
            cv.cylinder(s * 24, cy + 2, 14, 4.5, T.BONE_CORTEX)  # transverse process
        cv.cylinder(0, vy, 23, 17, T.BONE_CORTEX)
        cv.cylinder(0, vy, 20.5, 14.5, T.BONE_MARROW)
        period = u(30, 36)
        for z0 in np.arange(-400 + u(0, period), 400, period):
            cv.cylinder(0, vy, 23, 17, T.DISC, z=(z0 - 4, z0 + 4))
        cv.cylinder(0, cy, 14, 12, T.BONE_CORTEX)  # vertebral arch
        cv.cylinder(0, cy - 24, 4.5, 16, T.BONE_CORTEX)  # spinous process
        cv.cylinder(0, cy, 8.5, 8, T.CSF)
        z0, period, d = u(-70, -35), u(24, 30), 2 + self.t_fat + self.t_muscle / 2
        for k in range(13):  # ribs: arcs in the body wall, descending towards the front
            th = np.radians(np.linspace(-105, min(40 + 4 * k, 80), 80))
            y = np.where(th > 0, ba - d, bp - d) * np.sin(th)
            for s in (-1, 1):
                z = z0 + k * period - 80 * (th - th[0]) / np.ptp(th)
                pts = resample(np.stack([s * (a - d) * np.cos(th), y, z], 1), 2.0)[0]
                cv.spheres(pts, 4.0, T.BONE_CORTEX)
                cv.spheres(pts, 2.5, T.BONE_MARROW)
        cv.protect(*_WALL)

    def _chest_and_great_vessels(self, cv: Canvas) -> None:
        u, zd = self.rng.uniform, self.rng.uniform(95, 135)
        sl = cv.box((-self.a, -self.b_post, zd - 60), (self.a, self.b_ant, 1e4))
        if sl is not None:  # lung bases above a two-domed diaphragm, deeper at the back
            x, y, z = cv.coords(sl)
            cv.paint(sl, z > zd - 0.004 * (np.abs(x) - 70) ** 2 + 0.2 * y, T.LUNG)
        cv.ellipsoid((-15, self.b_ant * 0.3, zd + u(40, 55)), (u(50, 65), u(40, 50), 55), T.VEIN)  # heart
        cv.cylinder(self.ax, self.ay, self.ra, self.ra, T.ARTERY)
        cv.cylinder(self.ivc[0], self.ivc[1], self.ivc[2], self.ivc[3], T.VEIN)
        cv.protect(T.ARTERY, T.VEIN)

    def _solid_organs(self, cv: Canvas) -> None:
        u = self.rng.uniform
        ia = self.a - 2 - self.t_fat - self.t_muscle
        head, r_head, tail = self.ctrl[1], self._r_at(1), self.ctrl[4]
        c = np.array([ia - u(55, 75), u(-5, 20), u(55, 80)])
        hole = (
            head + [-10, u(0, 10), -u(20, 30)],
            (r_head + u(35, 45), u(45, 60), u(45, 55)),
        )  # duodenum's room
        liver = (u(80, 100), u(85, 105), u(90, 115))
        cv.ellipsoid(c, liver, T.LIVER, rz(u(-10, 10)), self._bumps(3, 0.05), hole)
        gallbladder = (u(12, 16), u(12, 16), u(25, 35))
        cv.ellipsoid(head + [r_head + u(12, 20), u(15, 25), u(25, 40)], gallbladder, T.GALLBLADDER)
        self.spleen = np.array([max(tail[0] - u(18, 28), -ia + 20), tail[1] - u(5, 15), tail[2] + u(10, 25)])
        spleen = (u(18, 24), u(40, 55), u(45, 60))
        cv.ellipsoid(self.spleen, spleen, T.SPLEEN, rz(u(-50, -25)), self._bumps(2, 0.06))
        self.kidneys = []
        for s, z in ((-1, u(-25, 0)), (1, u(-50, -25))):
            c = np.array([s * u(55, 70), self.vy + u(-6, 6), z])
            semi, rot = np.array([u(24, 30), u(17, 22), u(45, 58)]), rz(s * u(20, 35))
            cv.ellipsoid(c, semi, T.KIDNEY_CORTEX, rot)
            cv.ellipsoid(c, semi - 6, T.KIDNEY_MEDULLA, rot)
            cv.ellipsoid(c + [-s * 0.5 * semi[0], 0.1 * semi[1], 0], semi * [0.4, 0.35, 0.45], T.FAT, rot)
            self.kidneys.append((c, semi, s))
        cv.protect(T.LIVER, T.SPLEEN, T.KIDNEY_CORTEX, T.KIDNEY_MEDULLA, T.GALLBLADDER)

    def _gut(self, cv: Canvas) -> None:
        rng, u = self.rng, self.rng.uniform
        unc, head, body = self.ctrl[0], self.ctrl[1], self.ctrl[3]
        rh, rb = self._r_at(1), self._r_at(3)
        ia, iba = self.a - 2 - self.t_fat - self.t_muscle, self.b_ant - 2 - self.t_fat - self.t_muscle
        semi, rot, bumps = np.array([u(35, 50), u(20, 30), u(40, 55)]), rz(u(-35, -10)), self._bumps(2, 0.05)
        c = np.array([body[0] - u(5, 20), body[1] + rb + u(4, 10) + semi[1], body[2] + u(25, 45)])
        cv.ellipsoid(c, semi, T.BOWEL_WALL, rot, bumps)  # stomach, gas anterior (the patient is supine)
        cv.ellipsoid(c, semi - 4.5, rng.choice([T.BOWEL_FLUID, T.BOWEL_SOFT]), rot, bumps)
        cv.ellipsoid(c, semi - 4.5, T.GAS, rot, bumps, y_above=u(-0.2, 0.6) * semi[1])
        rd = u(9, 13)
        lat, zb = head[0] + rh + rd + u(3, 6), unc[2] - 0.8 * rh - rd - u(3, 6)
        dj = body + [10, -5, -rb - rd - 4]
        duo = [c + rot @ [0.9 * semi[0], 0, -0.3 * semi[2]], head + [-5, rh + rd + 8, 22], [lat, head[1] + 8, head[2] + 12],
               [lat, head[1], head[2] - 12], [unc[0] + 5, unc[1] + 4, zb], [self.ax + 10, self.ay + self.ra + rd + 2, zb - 3],
               [self.ax - 15, self.ay + self.ra + rd + 6, zb + 12], dj]  # fmt: skip
        pts, frac = resample(curve(duo), 0.5 * rd)
        cv.hollow(pts, np.interp(frac, [0, 0.15, 1], [u(11, 15), rd, rd]), 2.5, rng.choice([T.BOWEL_FLUID, T.BOWEL_SOFT]),
                  level=u(-0.2, 0.8) if rng.random() < 0.5 else None)  # fmt: skip
        rc = u(16, 24)
        colon = [[0.75 * ia, 0.15 * iba, -260], [0.72 * ia, 0.2 * iba, -60], [0.62 * ia, 0.35 * iba, u(-10, 20)],
                 [0, 0.65 * iba, u(-70, -30)], [-0.62 * ia, 0.3 * iba, u(20, 50)], [-0.74 * ia, 0.15 * iba, -60],
                 [-0.75 * ia, 0.1 * iba, -260]]  # fmt: skip
        pts, frac = resample(curve(colon), 0.5 * rc)
        haustra = rc * (1 + 0.12 * np.sin(frac * arclength(pts) / u(30, 45) * 2 * np.pi))
        cv.hollow(pts, haustra, 3.0, T.BOWEL_SOFT, level=u(-0.3, 0.4), bubbles=40, rng=rng)
        lo, hi = np.array([-(ia - 35), self.ay + self.ra + 8, -230]), np.array([ia - 35, iba - 12, 5])
        for k in range(
            int(rng.integers(6, 11))
        ):  # small-bowel loops, the first from the duodenojejunal flexure
            r = u(8, 13)
            pts = _walk(rng, dj if k == 0 else rng.uniform(lo, hi), lo, hi, u(120, 300), 0.5 * r)
            content, level = rng.choice([T.BOWEL_FLUID, T.BOWEL_SOFT, T.BOWEL_SOFT]), u(-0.3, 0.5)
            cv.hollow(pts, np.full(len(pts), r), 2.5, content, level=level if rng.random() < 0.4 else None)

    def _pancreas(self, cv: Canvas) -> None:
        rng = self.rng
        cv.protected[[T.LIVER, T.SPLEEN, T.KIDNEY_CORTEX, T.KIDNEY_MEDULLA, T.GALLBLADDER]] = False
        rim = np.clip(np.interp(self.frac, np.linspace(0, 1, 7), rng.uniform(-2, 5, 7)), 0, None)
        n = int(rng.integers(20, 50))
        idx = rng.integers(0, len(self.centre), n)
        tan = _unit(np.gradient(self.centre, axis=0))[idx]
        v = rng.normal(size=(n, 3))
        v = _unit(v - (v * tan).sum(1, keepdims=True) * tan)
        lob_c = self.centre[idx] + v * (self.radius[idx] * rng.uniform(0.75, 1.0, n))[:, None]
        lob_r = rng.uniform(2.0, 4.5, n)
        keep = np.r_[0 : len(self.centre) : 2, len(self.centre) - 1]
        cv.spheres(self.centre[keep], self.radius[keep] + rim[keep], T.FAT)  # peripancreatic fat
        cv.spheres(lob_c, lob_r + 1.5, T.FAT)
        cv.spheres(self.centre[keep], self.radius[keep], T.PANCREAS)
        cv.spheres(lob_c, lob_r, T.PANCREAS)
        cv.protect(T.PANCREAS)

    def _vessels(self, cv: Canvas) -> None:
        u, head, i_neck = self.rng.uniform, self.ctrl[1], self._i_at(2)
        rsv, rsmv, rsma, rsa, rpv = u(3.5, 5), u(5, 7), u(3, 4.5), u(2, 3), u(6, 8)

        def tube(pts, r, tissue):
            cv.spheres(resample(np.asarray(pts, float), 0.5 * r)[0], r, tissue)

        sv = self._offset((0, -1, -0.2), 0.8 * rsv)[i_neck:]  # splenic vein along the posterior surface
        tube(np.vstack([sv, self.spleen + [20, 5, -5]]), rsv, T.VEIN)
        conf = sv[0]
        tube(curve([conf, conf + [u(-5, 5), 8, -60], conf + [u(-10, 10), 20, -220]]), rsmv, T.VEIN)  # SMV
        tube(curve([conf, conf + [20, 0, 25], [head[0] + 30, head[1] - 5, 60]]), rpv, T.VEIN)  # portal vein
        top = [self.ax, self.ay + 0.7 * self.ra, conf[2] + u(15, 25)]
        x = conf[0] - rsmv - rsma - 3
        tube(curve([top, [x, self.ay + self.ra + rsma + 4, conf[2] - 5], [x - 3, self.ay + self.ra + 25, -60],
                    [x - 5, self.ay + self.ra + 35, -220]]), rsma, T.ARTERY)  # fmt: skip
        sa = self._offset((0, 0.2, 1), rsa + 1.0)[i_neck:]  # tortuous splenic artery along the upper border
        sa[:, 2] += 3 * np.sin(np.arange(len(sa)) * 2 * np.pi / u(20, 30))
        coeliac = [self.ax + 2, self.ay + self.ra + 12, conf[2] + 35]
        tube(curve([[self.ax, self.ay + 0.7 * self.ra, conf[2] + 35], coeliac, sa[0]]), rsa + 1, T.ARTERY)
        tube(np.vstack([sa, self.spleen + [20, 0, 5]]), rsa, T.ARTERY)
        tube(curve([coeliac, [head[0] + 25, head[1], 45]]), rsa + 0.5, T.ARTERY)  # hepatic artery
        for c, semi, s in self.kidneys:  # renal veins; the left one crosses in front of the aorta
            via = [[self.ax, self.ay + self.ra + 6, c[2] + 3]] if s < 0 else []
            tube(curve([c + [-s * 0.8 * semi[0], 3, 0], *via, [*self.ivc[:2], c[2] + 6]]), u(4, 5.5), T.VEIN)


def _walk(rng: np.random.Generator, start, lo, hi, length: float, step: float) -> np.ndarray:
    """A smooth random walk kept inside the box [lo, hi] (a small-bowel loop's centreline)."""
    d, p, pts = _unit(rng.normal(size=3)), np.array(start, float), [np.array(start, float)]
    for _ in range(int(length / step)):
        d = _unit(d + rng.normal(0, 0.3, 3))
        p = p + step * d
        out = (p < lo) | (p > hi)
        d[out] *= -1
        p = np.clip(p, lo, hi)
        pts.append(p)
    return np.array(pts)
