"""An interactive keyboard viewer (pygame) on the embedded default model (the toy world): W A S D move
its agent and the arrow keys pan the camera, as structured actions, one chunk per step. Keys the
world's model does not know (its action space, as the env reports it: space and shift in the toy
world) are left out rather than refused.

    python examples/keyboard_viewer.py --interactive    # a window; Esc quits
    python examples/keyboard_viewer.py --frames 1       # demo (the default): scripted keys, headless ok
"""

import argparse
import os

import numpy as np

import helios_sdk

parser = argparse.ArgumentParser()
parser.add_argument("--interactive", action="store_true", help="open a window and read the keyboard")
parser.add_argument("--frames", type=int, default=1, help="chunks to play in demo mode")
args = parser.parse_args()
if not args.interactive:
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
import pygame  # noqa: E402  (after the SDL driver is chosen)

KEYS = {pygame.K_w: "w", pygame.K_a: "a", pygame.K_s: "s", pygame.K_d: "d"}  # the toy world's move keys
CAMERA = {pygame.K_LEFT: (-15, 0), pygame.K_RIGHT: (15, 0), pygame.K_UP: (0, 10), pygame.K_DOWN: (0, -10)}


def action_from(pressed) -> dict:
    yaw = sum(dy for k, (dy, _) in CAMERA.items() if pressed[k])
    pitch = sum(dp for k, (_, dp) in CAMERA.items() if pressed[k])
    keys = [name for k, name in KEYS.items() if pressed[k] and name in known]
    return {"keys": keys, "camera": {"yaw": yaw, "pitch": pitch}}


env = helios_sdk.make("helios/World-v0", backend="local", action_mode="control", render_mode="rgb_array")
known = set(env.unwrapped.actions.keys)
pygame.init()
screen = pygame.display.set_mode((256, 256))
obs, _ = env.reset(seed=2, options={"prompt": "a forest at noon with rocks"})
demo = [{"keys": ["w"], "camera": {"yaw": 15.0}}, {"keys": [k for k in ("d", "s", "shift") if k in known]}]
step, running = 0, True
while running and (args.interactive or step < args.frames):
    for event in pygame.event.get():
        running &= not (
            event.type == pygame.QUIT or (event.type == pygame.KEYDOWN and event.key == pygame.K_ESCAPE)
        )
    action = action_from(pygame.key.get_pressed()) if args.interactive else demo[step % len(demo)]
    obs, *_ = env.step(action)
    for frame in obs:  # play the chunk's 33 frames
        surface = pygame.surfarray.make_surface(np.ascontiguousarray(frame.swapaxes(0, 1)))
        screen.blit(pygame.transform.scale(surface, screen.get_size()), (0, 0))
        pygame.display.flip()
    step += 1
    print(f"chunk {step}: {action}")
env.close()
pygame.quit()
