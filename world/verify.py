"""Classical verifiers (no learned model): parse an image back into a scene, and score an edit's output.

Parsing: pick the style whose palette explains the pixels best, label every pixel with its nearest palette tone,
take the background as the most common colour, then each other colour's connected regions (after a 3x3 opening that
drops anti-aliased fringes, and leaving out regions that are only a blend of the regions around them: soft edges)
are objects: shape from fill ratio and row profile, size from extent, texture from the
share of shade pixels inside, cell from the centroid.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from scipy import ndimage

from world.scene import COLOURS, POSITIONS, RADIUS, SHADES, SHAPES, SIZES, STYLES, Scene, shape_coverage, styled

NAMES = list(COLOURS)
UNEXPLAINED_DISTANCE = 40.0  # RGB distance beyond which no palette tone explains a pixel
MAX_UNEXPLAINED = 0.02  # share of such pixels (off region borders) a world scene may hold
SOFT_EDGE_MARGIN = 8.0  # how much closer to a blend of its neighbours than to its own colour an edge pixel is
MAX_EDGE_DENSITY = 0.6  # share of label edges in a 5x5 window above which pixels are speckle, not a region's border
# (0.5 flagged 3 of 300 JPEG-encoded renders; 0.6 none, and a patch of noise still)


def _palette(style: str) -> np.ndarray:
    """(16, 3): every colour's base tone, then every colour's shade, under `style`."""
    tones = [styled(COLOURS[n], style) for n in NAMES] + [styled(SHADES[n], style) for n in NAMES]
    return np.array(tones, np.float32)


PALETTES = {style: _palette(style) for style in STYLES}


@dataclass(frozen=True)
class ParsedObject:
    shape: str
    colour: str
    cell: int
    size: str
    texture: str

    def key(self) -> tuple[str, str, int, str, str]:
        return (self.shape, self.colour, self.cell, self.size, self.texture)


@dataclass
class ParsedScene:
    style: str
    background: str
    pattern: str
    objects: list[ParsedObject] = field(default_factory=list)
    unexplained: float = 0.0  # share of pixels no palette tone explains (region borders excepted)
    problems: list[str] = field(default_factory=list)  # why the image is not a world scene

    @property
    def realistic(self) -> bool:
        return not self.problems

    def key(self) -> tuple:
        return (self.style, self.background, self.pattern, tuple(sorted(o.key() for o in self.objects)))

    def object_at(self, cell: int) -> ParsedObject | None:
        return next((o for o in self.objects if o.cell == cell), None)

    def find(self, shape: str, colour: str) -> ParsedObject | None:
        return next((o for o in self.objects if (o.shape, o.colour) == (shape, colour)), None)


def as_array(image) -> np.ndarray:
    """(H, W, 3) float32 in 0..255 from a PIL image, a uint8 array, or a tensor in [-1, 1] (3, H, W)."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), np.float32)
    if hasattr(image, "detach"):  # a torch tensor in [-1, 1], channels first
        return ((image.detach().float().clamp(-1, 1).permute(1, 2, 0).cpu().numpy() + 1) * 127.5).astype(np.float32)
    return np.asarray(image, np.float32)


SHAPE_AREA = {"circle": np.pi, "square": 4.0, "triangle": 2.0, "diamond": 2.0}  # area / r^2


def _coverage(pixels: np.ndarray, zone: np.ndarray, object_tones: np.ndarray, background_tones: np.ndarray):
    """Per pixel of `zone`, the share the object covers: the pixel unmixed between its best pair of object and
    background tones (anti-aliased edges give fractions); pixels neither pair explains count 0."""
    values = pixels[zone]
    best_alpha, best_residual = np.zeros(len(values)), np.full(len(values), np.inf)
    for o in object_tones:
        for b in background_tones:
            direction = o - b
            alpha = np.clip((values - b) @ direction / max(1e-6, direction @ direction), 0, 1)
            residual = np.linalg.norm(values - (b + alpha[:, None] * direction), axis=1)
            better = residual < best_residual
            best_alpha[better], best_residual[better] = alpha[better], residual[better]
    best_alpha[best_residual > UNEXPLAINED_DISTANCE] = 0
    coverage = np.zeros(zone.shape, np.float32)
    coverage[zone] = best_alpha
    return coverage


def _shape(coverage: np.ndarray) -> tuple[str, float]:
    """The shape whose template, sized by the covered area and placed on its centroid, differs least from the
    coverage map; returns it with its half-extent r."""
    area = coverage.sum()
    rows, columns = np.indices(coverage.shape)
    cy, cx = (coverage * rows).sum() / area + 0.5, (coverage * columns).sum() / area + 0.5

    def fit(shape: str) -> tuple[float, float]:
        r = float(np.sqrt(area / SHAPE_AREA[shape]))
        y = cy - r / 3 if shape == "triangle" else cy  # a triangle's centroid sits a third of r below its centre
        return float(np.abs(shape_coverage(shape, cx, y, r, coverage.shape[0]) - coverage).sum()), r

    fits = {shape: fit(shape) for shape in SHAPES}
    shape = min(fits, key=lambda s: fits[s][0])
    return shape, fits[shape][1]


def _segment_residual(values: np.ndarray, tones: np.ndarray) -> np.ndarray:
    """Per value, its distance to the nearest blend of two of the tones (a point on a segment between them)."""
    best = np.full(len(values), np.inf)
    for i in range(len(tones)):
        for j in range(i, len(tones)):
            direction = tones[j] - tones[i]
            alpha = np.clip((values - tones[i]) @ direction / max(1e-6, direction @ direction), 0, 1)
            best = np.minimum(best, np.linalg.norm(values - (tones[i] + alpha[:, None] * direction), axis=1))
    return best


def _soft_edge(pixels: np.ndarray, region: np.ndarray, family: np.ndarray, colour: int, palette: np.ndarray) -> bool:
    """Whether a region is only the soft edge between the regions around it: most of its pixels are explained
    better by a blend of two neighbouring tones than by its own colour, alone or blended with a neighbour (a
    blurred boundary, not an object)."""
    around = ndimage.binary_dilation(region, iterations=2) & ~region
    neighbours = [int(c) for c in np.unique(family[around]) if c != colour]
    if not neighbours:
        return False
    values = pixels[region]
    others = palette[[t for n in neighbours for t in (n, n + len(NAMES))]]
    own = palette[[colour, colour + len(NAMES)]]
    blend = _segment_residual(values, others)
    own_or_its_edge = np.min([_segment_residual(values, own)]
                             + [_segment_residual(values, np.stack([o, t])) for o in own for t in others], axis=0)
    return float(np.mean(blend + SOFT_EDGE_MARGIN < own_or_its_edge)) >= 0.6


def _is_striped(mask_family: np.ndarray, shade: np.ndarray) -> bool:
    interior = ndimage.binary_erosion(mask_family, iterations=1)
    if interior.sum() < 4:
        interior = mask_family
    return shade[interior].mean() > 0.25


def parse_image(image) -> ParsedScene:
    """The scene an image shows, with the reasons it is not a world scene (if any)."""
    pixels = as_array(image)
    height, width = pixels.shape[:2]
    flat = pixels.reshape(-1, 1, 3)
    best = None
    for style, palette in PALETTES.items():
        distance = np.linalg.norm(flat - palette[None], axis=2)
        label, nearest = distance.argmin(axis=1), distance.min(axis=1)
        if best is None or nearest.mean() < best[2].mean():
            best = (style, label, nearest)
    style, label, nearest = best
    family = (label % len(NAMES)).reshape(height, width)
    shade = (label >= len(NAMES)).reshape(height, width)
    counts = np.bincount(family.ravel(), minlength=len(NAMES))
    background = int(counts.argmax())
    parsed = ParsedScene(style, NAMES[background], "striped" if _is_striped(family == background, shade) else "plain")
    cell = width / 3
    min_area = 0.5 * 2 * (RADIUS["small"] * cell) ** 2  # half the smallest object (a small triangle)
    large_above = (RADIUS["small"] + RADIUS["large"]) / 2 * cell  # half-extent between the two sizes
    border = np.zeros((height, width), bool)
    for colour in range(len(NAMES)):
        if colour == background or not counts[colour]:
            continue
        mask = family == colour
        opened = ndimage.binary_opening(mask, structure=np.ones((3, 3)))
        components, count = ndimage.label(opened, structure=np.ones((3, 3)))
        for index in range(1, count + 1):
            core = components == index
            region = ndimage.binary_dilation(core, iterations=1) & mask
            if _soft_edge(pixels, region, family, colour, PALETTES[style]):
                continue
            if region.sum() < min_area:
                if region.sum() >= 4:
                    parsed.problems.append(f"a {NAMES[colour]} fragment of {int(region.sum())} px")
                continue
            zone = ndimage.binary_dilation(region, iterations=1)
            palette = PALETTES[style]
            coverage = _coverage(pixels, zone, palette[[colour, colour + len(NAMES)]],
                                 palette[[background, background + len(NAMES)]])
            if coverage.sum() < min_area / 2:  # the region's pixels are neither its colour nor a blend with the background
                parsed.problems.append(f"a {NAMES[colour]} region of {int(region.sum())} px no object explains")
                continue
            shape, r = _shape(coverage)
            rows, columns = np.nonzero(region)
            row, column = min(2, int(rows.mean() // cell)), min(2, int(columns.mean() // cell))
            parsed.objects.append(ParsedObject(shape, NAMES[colour], row * 3 + column,
                                               "large" if r > large_above else "small",
                                               "striped" if _is_striped(region, shade) else "plain"))
    edges = np.zeros((height, width), bool)
    edges[:, 1:] |= family[:, 1:] != family[:, :-1]
    edges[1:, :] |= family[1:, :] != family[:-1, :]
    # A border excuses the anti-aliased pixels between two regions; where labels change nearly everywhere (noise,
    # speckle) there are no regions to lie between, so nothing is excused.
    speckle = ndimage.uniform_filter(edges.astype(np.float32), size=5) > MAX_EDGE_DENSITY
    border = ndimage.binary_dilation(edges, iterations=1) & ~speckle
    far = nearest.reshape(height, width) > UNEXPLAINED_DISTANCE
    parsed.unexplained = float((far & ~border).mean())
    if parsed.unexplained > MAX_UNEXPLAINED:
        parsed.problems.append(f"{parsed.unexplained:.1%} of pixels match no world colour")
    if counts[background] < 0.3 * height * width:
        parsed.problems.append("no background colour covers 30 % of the image")
    if not 1 <= len(parsed.objects) <= 3:
        parsed.problems.append(f"{len(parsed.objects)} objects")
    for attribute in ("shape", "cell"):
        values = [getattr(o, attribute) for o in parsed.objects]
        if len(set(values)) < len(values):
            parsed.problems.append(f"two objects share a {attribute}")
    return parsed


def psnr(a: np.ndarray, b: np.ndarray, where: np.ndarray | None = None) -> float:
    """PSNR in dB between two images over the pixels `where` is true (all when None); capped at 100."""
    difference = (as_array(a) - as_array(b)) ** 2
    if where is not None:
        difference = difference[where]
    mse = float(difference.mean()) if difference.size else 0.0
    return 100.0 if mse <= 1e-10 else min(100.0, 10 * np.log10(255.0**2 / mse))


def matches_scene(parsed: ParsedScene, scene: Scene) -> bool:
    """Whether the parse equals the scene in everything a caption can say."""
    return parsed.realistic and parsed.key() == scene.key()


def shape_rates(pairs: list[tuple[ParsedScene, Scene]]) -> dict[str, float]:
    """Over every object of the scenes, the share parsed with its shape in its cell, per size
    (`small_shape_match`, `large_shape_match`): the detail that decides most failed parses in this world."""
    hits = {size: [0, 0] for size in SIZES}
    for parsed, scene in pairs:
        for wanted in scene.objects:
            found = parsed.object_at(wanted.cell)
            hits[wanted.size][0] += found is not None and found.shape == wanted.shape
            hits[wanted.size][1] += 1
    return {f"{size}_shape_match": right / max(total, 1) for size, (right, total) in hits.items()}


__all__ = ["ParsedObject", "ParsedScene", "as_array", "matches_scene", "parse_image", "psnr", "shape_rates",
           "POSITIONS"]
