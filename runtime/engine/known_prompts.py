"""Which prompts a model knows: a world trained on the procedural simulator's grammar (the toy
world, any `helios train export` folder) has seen only sentences of it, and gives a plain field for
anything else. So such a model refuses other prompts — at reset and in every prompt, transition or
blend action — with INVALID_ARGUMENT and the grammar spelled out (issue 20), where it used to accept
them silently. Models with a real text encoder (umT5) and `tiny` take any prompt.

Torch-free: `helios record` checks its prompts with it before it starts anything.
"""

from __future__ import annotations

from ..sim.grammar import BIOMES, OBJECTS, TIMES, WEATHERS, PromptGrammar
from .errors import InvalidInput

# model_index.json "prompt_grammar" -> the grammar; a `helios train export` folder without the key
# was trained on the procedural world's, the only one so far.
GRAMMARS = {"procedural": PromptGrammar}
EXAMPLE = "an island at dusk in snow with rocks and sheep"


def grammar_text() -> str:
    """The procedural grammar in one line, for error messages and help."""
    return (
        f"'a BIOME at TIME [in WEATHER] [with OBJECTS]' (BIOME: {', '.join(BIOMES)}; "
        f"TIME: {', '.join(TIMES)}; WEATHER: {', '.join(WEATHERS)}; "
        f"OBJECTS, joined by commas and 'and': {', '.join(OBJECTS)}), "
        f"e.g. {EXAMPLE!r}"
    )


def check_prompt(grammar: PromptGrammar | None, prompt: str, model: str, what: str = "prompt") -> None:
    """Refuse (InvalidInput) a prompt outside `grammar`; None: the model takes any prompt."""
    if grammar is None:
        return
    try:
        grammar.parse(prompt)
    except ValueError as exc:
        reason = str(exc).split(";")[0]
        if reason.startswith("cannot parse"):
            reason = "not of the grammar's form"
        shown = prompt if len(prompt) <= 80 else prompt[:77] + "..."
        raise InvalidInput(
            f"the {model} world knows only prompts of its grammar, and {what} {shown!r} is not one "
            f"({reason}); it knows {grammar_text()}"
        ) from None
