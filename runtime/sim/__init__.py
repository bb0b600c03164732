"""A procedural world simulator with known ground truth, for measuring a world model's drift."""

from .grammar import PromptGrammar, Scene
from .procedural import (
    AGENT_RGB,
    AGENT_THRESHOLD,
    MOVES,
    Action,
    ProceduralWorld,
    RandomPolicy,
    agent_mask,
)

__all__ = [
    "AGENT_RGB",
    "AGENT_THRESHOLD",
    "MOVES",
    "Action",
    "ProceduralWorld",
    "PromptGrammar",
    "RandomPolicy",
    "Scene",
    "agent_mask",
]
