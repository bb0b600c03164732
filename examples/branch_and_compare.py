"""Branch and compare: fork a world, send each branch a different action, compare what follows."""

import os

import numpy as np

from helios_sdk.client import HeliosClient
from helios_sdk.record_command import local_server

token = "example-" + os.urandom(4).hex()
with local_server("tiny", token) as address, HeliosClient(address, token) as client:
    world = client.create_session(width=64, height=64)
    client.reset(world, "a mountain village", seed=5)
    twin = client.fork(world)  # an exact copy: same memory, same future for the same actions
    same = client.step(twin, "snow falls").frames
    branch = client.fork(world)
    a = client.step(world, "snow falls").frames
    b = client.step(branch, "a summer festival").frames
    print(f"same action on a fork: identical = {np.array_equal(a, same)}")
    diff = np.abs(a.astype(int) - b).mean()  # small on the tiny model's random weights, never 0
    print(f"different actions: identical = {np.array_equal(a, b)}, mean pixel difference {diff:.4f}")
    for s in (world, twin, branch):
        client.close_session(s)
