"""Quickstart: a helios world as a Gymnasium env, in-process on the embedded default model (CPU).

python examples/quickstart.py            # or address="HOST:PORT" for a running `helios serve`
"""

import helios_sdk

env = helios_sdk.make("helios/World-v0", backend="local", width=64, height=64)
obs, info = env.reset(seed=7, options={"prompt": "a lighthouse on a cliff"})
print(f"reset: obs {obs.shape} {obs.dtype}, info {info}")
obs, reward, terminated, truncated, info = env.step("the storm clears")
print(f"step:  obs {obs.shape}, reward {reward}, info {info}, chunk took {env.unwrapped.stats['timings']}")
env.close()
