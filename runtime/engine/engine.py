"""WorldEngine: Helios as a world you can step (spec section 5).

The model (transformer, VAE, text encoder) is shared and stateless; everything a world remembers
lives in its `Session` (fixed-size multi-term memory, conditioning, noise source, chunk counter). So:

- `reset(prompt | image | video, seed)` makes or re-makes a session and returns its first chunk;
- `step(session, action)` returns the next chunk (9 latent frames, 33 video frames); frames are
  handed to `on_frame` one by one as the VAE decodes them;
- `step_many([(session, action), ...])` steps several sessions (one at a time, so that a session's
  frames never depend on the others; `batch=True` for one forward per group of matching sessions);
- `fork`, `snapshot` / `restore` copy a world exactly (bit-identical continuations); `close` ends it.

A chunk's noise comes from its session's noise source (by default seeded from (seed, chunk index),
`rng.py`), drawn in the reference pipelines' order, so the same seed and actions give the same
frames, and a rollout matches diffusers' pipelines given the same draws.

Every bad request raises an `EngineError` subclass (`errors.py`) before any state changes, and a
step is atomic: a session's new state (memory, prompt state, chunk counter, noise position, scene) is
committed only once its chunk is complete, decode included, so a step cancelled at any point before
leaves the session exactly as it was (a later step gives the frames it would have given).
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
import torch
import torch.nn.functional as F

from helios_sdk.actions import MAX_PROMPT_CHARS

from ..chunk import FRAMES_PER_CHUNK, LATENT_FRAMES
from ..model.text_encoder import PromptCache, blend, interpolation_weights
from ..sampling.denoise import Guidance, SamplerSettings, denoise_chunk
from ..sampling.pyramid import chunk_noise
from .actions import (
    ActionAdapter,
    Blend,
    Conditioning,
    Control,
    Move,
    Prompt,
    PromptTemplateAdapter,
    Transition,
    parse_action,
)
from .errors import Cancelled, CapacityExceeded, InvalidInput, SessionClosed, SessionNotFound
from .memory import MultiTermMemory, frame_indices
from .rng import RESET, CounterNoise, StreamNoise
from .seam import SeamBlend, check_frames
from .session import PromptState, RestoreRules, Session
from .snapshot_key import check_key, new_key
from .world_model import WorldModel

FrameCallback = Callable[[int, torch.Tensor], None]  # (frame index in the chunk, frame (H, W, 3) uint8)
CancelCheck: TypeAlias = Callable[[], bool]  # a `CancelToken`, or any `() -> bool`

# I2V / V2V: the conditioning latents are noised with σ ~ U[min, max] (spec 5.10 defaults).
IMAGE_NOISE_SIGMA = (0.111, 0.135)
VIDEO_NOISE_SIGMA = (0.111, 0.135)
CLOSED_IDS_KEPT = 4096
MAX_SIZE = 4096  # pixels per side, unless the engine's owner sets a smaller limit
CANCELLED = "the chunk was cancelled before it committed; the session did not advance"


@dataclass
class ChunkResult:
    """One generated chunk of one session."""

    session_id: str
    chunk_index: int  # 0 for the chunk returned by reset
    frames: torch.Tensor | None  # (33, H, W, 3) uint8 on the CPU; None when not decoded
    latents: torch.Tensor  # (1, 16, 9, H/8, W/8) float32, the model's normalised latent space
    timings: dict[str, float]  # seconds: denoise, decode (volatile; not part of the world's state)


@dataclass
class _Chunk:
    """A generated chunk of one session, not yet committed to it (see `WorldEngine._commit`)."""

    session: Session
    prompt: PromptState  # the prompt state this chunk used
    latents: torch.Tensor  # (1, C, 9, H/8, W/8) float32
    noise_state: torch.Tensor | None  # a StreamNoise generator's state before the chunk's draws
    result: ChunkResult | None = None  # set once decoded

    def roll_back(self) -> None:
        """Undo the chunk's only side effect before its commit: a continuing generator's draws."""
        if self.noise_state is not None:
            self.session.noise.generator(self.session.chunk, "cpu").set_state(self.noise_state)


class _Left(Exception):
    """Members of a batch whose cancel token was set during the denoising (their positions)."""

    def __init__(self, members: list[int]):
        super().__init__(members)
        self.members = members


def _peek(check: CancelCheck) -> bool:
    """Read a token where not every rank of a context-parallel engine reads it (between decoded
    frames: only the leader decodes): its `peek` when it has one, a plain read otherwise."""
    return bool(getattr(check, "peek", check)())


class WorldEngine:
    """Sessions over one WorldModel. Not thread-safe: one caller (the engine worker) drives it."""

    def __init__(
        self,
        model: WorldModel,
        *,
        max_sessions: int = 64,
        prompt_cache: PromptCache | None = None,
        action_adapter: ActionAdapter | None = None,
        decodes: bool = True,
        snapshot_key: bytes | None = None,
        max_height: int | None = None,
        max_width: int | None = None,
        seam_blend: int | None = None,
    ):
        self.model = model
        # Frames over which a chunk's first frames are blended from the last frame shown (seam.py):
        # the model's own setting (model_index.json "seam_blend_frames"; 0, parity, for Helios) unless
        # the engine's owner sets one.
        self.seam_blend = check_frames(model.seam_blend if seam_blend is None else seam_blend)
        # False on the follower ranks of a context-parallel worker: they share the denoising but
        # only the leader decodes frames.
        self.decodes = decodes
        self.device = model.device
        self.max_sessions = max_sessions
        # Snapshots are signed with this key and restore only under it (snapshot_key.py); by default
        # a random key of this engine. A server gives all its workers one key.
        self._snapshot_key = check_key(snapshot_key) if snapshot_key is not None else new_key()
        # Frame-size limits (pixels) for reset and restore (None: MAX_SIZE); a server sets its own.
        self.max_height = MAX_SIZE if max_height is None else max_height
        self.max_width = MAX_SIZE if max_width is None else max_width
        self.prompt_cache = prompt_cache or PromptCache(max_entries=256, max_batch=1)
        # Structured actions: the model's learned action space when it has one, else prompt phrases.
        if action_adapter is None:
            action_adapter = model.actions if model.actions is not None else PromptTemplateAdapter()
        self.action_adapter = action_adapter
        self.sessions: dict[str, Session] = {}
        # Ids of recently closed sessions, so a late request gets "closed" rather than "unknown".
        self._closed: OrderedDict[str, None] = OrderedDict()

    # --- identity -----------------------------------------------------------------------------------

    def fingerprint(self) -> dict[str, Any]:
        """What a snapshot must have been taken with to be restorable here."""
        t, v = self.model.transformer.config, self.model.vae.config
        return {
            "name": self.model.name,
            "transformer": {k: val for k, val in t.to_dict().items() if not k.startswith("_")},
            "vae_z_dim": v.z_dim,
            "text_encoder": self.model.text_encoder.name,
        }

    # --- session lifecycle --------------------------------------------------------------------------

    def reset(
        self,
        prompt: str = "",
        *,
        image: Any = None,
        video: Any = None,
        seed: int = 0,
        height: int | None = None,
        width: int | None = None,
        settings: SamplerSettings | None = None,
        negative_prompt: str | None = None,
        session_id: str | None = None,
        generator: torch.Generator | None = None,
        on_frame: FrameCallback | None = None,
        cancel: Callable[[], bool] | None = None,
        action: Mapping[str, Any] | None = None,
    ) -> ChunkResult:
        """Start (or restart) a world from a prompt, optionally an image or a video, and return its
        first chunk. `generator` replaces the default (seed, chunk) noise by one continuing generator
        (the reference pipelines' draw order; used for parity runs). `action`: the first chunk's
        action, for a model with a learned action space (default: "stay")."""
        settings = settings or self.model.sampler
        default_h, default_w = self.model.default_size
        height, width = height or default_h, width or default_w
        self._check_size(height, width, settings)
        if not isinstance(prompt, str):
            raise InvalidInput(f"prompt must be a str, got {type(prompt).__name__}")
        self.model.check_prompt(prompt)
        if image is not None and video is not None:
            raise InvalidInput("reset takes an image or a video, not both")
        if generator is None:
            if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
                raise InvalidInput(f"seed must be an int in [0, 2**63), got {seed!r}")
            noise: CounterNoise | StreamNoise = CounterNoise(seed)
        else:
            noise = StreamNoise(generator)
        if session_id is not None and not isinstance(session_id, str):
            raise InvalidInput(f"a session id is a str, got {type(session_id).__name__}")
        if session_id not in self.sessions and len(self._open_sessions()) >= self.max_sessions:
            raise CapacityExceeded(f"the engine holds its maximum of {self.max_sessions} sessions")
        first_ids = None
        if action is not None:
            if self.model.actions is None or not isinstance(action, Mapping):
                raise InvalidInput(
                    "reset takes an action only for a model with a learned action space, as a mapping"
                )
            first_ids = parse_action(action, self.model.actions, prompt).ids

        # Validate and encode everything before any state changes.
        frames_in = _image_tensor(image, height, width, self.device) if image is not None else None
        video_in = _video_tensor(video, height, width, self.device) if video is not None else None
        text = self._encode([prompt])
        negative = None
        if settings.guided and not self.model.guide_action:  # action guidance needs no negative prompt
            neg = self.model.negative_prompt if negative_prompt is None else negative_prompt
            negative = self._encode([neg])

        lat_h, lat_w = height // 8, width // 8
        memory = MultiTermMemory.empty(self.model.transformer.config.in_channels, lat_h, lat_w, self.device)
        gen = noise.generator(RESET, self.device)
        if frames_in is not None:
            self._prepare_image(memory, frames_in, gen)
        elif video_in is not None:
            self._prepare_video(memory, video_in, gen, cancel)

        session = Session(
            id=session_id or uuid.uuid4().hex,
            height=height,
            width=width,
            settings=settings,
            seed=seed,
            noise=noise,
            memory=memory,
            prompt=PromptState(text),
            negative=negative,
            scene=prompt,
        )
        try:
            (chunk,) = self._denoise([session], [session.prompt], [cancel], [first_ids])
        except _Left:
            raise Cancelled(CANCELLED) from None
        try:
            self._finish(chunk, on_frame, True, cancel)
            if cancel is not None and cancel():
                raise Cancelled(CANCELLED)
        except BaseException:
            chunk.roll_back()
            raise
        self._commit(chunk, session.scene)
        self.sessions[session.id] = session  # a session re-made under its id replaces the old one only now
        self._closed.pop(session.id, None)
        assert chunk.result is not None
        return chunk.result

    def step(
        self,
        session_id: str,
        action: Any = None,
        *,
        on_frame: FrameCallback | None = None,
        decode: bool = True,
        cancel: CancelCheck | None = None,
    ) -> ChunkResult:
        """Generate the next chunk of a session, applying `action` at this chunk boundary.

        `decode=False` skips the VAE (latents only: for research loops that work in latent space).
        `cancel`: as `step_many`'s single token.
        """
        return self.step_many([(session_id, action)], on_frame=[on_frame], decode=decode, cancel=cancel)[0]

    def step_many(
        self,
        requests: Sequence[tuple[str, Any]],
        *,
        on_frame: Sequence[FrameCallback | None] | None = None,
        batch: bool = False,
        decode: bool = True,
        cancel: CancelCheck | Sequence[CancelCheck | None] | None = None,
        on_result: Callable[[int, ChunkResult | Cancelled], None] | None = None,
    ) -> list[Any]:
        """Step several sessions, one after another by default: a session's frames then depend only
        on its own seed and actions, whoever else is on the engine (a replayed episode gives the same
        frames alone or beside others, on any CPU). With `batch=True` sessions of matching shapes and
        settings share one batched forward: more throughput for small models on a CPU, none for the
        14B model on a GPU (compute-bound: 15.8 / 15.9 / 15.7 aggregate FPS for 1 / 2 / 4 sessions on
        an H200), and not bit-identical to stepping alone wherever the matrix kernels depend on the
        batch size (MKL on AMD EPYC does; docs/engine.md).

        All actions are validated (and prompts encoded) before any session changes; a bad request
        anywhere fails the call with nothing changed. Each step is atomic: a session advances only
        when its chunk is complete, decode included (`_commit`).

        `cancel` is read before every model forward, between decoded frames and once more just before
        a chunk commits. It is either
        - one token for the whole call (a `CancelToken`, or any `() -> bool`): once it is set the call
          raises `Cancelled` and no session advances (every chunk commits at the end of the call);
          the list returned holds a `ChunkResult` per request; or
        - one token (or None) per request: a request whose token is set leaves the call, its session
          unchanged and its entry in the list returned the `Cancelled` error; the others finish, each
          committing as soon as its chunk is complete. A member leaving a batched group mid-denoise
          makes the rest of the group start its chunk again without it.
        `on_result(i, outcome)` hears each request's outcome (its `ChunkResult` or `Cancelled`) as
        soon as it is final, before later requests run: a server answers each caller at once.
        """
        ids = [sid for sid, _ in requests]
        if len(set(ids)) != len(ids):
            raise InvalidInput("a session can appear only once in one step_many call")
        shared = cancel is None or callable(cancel)
        tokens: list[CancelCheck | None] = [cancel] * len(ids) if shared else list(cancel)  # type: ignore
        if len(tokens) != len(ids):
            raise InvalidInput(f"{len(ids)} requests but {len(tokens)} cancel tokens")
        sessions = [self._get(sid) for sid in ids]
        # Each action -> a conditioning change and/or learned action ids (a prompt, a blend or None
        # moves a model with learned actions with "stay"); all checked before anything changes.
        applied = [
            parse_action(a, self.action_adapter, s.scene)
            for s, (_, a) in zip(sessions, requests, strict=True)
        ]
        conds = [a.conditioning for a in applied]
        action_ids = [a.ids for a in applied]
        callbacks = list(on_frame) if on_frame is not None else [None] * len(requests)
        prompts = [self._apply(s, c) for s, c in zip(sessions, conds, strict=True)]
        scenes = [_scene_after(s.scene, a, c) for s, (_, a), c in zip(sessions, requests, conds, strict=True)]
        outcomes: list[Any] = [None] * len(ids)
        open_chunks: dict[int, _Chunk] = {}  # generated, neither committed nor rolled back yet

        def settle(i: int, outcome: ChunkResult | Cancelled) -> None:
            outcomes[i] = outcome
            if on_result is not None:
                on_result(i, outcome)

        def commit(i: int) -> None:
            chunk = open_chunks.pop(i)
            self._commit(chunk, scenes[i])
            settle(i, chunk.result)  # type: ignore[arg-type]

        groups: dict[tuple, list[int]] = {}
        for i, s in enumerate(sessions):
            key = (s.height, s.width, s.settings, s.chunk == 0) if batch else (i,)
            groups.setdefault(key, []).append(i)
        try:
            for members in groups.values():
                while members:
                    # A shared token is polled once per forward, not once per member.
                    checks = [tokens[i] for i in members]
                    if shared:
                        checks = [cancel] + [None] * (len(members) - 1)
                    try:
                        chunks = self._denoise(
                            [sessions[i] for i in members],
                            [prompts[i] for i in members],
                            checks,
                            [action_ids[i] for i in members],
                        )
                    except _Left as left:
                        if shared:
                            raise Cancelled(CANCELLED) from None
                        for pos in left.members:
                            settle(members[pos], Cancelled(CANCELLED))
                        members = [i for pos, i in enumerate(members) if pos not in left.members]
                        continue  # the rest of the group starts its chunk again without them
                    open_chunks.update(zip(members, chunks, strict=True))
                    for i in members:
                        token = tokens[i]
                        try:
                            self._finish(open_chunks[i], callbacks[i], decode, token)
                            if not shared and token is not None and token():
                                raise Cancelled(CANCELLED)
                        except Cancelled as exc:
                            if shared:
                                raise
                            open_chunks.pop(i).roll_back()
                            settle(i, exc)
                            continue
                        if not shared:
                            commit(i)
                    break
            if shared and cancel is not None and cancel():
                raise Cancelled(CANCELLED)
        except BaseException:
            for chunk in reversed(open_chunks.values()):
                chunk.roll_back()
            raise
        for i in list(open_chunks):  # a shared token: every chunk commits once all are complete
            commit(i)
        return outcomes

    def fork(self, session_id: str, new_id: str | None = None) -> str:
        """An independent copy of a session; both continue exactly as the original would."""
        session = self._get(session_id)
        if len(self._open_sessions()) >= self.max_sessions:
            raise CapacityExceeded(f"the engine holds its maximum of {self.max_sessions} sessions")
        if new_id is not None and (not isinstance(new_id, str) or new_id in self.sessions):
            raise InvalidInput(f"the fork's id must be a new str, got {new_id!r}")
        twin = session.clone(new_id or uuid.uuid4().hex)
        self.sessions[twin.id] = twin
        return twin.id

    def snapshot(self, session_id: str) -> bytes:
        """The session as bytes, signed with this engine's snapshot key."""
        return self._get(session_id).to_bytes(self.fingerprint(), self._snapshot_key)

    def restore(self, data: bytes, session_id: str | None = None) -> str:
        """A new session from snapshot bytes. SnapshotError (nothing changes) for bytes not signed
        with this engine's key (another server's, edited, corrupt, truncated) and for any field this
        engine would not accept from a reset: another model or sampler, a frame size off the
        multiple or over the limits, a scene over the prompt limit, a chunk counter, seed or noise
        source out of range, a tensor of the wrong dtype or shape or with NaN / inf."""
        if len(self._open_sessions()) >= self.max_sessions:
            raise CapacityExceeded(f"the engine holds its maximum of {self.max_sessions} sessions")
        if session_id is not None and (not isinstance(session_id, str) or session_id in self.sessions):
            raise InvalidInput(f"the restored session's id must be a new str, got {session_id!r}")
        session = Session.from_bytes(data, self._snapshot_key, session_id or uuid.uuid4().hex, self._rules())
        self.sessions[session.id] = session
        return session.id

    def close(self, session_id: str) -> None:
        """End a session and free its memory. Closing twice is allowed."""
        if session_id in self._closed:
            return
        session = self._get(session_id, allow_closed=True)
        session.closed = True
        del self.sessions[session_id]
        self._closed[session_id] = None
        while len(self._closed) > CLOSED_IDS_KEPT:
            self._closed.popitem(last=False)

    def session(self, session_id: str) -> Session:
        return self._get(session_id)

    # --- internals ----------------------------------------------------------------------------------

    def _open_sessions(self) -> list[Session]:
        return [s for s in self.sessions.values() if not s.closed]

    def _get(self, session_id: str, allow_closed: bool = False) -> Session:
        if not isinstance(session_id, str):
            raise InvalidInput(f"a session id is a str, got {type(session_id).__name__}")
        session = self.sessions.get(session_id)
        if session is None and session_id in self._closed:
            raise SessionClosed(f"session {session_id!r} is closed")
        if session is None:
            raise SessionNotFound(f"no session {session_id!r}")
        if session.closed and not allow_closed:
            raise SessionClosed(f"session {session_id!r} is closed")
        return session

    def _size_multiple(self, settings: SamplerSettings) -> int:
        return 8 * self.model.transformer.config.patch_size[1] * 2 ** (settings.scheduler.stages - 1)

    def _check_size(self, height: Any, width: Any, settings: SamplerSettings) -> None:
        multiple = self._size_multiple(settings)
        for name, value, limit in (("height", height, self.max_height), ("width", width, self.max_width)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0 or value % multiple:
                raise InvalidInput(
                    f"{name} must be a positive multiple of {multiple} pixels for this sampler "
                    f"(VAE ×8, patch ×2, {settings.scheduler.stages} pyramid stage(s)), got {value!r}"
                )
            if value > limit:
                raise InvalidInput(f"{name} must be at most {limit} pixels, got {value}")

    def _rules(self) -> RestoreRules:
        """What a restored session must be on this engine (its model, sampler and limits)."""
        settings, encoder = self.model.sampler, self.model.text_encoder
        return RestoreRules(
            fingerprint=self.fingerprint(),
            settings=settings,
            size_multiple=self._size_multiple(settings),
            max_height=self.max_height,
            max_width=self.max_width,
            max_scene_chars=MAX_PROMPT_CHARS,
            channels=self.model.transformer.config.in_channels,
            text_shape=(encoder.max_tokens, encoder.dim),
            text_dtype=encoder.dtype,
            negative=settings.guided and not self.model.guide_action,  # as reset encodes one
            device=self.device,
        )

    def _encode(self, prompts: list[str]) -> torch.Tensor:
        emb = self.prompt_cache.get(self.model.text_encoder, prompts)  # (B, K, E)
        return emb.to(self.device)

    def _apply(self, session: Session, cond: Conditioning | None) -> PromptState:
        """The prompt state this chunk will use (the session is not changed here)."""
        if cond is None:
            return session.prompt
        for text in cond.prompts if isinstance(cond, Blend) else (cond.text,):
            self.model.check_prompt(text, "a blend's prompt" if isinstance(cond, Blend) else "the prompt")
        if isinstance(cond, Prompt):
            return session.prompt.switched(self._encode([cond.text]))
        if isinstance(cond, Blend):
            embs = self._encode(list(cond.prompts))
            return session.prompt.switched(blend(list(embs.split(1)), list(cond.weights)))
        weights = tuple(interpolation_weights(cond.chunks)) if cond.chunks > 1 else ()
        return session.prompt.switched(self._encode([cond.text]), weights)

    def _prepare_image(self, memory: MultiTermMemory, image: torch.Tensor, gen: torch.Generator) -> None:
        """I2V (spec 5.10): the image is the anchor; its 33-frame still clip's last latent is the newest
        history frame; both are noised. Draws in the reference pipeline's order."""
        still = image.unsqueeze(2)  # (1, 3, 1, H, W)
        anchor = self._encode_pixels(still, gen)
        fake = self._encode_pixels(still.expand(-1, -1, FRAMES_PER_CHUNK, -1, -1), gen)[:, :, -1:]
        anchor = _noised(anchor, IMAGE_NOISE_SIGMA, gen, self.device)
        fake = _noised(fake, VIDEO_NOISE_SIGMA, gen, self.device)
        memory.set_anchor(anchor)
        memory.history[:, :, -1:].copy_(fake)

    def _encode_pixels(self, video: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """(1, 3, T, H, W) in [-1, 1] -> normalised posterior sample, float32 (the reference's casts)."""
        vae = self.model.vae
        return vae.normalize(vae.encode(video.to(vae.dtype), sample=True, generator=gen)).float()

    def _prepare_video(
        self,
        memory: MultiTermMemory,
        video: torch.Tensor,
        gen: torch.Generator,
        cancel: CancelCheck | None = None,
    ) -> None:
        """V2V (spec 5.10): the first frame is the anchor; the last ⌊F/33⌋ 33-frame windows, each
        encoded alone, fill the history. Draws in the reference pipeline's order. `cancel` is read
        before each window (a long video is many VAE encodes)."""
        frames = video.shape[2]
        windows = frames // FRAMES_PER_CHUNK
        if windows == 0:
            raise InvalidInput(f"a video needs at least {FRAMES_PER_CHUNK} frames, got {frames}")
        start = frames - windows * FRAMES_PER_CHUNK
        first = self._encode_pixels(video[:, :, :1], gen)
        latents = []
        for i in range(windows):
            if cancel is not None and cancel():
                raise Cancelled("the reset was cancelled while it encoded its video")
            window = video[:, :, start + i * FRAMES_PER_CHUNK : start + (i + 1) * FRAMES_PER_CHUNK]
            latents.append(self._encode_pixels(window, gen))
        anchor = _noised(first, IMAGE_NOISE_SIGMA, gen, self.device)
        noisy = [_noised(w, VIDEO_NOISE_SIGMA, gen, self.device, per_frame=True) for w in latents]
        memory.set_anchor(anchor)
        memory.load_history(torch.cat(noisy, dim=2))

    @torch.inference_mode()
    def _denoise(
        self,
        sessions: list[Session],
        prompts: list[PromptState],
        cancels: list[CancelCheck | None],
        action_ids: list[tuple[int, ...] | None],
    ) -> list[_Chunk]:
        """Denoise one chunk for sessions of equal shape and settings in one batch; change nothing.

        `prompts`: each session's prompt state for this chunk; `cancels`: each session's token, all
        read before every forward (raises `_Left` naming the members whose token is set, with any
        continuing generator rolled back); `action_ids`: each session's learned action ids for this
        chunk (None: "stay"), for a model with an action space; ignored otherwise."""
        first = sessions[0]
        settings, B = first.settings, len(sessions)
        C = self.model.transformer.config.in_channels
        lat_h, lat_w = first.latent_size
        gens = [s.noise.generator(s.chunk, self.device) for s in sessions]
        # A continuing generator's position, restored if the chunk does not commit.
        saved = [
            g.get_state() if isinstance(s.noise, StreamNoise) else None
            for s, g in zip(sessions, gens, strict=True)
        ]

        t0 = time.perf_counter()
        noise = torch.cat([chunk_noise((1, C, LATENT_FRAMES, lat_h, lat_w), g, self.device) for g in gens])
        text = torch.cat([p.for_next_chunk() for p in prompts])
        memories = [s.memory.inputs() for s in sessions]
        history = {k: torch.cat([m[k] for m in memories]) for k in memories[0]}
        if not self.model.use_anchor:  # a model trained without the anchor sees zeros in its slot
            short = history["latents_history_short"].clone()
            short[:, :, :1] = 0
            history["latents_history_short"] = short
        indices = frame_indices(B, self.device)
        extra: dict[str, torch.Tensor] = {}
        vocab = self.model.actions
        if vocab is not None:
            rows = [ids or vocab.STAY for ids in action_ids]
            extra["action"] = torch.tensor(rows, dtype=torch.int64)
        transformer = self.model.forward  # the transformer, or its CUDA-graph replay (fast_path)

        def conditioned(
            context: torch.Tensor, extra: dict[str, torch.Tensor]
        ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
            def forward(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                # Every token is read (no short cut), so the ranks of a context-parallel engine,
                # whose tokens are collectives, read them alike.
                left = [b for b, check in enumerate(cancels) if check is not None and check()]
                if left:
                    raise _Left(left)
                # A group shares its schedule: one timestep for all rows keeps the time embedding
                # batch-independent (see HeliosTransformer.forward).
                return transformer(
                    hidden_states=x,
                    timestep=t[:1],
                    encoder_hidden_states=context,
                    **indices,
                    **history,
                    **extra,
                )

            return forward

        model: Any = conditioned(text, extra)
        if settings.guided and self.model.guide_action:  # (a model with guide_action has actions)
            # Action guidance: the same prompt without an action (ids -1) is the unconditional side.
            model = Guidance(model, conditioned(text, {"action": torch.full_like(extra["action"], -1)}))
        elif settings.guided:
            model = Guidance(model, conditioned(torch.cat([s.negative for s in sessions]), extra))
        try:
            latents = denoise_chunk(
                model, noise, settings, gens[0] if B == 1 else gens, first_chunk=first.chunk == 0
            ).float()
        except BaseException:
            for g, state in zip(gens, saved, strict=True):
                if state is not None:
                    g.set_state(state)
            raise
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        denoise_s = time.perf_counter() - t0
        chunks = [
            _Chunk(s, p, latents[b : b + 1].clone(), state)
            for b, (s, p, state) in enumerate(zip(sessions, prompts, saved, strict=True))
        ]
        for c in chunks:
            c.result = ChunkResult(c.session.id, c.session.chunk, None, c.latents, {"denoise": denoise_s})
        return chunks

    def _finish(
        self, chunk: _Chunk, callback: FrameCallback | None, decode: bool, cancel: CancelCheck | None
    ) -> None:
        """Decode a chunk (unless `decode` is off), handing each frame to `callback`; `cancel` is
        read between decoded frames (raises `Cancelled`). Its session is not changed."""
        t1 = time.perf_counter()
        last = chunk.session.last_frame
        seam = SeamBlend(self.seam_blend, last) if self.seam_blend and last is not None else None
        frames = self._decode(chunk.latents, callback, cancel, seam) if decode and self.decodes else None
        assert chunk.result is not None
        chunk.result.frames = frames
        chunk.result.timings["decode"] = time.perf_counter() - t1

    def _commit(self, chunk: _Chunk, scene: str) -> None:
        """The step's one change to its session: push the chunk into the memory, advance the prompt
        state (transitions), the chunk counter and the scene. (A continuing generator's position
        moved when the chunk drew its noise; `_Chunk.roll_back` undoes that when no commit follows.)"""
        s = chunk.session
        s.memory.push(chunk.latents)
        s.prompt = chunk.prompt.advanced()
        s.chunk += 1
        s.scene = scene
        assert chunk.result is not None
        s.stats = chunk.result.timings
        # The last frame shown, for the next boundary's blend (kept only while the option is on; a
        # chunk not decoded leaves nothing shown to blend from).
        frames = chunk.result.frames
        s.last_frame = frames[-1].clone() if self.seam_blend and frames is not None else None

    def _decode(
        self,
        latents: torch.Tensor,
        callback: FrameCallback | None,
        cancel: CancelCheck | None = None,
        seam: SeamBlend | None = None,
    ) -> torch.Tensor:
        """Decode one chunk latent by latent (a fresh decoder per chunk, as the model was trained),
        handing each frame to `callback` as soon as it exists; return (33, H, W, 3) uint8. `cancel`
        is read before each latent is decoded (raises `Cancelled`). `seam`: the seam blend from the
        last frame shown (seam.py), applied to each frame before it is handed on."""
        vae = self.model.vae
        stream = vae.stream_decoder()
        z = vae.denormalize(latents.to(vae.dtype))  # the reference casts, then denormalises
        out = []
        for i in range(z.shape[2]):
            if cancel is not None and _peek(cancel):
                raise Cancelled(CANCELLED)
            frames = _to_uint8(stream.push(z[:, :, i : i + 1]))  # (n, H, W, 3)
            if seam is not None:
                frames = torch.stack([seam(len(out) + j, f) for j, f in enumerate(frames.unbind(0))])
            if callback is not None:
                for j in range(frames.shape[0]):
                    callback(len(out) + j, frames[j])
            out.extend(frames.unbind(0))
        return torch.stack(out)


def _scene_after(scene: str, action: Any, cond: Conditioning | None) -> str:
    """An explicit prompt or transition replaces the scene prompt; blends and structured actions
    (whose prompts are the scene plus motion phrases) keep it."""
    if isinstance(cond, (Prompt, Transition)) and not isinstance(action, (Mapping, Control, Move)):
        return cond.text
    return scene


# ---------------------------------------------------------------------------------------------------
# Pixels in and out
# ---------------------------------------------------------------------------------------------------


def _to_uint8(video: torch.Tensor) -> torch.Tensor:
    """(1, 3, T, H, W) in [-1, 1] -> (T, H, W, 3) uint8 on the CPU, as the reference postprocesses."""
    x = (video[0].float() / 2 + 0.5).clamp(0, 1)
    return (x * 255).round().to(torch.uint8).permute(1, 2, 3, 0).cpu()


def _as_float_frames(x: Any, what: str) -> torch.Tensor:
    """uint8 (…, H, W, 3) in [0, 255] or float (…, 3, H, W) in [-1, 1] -> float32 channels-first."""
    if isinstance(x, np.ndarray):
        # A copy only when needed: a read-only array (e.g. np.frombuffer over a request's bytes, as
        # the worker makes) would make torch warn on every reset.
        x = torch.from_numpy(np.require(x, requirements=("C", "W")))
    if not isinstance(x, torch.Tensor):
        raise InvalidInput(f"{what} must be a numpy array or torch tensor, got {type(x).__name__}")
    if x.dtype == torch.uint8:
        if x.shape[-1] != 3:
            raise InvalidInput(f"a uint8 {what} must be (…, H, W, 3) RGB, got shape {tuple(x.shape)}")
        return (x.float() / 255.0 * 2.0 - 1.0).movedim(-1, -3)  # the reference's /255 then 2x − 1
    if not x.is_floating_point():
        raise InvalidInput(f"{what} must be uint8 or floating, got {x.dtype}")
    if not torch.isfinite(x).all():
        raise InvalidInput(f"{what} contains NaN or inf")
    return x.float()


def _resize(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(N, 3, h, w) -> (N, 3, height, width), area-aware bilinear, only when the size differs."""
    if tuple(x.shape[-2:]) == (height, width):
        return x
    return F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)


def _image_tensor(image: Any, height: int, width: int, device: torch.device) -> torch.Tensor:
    x = _as_float_frames(image, "image")
    if x.dim() != 3 or x.shape[0] != 3:
        raise InvalidInput(
            f"image must be one RGB frame, (H, W, 3) uint8 or (3, H, W) float; got {tuple(x.shape)}"
        )
    return _resize(x[None], height, width).to(device)  # (1, 3, H, W)


def _video_tensor(video: Any, height: int, width: int, device: torch.device) -> torch.Tensor:
    x = _as_float_frames(video, "video")
    if x.dim() != 4 or x.shape[1] != 3:
        raise InvalidInput(f"video must be (T, H, W, 3) uint8 or (T, 3, H, W) float; got {tuple(x.shape)}")
    return _resize(x, height, width).permute(1, 0, 2, 3)[None].to(device)  # (1, 3, T, H, W)


def _noised(
    z: torch.Tensor,
    sigma_range: tuple[float, float],
    gen: torch.Generator,
    device: torch.device,
    per_frame: bool = False,
) -> torch.Tensor:
    """σ·ε + (1 − σ)·z with σ ~ U[lo, hi] (one σ, or one per latent frame), drawn as the reference."""
    lo, hi = sigma_range
    n = z.shape[2] if per_frame else 1
    sigma = torch.rand(n, device=device, generator=gen) * (hi - lo) + lo
    if per_frame:
        sigma = sigma.view(1, 1, n, 1, 1)
    eps = chunk_noise(tuple(z.shape), gen, device)
    return sigma * eps + (1 - sigma) * z
