"""Quickstart: a helios world as a Gymnasium env, in-process on the embedded default model (the toy
world, 96×160, CPU). Its prompts are sentences of its grammar: 'a BIOME at TIME [in WEATHER] [with
OBJECTS]' (docs/eval.md); it refuses others.

python examples/quickstart.py            # or address="HOST:PORT" for a running `helios serve`
"""

import helios_sdk

env = helios_sdk.make("helios/World-v0", backend="local")
obs, info = env.reset(seed=7, options={"prompt": "a forest at dusk with deer"})
print(f"reset: obs {obs.shape} {obs.dtype}, info {info}")
obs, reward, terminated, truncated, info = env.step("a forest at night in fog with deer")
print(f"step:  obs {obs.shape}, reward {reward}, info {info}, chunk took {env.unwrapped.stats['timings']}")
env.close()
