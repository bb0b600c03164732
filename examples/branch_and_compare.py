"""Branch and compare: fork a world, send each branch a different action, compare what follows
(a local server on the embedded default model, the toy world)."""

import os

import numpy as np

from helios_sdk.client import HeliosClient
from helios_sdk.record_command import local_server

token = "example-" + os.urandom(4).hex()
with local_server("toy", token) as address, HeliosClient(address, token) as client:
    world = client.create_session()  # the model's own size: 96×160
    client.reset(world, "a tundra at dawn with houses", seed=5)
    twin = client.fork(world)  # an exact copy: same memory, same future for the same actions
    same = client.step(twin, "a tundra at dawn in snow with houses").frames
    branch = client.fork(world)
    a = client.step(world, "a tundra at dawn in snow with houses").frames
    b = client.step(branch, "a desert at noon with birds").frames
    print(f"same action on a fork: identical = {np.array_equal(a, same)}")
    diff = np.abs(a.astype(int) - b).mean()
    print(f"different actions: identical = {np.array_equal(a, b)}, mean pixel difference {diff:.4f}")
    for s in (world, twin, branch):
        client.close_session(s)
