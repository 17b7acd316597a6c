"""A procedural scene world with computable truth: scenes, their anti-aliased renders, captions and caption parsing.

A scene is a background (a colour, plain or striped), a global style (plain or pastel) and 1-3 objects, each with a
shape, colour, texture, size and one of nine named positions (a 3x3 grid). Objects in one scene have distinct shapes
and distinct colours, none the background's, so "the red circle" always names one object.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

from schemas.errors import ConfigError

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 45, 45), "green": (45, 160, 65), "blue": (45, 85, 210), "yellow": (240, 205, 50),
    "purple": (135, 65, 175), "orange": (240, 135, 40), "white": (240, 240, 240), "black": (30, 30, 30),
}
SHADES: dict[str, tuple[int, int, int]] = {  # the second tone of a striped texture or background
    **{name: tuple(round(0.6 * c) for c in rgb) for name, rgb in COLOURS.items()}, "black": (95, 95, 95)}
SHAPES = ("circle", "square", "triangle", "diamond")
TEXTURES = ("plain", "striped")
SIZES = ("small", "large")
STYLES = ("plain", "pastel")
POSITIONS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
RADIUS = {"small": 0.26, "large": 0.40}  # half the object's extent, in grid cells
SUPERSAMPLE = 4
STRIPE_PERIOD = {"object": 4, "background": 8}  # pixels at the output size; half of each period is the shade


def styled(rgb: tuple[int, ...], style: str) -> tuple[int, int, int]:
    """A colour under a style: pastel mixes it halfway to white."""
    if style == "pastel":
        return tuple(round(c + (255 - c) * 0.5) for c in rgb)
    return tuple(rgb)


@dataclass(frozen=True)
class WorldObject:
    shape: str
    colour: str
    cell: int  # index into POSITIONS
    size: str = "large"
    texture: str = "plain"
    dx: float = 0.0  # jitter inside the cell, in [-1, 1] of the free room
    dy: float = 0.0

    @property
    def name(self) -> str:
        """How instructions refer to it: colour and shape are unique in a scene."""
        return f"the {self.colour} {self.shape}"

    def key(self) -> tuple[str, str, int, str, str]:
        """What a caption or a parse can tell (no jitter)."""
        return (self.shape, self.colour, self.cell, self.size, self.texture)


@dataclass(frozen=True)
class Scene:
    background: str
    objects: tuple[WorldObject, ...]
    pattern: str = "plain"  # of the background
    style: str = "plain"
    size: int = 64

    def __post_init__(self):
        check_scene(self)

    def key(self) -> tuple:
        return (self.style, self.background, self.pattern, tuple(sorted(o.key() for o in self.objects)))

    def object_at(self, cell: int) -> WorldObject | None:
        return next((o for o in self.objects if o.cell == cell), None)


def check_scene(scene: Scene) -> None:
    """A one-line error for a scene that cannot be rendered."""
    def one_of(value, known, what):
        if value not in known:
            raise ConfigError(f"unknown {what} {value!r}; known: {', '.join(known)}")

    one_of(scene.background, COLOURS, "colour")
    one_of(scene.pattern, TEXTURES, "background pattern")
    one_of(scene.style, STYLES, "style")
    if scene.size < 48 or scene.size % 16:
        raise ConfigError(f"scene size must be a multiple of 16 and at least 48, not {scene.size}")
    if not 1 <= len(scene.objects) <= 3:
        raise ConfigError(f"a scene holds 1 to 3 objects, not {len(scene.objects)}")
    for o in scene.objects:
        one_of(o.shape, SHAPES, "shape")
        one_of(o.colour, COLOURS, "colour")
        one_of(o.size, SIZES, "size")
        one_of(o.texture, TEXTURES, "texture")
        if not 0 <= o.cell < len(POSITIONS):
            raise ConfigError(f"unknown cell {o.cell}; cells are 0-{len(POSITIONS) - 1}")
    for attribute in ("shape", "colour", "cell"):
        values = [getattr(o, attribute) for o in scene.objects]
        if len(set(values)) < len(values):
            raise ConfigError(f"two objects share a {attribute} in one scene")
    if scene.background in {o.colour for o in scene.objects}:
        raise ConfigError(f"an object has the background's colour ({scene.background})")


# -- sampling ----------------------------------------------------------------------------------------------------------
def random_object(rng: random.Random, *, shape: str, colour: str, cell: int) -> WorldObject:
    return WorldObject(shape, colour, cell, size=rng.choice(SIZES), texture=rng.choice(TEXTURES),
                       dx=rng.uniform(-1, 1), dy=rng.uniform(-1, 1))


def random_scene(rng: random.Random, *, size: int = 64, max_objects: int = 3, pastel_prob: float = 0.2) -> Scene:
    """A scene with 1..max_objects objects in distinct cells, distinct shapes and colours."""
    colours = rng.sample(list(COLOURS), 1 + max_objects)
    count = rng.randint(1, max_objects)
    shapes, cells = rng.sample(SHAPES, count), rng.sample(range(len(POSITIONS)), count)
    objects = tuple(random_object(rng, shape=s, colour=c, cell=k) for s, c, k in zip(shapes, colours[1:], cells))
    return Scene(colours[0], objects, pattern=rng.choice(TEXTURES),
                 style="pastel" if rng.random() < pastel_prob else "plain", size=size)


def object_centric_scene(rng: random.Random, *, size: int = 64) -> Scene:
    """One large object in the centre on a plain background: what customization takes as its reference."""
    background, colour = rng.sample(list(COLOURS), 2)
    obj = WorldObject(rng.choice(SHAPES), colour, POSITIONS.index("center"), size="large",
                      texture=rng.choice(TEXTURES))
    return Scene(background, (obj,), size=size)


# -- rendering ---------------------------------------------------------------------------------------------------------
def _geometry(obj: WorldObject, size: int) -> tuple[float, float, float]:
    """Centre (x, y) and half-extent r of an object, in output pixels."""
    cell = size / 3
    r = RADIUS[obj.size] * cell
    room = cell / 2 - r - 1
    row, column = divmod(obj.cell, 3)
    return (column + 0.5) * cell + obj.dx * room, (row + 0.5) * cell + obj.dy * room, r


def _outline(obj: WorldObject, size: int, scale: float) -> tuple[str, list[tuple[float, float]]]:
    return shape_outline(obj.shape, *(v * scale for v in _geometry(obj, size)))


def shape_outline(shape: str, x: float, y: float, r: float) -> tuple[str, list[tuple[float, float]]]:
    """The PIL drawing call and points of a shape centred at (x, y) with half-extent r."""
    if shape == "circle":
        return "ellipse", [(x - r, y - r), (x + r, y + r)]
    if shape == "square":
        return "polygon", [(x - r, y - r), (x + r, y - r), (x + r, y + r), (x - r, y + r)]
    if shape == "triangle":
        return "polygon", [(x, y - r), (x + r, y + r), (x - r, y + r)]
    return "polygon", [(x, y - r), (x + r, y), (x, y + r), (x - r, y)]


def _stripes(size: int, period: int, base, shade) -> Image.Image:
    """A full-size layer of horizontal stripes (supersampled): the first half of each period in `base`."""
    big = size * SUPERSAMPLE
    rows = (np.arange(big) // (SUPERSAMPLE * period // 2)) % 2
    array = np.where(rows[:, None, None] == 0, np.array(base, np.uint8), np.array(shade, np.uint8))
    return Image.fromarray(np.broadcast_to(array, (big, big, 3)).copy())


def _fill(colour: str, texture: str, style: str, size: int, period: int) -> Image.Image:
    base, shade = styled(COLOURS[colour], style), styled(SHADES[colour], style)
    if texture == "striped":
        return _stripes(size, period, base, shade)
    return Image.new("RGB", (size * SUPERSAMPLE,) * 2, base)


def shape_coverage(shape: str, x: float, y: float, r: float, size: int) -> np.ndarray:
    """(size, size) share of each pixel a shape covers, for a shape centred at (x, y) output pixels."""
    big = size * SUPERSAMPLE
    mask = Image.new("L", (big, big), 0)
    kind, points = shape_outline(shape, x * SUPERSAMPLE, y * SUPERSAMPLE, r * SUPERSAMPLE)
    getattr(ImageDraw.Draw(mask), kind)(points, fill=255)
    return np.asarray(mask.resize((size, size), Image.Resampling.BOX), np.float32) / 255


def object_coverage(obj: WorldObject, size: int) -> np.ndarray:
    """(size, size) share of each output pixel the object covers (anti-aliased edges are fractions)."""
    return shape_coverage(obj.shape, *_geometry(obj, size), size)


def render(scene: Scene) -> Image.Image:
    """The scene at `scene.size` pixels: drawn at 4x, then area-averaged (anti-aliased edges)."""
    size, big = scene.size, scene.size * SUPERSAMPLE
    image = _fill(scene.background, scene.pattern, scene.style, size, STRIPE_PERIOD["background"])
    for obj in scene.objects:
        mask = Image.new("L", (big, big), 0)
        kind, points = _outline(obj, size, SUPERSAMPLE)
        getattr(ImageDraw.Draw(mask), kind)(points, fill=255)
        image.paste(_fill(obj.colour, obj.texture, scene.style, size, STRIPE_PERIOD["object"]), (0, 0), mask)
    return image.resize((size, size), Image.Resampling.BOX)


# -- captions ----------------------------------------------------------------------------------------------------------
def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def object_phrase(obj: WorldObject) -> str:
    words = [obj.size, obj.colour] + (["striped"] if obj.texture == "striped" else []) + [obj.shape]
    where = "in the center" if POSITIONS[obj.cell] == "center" else f"at the {POSITIONS[obj.cell]}"
    return f"{_article(words[0])} {' '.join(words)} {where}"


def background_phrase(scene: Scene) -> str:
    words = [scene.background] + (["striped"] if scene.pattern == "striped" else [])
    return f"{_article(words[0])} {' '.join(words)} background"


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


CAPTION_TEMPLATES = ("{objects} on {background}", "{background} with {objects}", "a picture of {objects} on {background}")


def caption(scene: Scene, phrasing: int = 0) -> str:
    """The scene in words (phrasing 0-2); pastel scenes say so first."""
    text = CAPTION_TEMPLATES[phrasing % len(CAPTION_TEMPLATES)].format(
        objects=_join([object_phrase(o) for o in scene.objects]), background=background_phrase(scene))
    return f"in pastel colours, {text}" if scene.style == "pastel" else text


_ALT = "|".join
_OBJECT = re.compile(rf"\b(?:a|an) ({_ALT(SIZES)}) ({_ALT(COLOURS)}) (?:(striped) )?({_ALT(SHAPES)}) "
                     rf"(?:at|in) the ({_ALT(sorted(POSITIONS, key=len, reverse=True))})\b")
_BACKGROUND = re.compile(rf"\b(?:a|an) ({_ALT(COLOURS)})( striped)? background\b")


def parse_caption(text: str, size: int = 64) -> Scene:
    """A caption back to its scene (jitter aside); a caption naming no background or object is a `ConfigError`."""
    background = _BACKGROUND.search(text)
    objects = [WorldObject(shape, colour, POSITIONS.index(position), size=size_word,
                           texture="striped" if striped else "plain")
               for size_word, colour, striped, shape, position in _OBJECT.findall(text)]
    if background is None or not objects:
        raise ConfigError(f"not a world caption: {text!r}")
    return Scene(background.group(1), tuple(objects), pattern="striped" if background.group(2) else "plain",
                 style="pastel" if text.startswith("in pastel colours") else "plain", size=size)


def with_objects(scene: Scene, objects) -> Scene:
    return replace(scene, objects=tuple(objects))
