"""An agent loop with prompt actions: a tiny "policy" picks the next prompt from what it sees, on the
embedded default model (the toy world, whose prompts are sentences of its grammar)."""

import helios_sdk

PROMPTS = ("a meadow at noon with sheep", "a forest at night")


def policy(frame) -> str:
    # Brighter than mid-grey -> head for the dark forest, else the meadow.
    return PROMPTS[1] if frame.mean() > 127 else PROMPTS[0]


env = helios_sdk.make(
    "helios/World-v0",
    backend="local",
    obs_mode="last",
    max_chunks=2,
    reward_fn=lambda obs, action, info: float(obs.mean()) / 255,
)
obs, info = env.reset(seed=1, options={"prompt": PROMPTS[0]})
truncated, total = False, 0.0
while not truncated:
    action = policy(obs)
    obs, reward, terminated, truncated, info = env.step(action)
    total += reward
    print(f"chunk {info['chunk_index']}: {action!r} -> brightness {obs.mean():.1f}")
print(f"episode over after {info['chunk_index']} chunks, return {total:.3f}")
env.close()
