"""A streaming viewer: start a local server (the embedded default model, the toy world) and stream a
world, frame by frame, into an mp4."""

import os
import sys
import tempfile

from helios_sdk.client import HeliosClient
from helios_sdk.messages import StreamFrame
from helios_sdk.record_command import local_server
from helios_sdk.video import Mp4Writer

out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(tempfile.mkdtemp(), "stream.mp4")
token = "example-" + os.urandom(4).hex()
with local_server("toy", token) as address, HeliosClient(address, token) as client:
    session = client.create_session()  # the model's own size: 96×160
    first = client.reset(session, "an island at dusk with birds", seed=3, encoding="jpeg")
    with Mp4Writer(out, fps=client.server_info().fps) as video:
        video.write(first.frames)
        for item in client.stream(session, ["an island at dusk in heavy rain with birds"], encoding="jpeg"):
            if isinstance(item, StreamFrame):
                video.write(item.image)  # each frame as soon as the server decodes it
            else:
                print(f"event {item.type} (chunk {item.chunk_index})")
    client.close_session(session)
print(f"wrote {video.frames_written} frames to {out}")
