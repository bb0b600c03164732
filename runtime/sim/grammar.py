"""The prompt grammar of the procedural world (issue 8, deliverable 1).

A prompt names a biome, a time of day, optionally a weather and a list of objects:

    a forest at dusk in light rain with rocks and deer
    a desert at noon
    an island at night in fog with houses, birds and sheep

`PromptGrammar.parse` turns one into a `Scene`; `format` is its inverse (parse(format(s)) == s) and
`sample` draws a random scene from a numpy generator. Unknown words raise a ValueError that lists
the allowed ones.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

BIOMES = ("forest", "meadow", "desert", "tundra", "island")
TIMES = ("dawn", "noon", "dusk", "night")
WEATHERS = ("clear", "light rain", "heavy rain", "snow", "fog")
STATIC_OBJECTS = ("rocks", "trees", "houses")  # drawn into the world map once
MOVING_OBJECTS = ("deer", "sheep", "birds")  # walk or fly about every frame
OBJECTS = STATIC_OBJECTS + MOVING_OBJECTS

_PATTERN = re.compile(
    r"^an? (?P<biome>[a-z]+) at (?P<time>[a-z]+)(?: in (?P<weather>[a-z ]+?))?(?: with (?P<objects>.+))?$"
)


@dataclass(frozen=True)
class Scene:
    """What a prompt asks for; `objects` keeps the prompt's order, without repeats."""

    biome: str
    time: str
    weather: str = "clear"
    objects: tuple[str, ...] = field(default_factory=tuple)


class PromptGrammar:
    """Parse, format and sample prompts of the form
    'a BIOME at TIME [in WEATHER] [with OBJECT[, OBJECT]* and OBJECT]'."""

    biomes = BIOMES
    times = TIMES
    weathers = WEATHERS
    objects = OBJECTS

    def parse(self, prompt: str) -> Scene:
        if not isinstance(prompt, str):
            raise ValueError(f"a prompt is a str, got {type(prompt).__name__}")
        text = " ".join(prompt.lower().strip().rstrip(".").split())
        match = _PATTERN.match(text)
        if match is None:
            raise ValueError(
                f"cannot parse prompt {prompt!r}; expected 'a BIOME at TIME [in WEATHER] [with OBJECTS]', "
                f"e.g. 'a forest at dusk in light rain with rocks and deer'"
            )
        biome = _check(match["biome"], BIOMES, "biome")
        time = _check(match["time"], TIMES, "time of day")
        weather = _check(match["weather"] or "clear", WEATHERS, "weather")
        objects: list[str] = []
        if match["objects"]:
            for word in re.split(r",\s*|\s+and\s+", match["objects"]):
                name = _check(word.strip(), OBJECTS, "object")
                if name not in objects:
                    objects.append(name)
        return Scene(biome, time, weather, tuple(objects))

    def format(self, scene: Scene) -> str:
        _check(scene.biome, BIOMES, "biome")
        _check(scene.time, TIMES, "time of day")
        _check(scene.weather, WEATHERS, "weather")
        for name in scene.objects:
            _check(name, OBJECTS, "object")
        article = "an" if scene.biome[0] in "aeiou" else "a"
        text = f"{article} {scene.biome} at {scene.time}"
        if scene.weather != "clear":
            text += f" in {scene.weather}"
        if scene.objects:
            names = list(scene.objects)
            text += " with " + (", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0])
        return text

    def sample(self, rng: np.random.Generator) -> str:
        """A random prompt: every biome, time and weather equally likely, 1 to 3 distinct objects."""
        count = int(rng.integers(1, 4))
        picks = rng.choice(len(OBJECTS), size=count, replace=False)
        scene = Scene(
            biome=BIOMES[int(rng.integers(len(BIOMES)))],
            time=TIMES[int(rng.integers(len(TIMES)))],
            weather=WEATHERS[int(rng.integers(len(WEATHERS)))],
            objects=tuple(OBJECTS[int(i)] for i in picks),
        )
        return self.format(scene)


def _check(word: str, allowed: tuple[str, ...], what: str) -> str:
    if word not in allowed:
        raise ValueError(f"unknown {what} {word!r}; allowed: {', '.join(allowed)}")
    return word
