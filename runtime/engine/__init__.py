"""The stepwise world engine: per-session state (multi-term memory, prompts, rng) and WorldEngine."""
