// HeliosWorldSession: one world on a helios server, driven from a background task (no UnityEngine
// types, so it runs on any .NET thread). It connects over grpc-dotnet with YetAnotherHttpHandler
// (Unity has no HTTP/2 client of its own), waits for the server's health to report SERVING,
// handshakes (GetServerInfo) and raises its receive limit to the server's max_message_bytes,
// creates a session, resets it from a prompt and keeps a Stream open, raising FrameReceived for
// every frame and EventRaised for what happens to the connection. A lost server or session
// (UNAVAILABLE, ABORTED for a session lost with its engine worker, a CLOSED event) is reported as
// SessionLost, then it backs off, opens a new channel and a new session from the latest prompt; the
// call that failed is never repeated on the old session. A refused token (UNAUTHENTICATED) is Fatal
// at once. Single calls are retried by gRPC itself, per the service config every helios client
// shares (HeliosRetryPolicy); every channel keeps alive with pings. TLS: an https:// address.
// Contract: proto/helios/v1/world.proto. The C++ core of the Unreal plugin follows the same steps.
using System;
using System.Collections.Concurrent;
using System.Collections.Generic;
using System.Threading;
using System.Threading.Tasks;
using Cysharp.Net.Http;
using Grpc.Core;
using Grpc.Net.Client;
using V1 = Helios.V1;

namespace Helios.World
{
    /// <summary>How frames travel. H.264 needs a native decoder Unity lacks, so it is not offered.</summary>
    public enum HeliosFrameEncoding
    {
        Rgb24 = 1,
        Jpeg = 2,
    }

    public sealed class HeliosSessionOptions
    {
        /// <summary>"http://host:port" (plaintext HTTP/2) or "https://host:port" (TLS: helios serve
        /// --tls-cert / --tls-key).</summary>
        public string Address = "http://127.0.0.1:50051";
        /// <summary>Sent as "authorization: Bearer ..."; empty sends none.</summary>
        public string Token = "";
        /// <summary>TLS: PEM of the CA that signed the server's certificate; empty: the handler's
        /// built-in roots.</summary>
        public string RootCertificatesPem = "";
        /// <summary>Mutual TLS (helios serve --tls-client-ca): this client's PEM certificate chain and
        /// private key.</summary>
        public string ClientCertificatePem = "";
        public string ClientKeyPem = "";
        public int Width = 640;
        public int Height = 384;
        public string Prompt = "a meadow at noon with trees and sheep";
        public ulong Seed;
        public HeliosFrameEncoding Encoding = HeliosFrameEncoding.Jpeg;
        /// <summary>1..100; 0: the server's default (90).</summary>
        public uint JpegQuality;
        /// <summary>Free-run: the world keeps going (games). Lockstep: one chunk per action.</summary>
        public bool FreeRun = true;
        /// <summary>Receive limit before the handshake; gRPC's default of 4 MiB is too small for large
        /// raw frames. Raised to the server's max_message_bytes after GetServerInfo.</summary>
        public int MaxReceiveMessageBytes = 64 << 20;
        public TimeSpan UnaryTimeout = TimeSpan.FromSeconds(60);
        public double MinBackoffSeconds = 0.2;
        public double MaxBackoffSeconds = 5.0;
    }

    /// <summary>One frame as it arrived: raw RGB24 rows (top to bottom) or one JPEG file.</summary>
    public sealed class HeliosFrame
    {
        public string SessionId;
        public ulong ChunkIndex;
        public ulong FrameIndex;
        public uint IndexInChunk;
        public ulong ActionSeq;
        public int Width;
        public int Height;
        public HeliosFrameEncoding Encoding;
        public byte[] Data;
        public long ServerTimestampNs;
        public long ReceivedUnixNs;
    }

    public enum HeliosEventType
    {
        Connecting,
        Connected,
        SessionStarted,
        ChunkDone,
        FramesDropped,
        ActionRejected,
        SessionLost,
        Stopped,
        Fatal,
    }

    public sealed class HeliosEvent
    {
        public HeliosEventType Type;
        public StatusCode Code = StatusCode.OK;
        public string Message = "";
        public string SessionId = "";
        public ulong ChunkIndex;
        public ulong ActionSeq;
        public ulong DroppedFrames;
        public int Attempt;

        public override string ToString()
        {
            return Type + (SessionId.Length > 0 ? " " + SessionId : "") +
                   (Code != StatusCode.OK ? " " + Code : "") + (Message.Length > 0 ? ": " + Message : "");
        }
    }

    public sealed class HeliosWorldSession : IDisposable
    {
        readonly HeliosSessionOptions options;
        readonly CancellationTokenSource stop = new CancellationTokenSource();
        readonly object gate = new object();
        readonly ConcurrentQueue<V1.StreamAction> outbox = new ConcurrentQueue<V1.StreamAction>();
        readonly SemaphoreSlim outboxReady = new SemaphoreSlim(0);
        Task runTask;
        long nextSeq;
        string prompt;
        string sessionId = "";
        V1.GetServerInfoResponse serverInfo;

        /// <summary>Raised on a background thread for every frame, in order.</summary>
        public event System.Action<HeliosFrame> FrameReceived;
        /// <summary>Raised on a background thread.</summary>
        public event System.Action<HeliosEvent> EventRaised;

        public HeliosWorldSession(HeliosSessionOptions options)
        {
            this.options = options;
            prompt = options.Prompt;
        }

        public string SessionId { get { lock (gate) return sessionId; } }
        public V1.GetServerInfoResponse ServerInfo { get { lock (gate) return serverInfo; } }

        /// <summary>Runs the session on the thread pool until Stop() or a fatal error.</summary>
        public void Start()
        {
            runTask = Task.Run(() => RunAsync(stop.Token));
        }

        /// <summary>Ends the stream and closes the session, without waiting.</summary>
        public void Stop()
        {
            stop.Cancel();
        }

        public void Dispose()
        {
            Stop();
        }

        /// <summary>Queues an action; returns its sequence number (echoed in frames' ActionSeq).</summary>
        public ulong Send(V1.Action action)
        {
            var seq = (ulong)Interlocked.Increment(ref nextSeq);
            if (action.KindCase == V1.Action.KindOneofCase.Prompt) lock (gate) prompt = action.Prompt.Text;
            if (action.KindCase == V1.Action.KindOneofCase.Transition) lock (gate) prompt = action.Transition.Text;
            outbox.Enqueue(new V1.StreamAction { Seq = seq, Action = action });
            outboxReady.Release();
            return seq;
        }

        public ulong SendPrompt(string text)
        {
            return Send(new V1.Action { Prompt = new V1.PromptAction { Text = text } });
        }

        /// <summary>Keys among w a s d space shift; mouse in pixels since the last action; camera in
        /// degrees.</summary>
        public ulong SendControl(IEnumerable<string> keys, float mouseDx, float mouseDy,
                                 float cameraYaw = 0, float cameraPitch = 0, float cameraZoom = 0)
        {
            var control = new V1.ControlAction
            {
                MouseDx = mouseDx, MouseDy = mouseDy,
                CameraYaw = cameraYaw, CameraPitch = cameraPitch, CameraZoom = cameraZoom,
            };
            control.Keys.AddRange(keys);
            return Send(new V1.Action { Control = control });
        }

        /// <summary>A learned move and camera pan (helios.v1.MoveAction), names from the server's
        /// ServerInfo.Model.Actions.Moves / Pans (the toy world: stay n ne e se s sw w nw); an empty
        /// name is "stay". A model without moves refuses it (INVALID_ARGUMENT).</summary>
        public ulong SendMove(string move, string pan = "")
        {
            return Send(new V1.Action { Move = new V1.MoveAction { Move = move ?? "", Pan = pan ?? "" } });
        }

        void Raise(HeliosEvent e)
        {
            var handler = EventRaised;
            if (handler != null) handler(e);
        }

        // Errors after which a new channel and a new session may succeed (ABORTED: the session was
        // lost with its worker; a new one is made, the old one is never called again).
        static bool Retryable(StatusCode code)
        {
            return code == StatusCode.Unavailable || code == StatusCode.NotFound ||
                   code == StatusCode.Aborted || code == StatusCode.DeadlineExceeded ||
                   code == StatusCode.ResourceExhausted;
        }

        Metadata Auth()
        {
            var headers = new Metadata();
            if (!string.IsNullOrEmpty(options.Token)) headers.Add("authorization", "Bearer " + options.Token);
            return headers;
        }

        GrpcChannel NewChannel(int maxReceiveBytes)
        {
            var plaintext = options.Address.StartsWith("http://", StringComparison.OrdinalIgnoreCase);
            // h2c (plaintext HTTP/2) must be forced, or the handler tries HTTP/1.1 first.
            var handler = new YetAnotherHttpHandler
            {
                Http2Only = plaintext,
                Http2KeepAliveInterval = TimeSpan.FromMilliseconds(HeliosRetryPolicy.KeepaliveTimeMs),
                Http2KeepAliveTimeout = TimeSpan.FromMilliseconds(HeliosRetryPolicy.KeepaliveTimeoutMs),
                Http2KeepAliveWhileIdle = true,
            };
            if (!string.IsNullOrEmpty(options.RootCertificatesPem)) handler.RootCertificates = options.RootCertificatesPem;
            if (!string.IsNullOrEmpty(options.ClientCertificatePem))
            {
                handler.ClientAuthCertificates = options.ClientCertificatePem;
                handler.ClientAuthKey = options.ClientKeyPem;
            }
            return GrpcChannel.ForAddress(options.Address, new GrpcChannelOptions
            {
                HttpHandler = handler,
                DisposeHttpClient = true,
                MaxReceiveMessageSize = maxReceiveBytes,
                ServiceConfig = HeliosRetryPolicy.ServiceConfig(),
            });
        }

        // grpc.health.v1.Health/Check over raw bytes: the request is empty, the reply's field 1 is
        // the ServingStatus (1 = SERVING). No health stubs are needed for one varint.
        static readonly Method<byte[], byte[]> HealthCheck = new Method<byte[], byte[]>(
            MethodType.Unary, "grpc.health.v1.Health", "Check",
            Marshallers.Create((byte[] b) => b, (byte[] b) => b),
            Marshallers.Create((byte[] b) => b, (byte[] b) => b));

        static int ServingStatus(byte[] reply)
        {
            // Field 1, varint: tag 0x08 then the value (small enough for one byte).
            for (int i = 0; i + 1 < reply.Length; i++)
            {
                if (reply[i] == 0x08) return reply[i + 1];
            }
            return 0;
        }

        async Task RunAsync(CancellationToken token)
        {
            var backoff = options.MinBackoffSeconds;
            var attempt = 0;
            while (!token.IsCancellationRequested)
            {
                GrpcChannel channel = null;
                try
                {
                    attempt++;
                    Raise(new HeliosEvent { Type = HeliosEventType.Connecting, Attempt = attempt });
                    channel = NewChannel(options.MaxReceiveMessageBytes);
                    var health = await channel.CreateCallInvoker().AsyncUnaryCall(
                        HealthCheck, null, new CallOptions(deadline: DateTime.UtcNow.AddSeconds(2), cancellationToken: token),
                        new byte[0]);
                    if (ServingStatus(health) != 1)
                        throw new RpcException(new Status(StatusCode.Unavailable, "the server is not SERVING yet"));
                    var client = new V1.WorldService.WorldServiceClient(channel);
                    var info = await client.GetServerInfoAsync(new V1.GetServerInfoRequest(), Auth(),
                        DateTime.UtcNow.AddSeconds(10), token);
                    if (!info.ApiVersion.StartsWith("1."))
                    {
                        Raise(new HeliosEvent { Type = HeliosEventType.Fatal, Code = StatusCode.FailedPrecondition,
                            Message = "the server speaks helios API " + info.ApiVersion + ", this client speaks 1.x" });
                        return;
                    }
                    if (info.MaxMessageBytes > (ulong)options.MaxReceiveMessageBytes && info.MaxMessageBytes <= int.MaxValue)
                    {
                        channel.Dispose();  // accept whatever the server may send
                        channel = NewChannel((int)info.MaxMessageBytes);
                        client = new V1.WorldService.WorldServiceClient(channel);
                    }
                    lock (gate) serverInfo = info;
                    Raise(new HeliosEvent { Type = HeliosEventType.Connected });
                    attempt = 0;
                    backoff = options.MinBackoffSeconds;
                    await StreamSessionAsync(client, token);
                }
                catch (OperationCanceledException) when (token.IsCancellationRequested)
                {
                    break;
                }
                catch (RpcException e) when (e.StatusCode == StatusCode.Cancelled && token.IsCancellationRequested)
                {
                    break;
                }
                catch (RpcException e) when (Retryable(e.StatusCode))
                {
                    var lost = SessionId;
                    if (lost.Length > 0)
                    {
                        lock (gate) sessionId = "";
                        Raise(new HeliosEvent { Type = HeliosEventType.SessionLost, SessionId = lost,
                                                Code = e.StatusCode, Message = e.Status.Detail });
                    }
                }
                catch (Exception) when (token.IsCancellationRequested)
                {
                    break;
                }
                catch (RpcException e)
                {
                    var message = e.Status.Detail;
                    if (e.StatusCode == StatusCode.Unauthenticated)
                        message = "the server refused the token (" + message + "): set the token the server " +
                                  "was started with (helios serve --token, or $HELIOS_TOKEN on the server)";
                    Raise(new HeliosEvent { Type = HeliosEventType.Fatal, Code = e.StatusCode, Message = message });
                    return;
                }
                catch (Exception e)
                {
                    // Not a gRPC status: a broken install (a missing native handler library, say).
                    Raise(new HeliosEvent { Type = HeliosEventType.Fatal, Code = StatusCode.Internal,
                                            Message = e.GetType().Name + ": " + e.Message });
                    return;
                }
                finally
                {
                    if (channel != null) channel.Dispose();
                }
                try
                {
                    await Task.Delay(TimeSpan.FromSeconds(backoff), token);
                }
                catch (OperationCanceledException)
                {
                    break;
                }
                backoff = Math.Min(backoff * 2, options.MaxBackoffSeconds);
            }
            Raise(new HeliosEvent { Type = HeliosEventType.Stopped });
        }

        async Task StreamSessionAsync(V1.WorldService.WorldServiceClient client, CancellationToken token)
        {
            var created = await client.CreateSessionAsync(
                new V1.CreateSessionRequest { Width = (uint)options.Width, Height = (uint)options.Height },
                Auth(), DateTime.UtcNow.Add(options.UnaryTimeout), token);
            var id = created.SessionId;
            string startPrompt;
            lock (gate)
            {
                sessionId = id;
                startPrompt = prompt;
            }
            try
            {
                var encoding = (V1.FrameEncoding)options.Encoding;
                var reset = await client.ResetAsync(new V1.ResetRequest
                {
                    SessionId = id, Prompt = startPrompt, Seed = options.Seed,
                    Frames = new V1.FrameOptions { Encoding = encoding, Selection = V1.FrameSelection.Last,
                                                   JpegQuality = options.JpegQuality },
                }, Auth(), DateTime.UtcNow.Add(options.UnaryTimeout), token);
                foreach (var f in reset.Chunk.Frames) Deliver(f, id);

                using (var call = client.Stream(Auth(), null, token))
                {
                    await call.RequestStream.WriteAsync(new V1.StreamRequest
                    {
                        Start = new V1.StreamStart
                        {
                            SessionId = id,
                            Mode = options.FreeRun ? V1.StreamMode.FreeRun : V1.StreamMode.Lockstep,
                            Frames = new V1.FrameOptions { Encoding = encoding, JpegQuality = options.JpegQuality },
                        },
                    });
                    if (!await call.ResponseStream.MoveNext(token) ||
                        call.ResponseStream.Current.Event == null ||
                        call.ResponseStream.Current.Event.Type != V1.SessionEventType.Started)
                        throw new RpcException(new Status(StatusCode.Unavailable, "the stream did not start"));
                    Raise(new HeliosEvent { Type = HeliosEventType.SessionStarted, SessionId = id });

                    var streamDone = CancellationTokenSource.CreateLinkedTokenSource(token);
                    var writer = WriteActionsAsync(call.RequestStream, streamDone.Token);
                    try
                    {
                        string closed = null;
                        while (await call.ResponseStream.MoveNext(token))
                        {
                            var reply = call.ResponseStream.Current;
                            if (reply.KindCase == V1.StreamResponse.KindOneofCase.Frame)
                            {
                                Deliver(reply.Frame, id);
                                continue;
                            }
                            var e = reply.Event;
                            var raised = new HeliosEvent { SessionId = id, ChunkIndex = e.ChunkIndex,
                                ActionSeq = e.ActionSeq, DroppedFrames = e.DroppedFrames, Message = e.Message };
                            if (e.Type == V1.SessionEventType.ChunkDone) raised.Type = HeliosEventType.ChunkDone;
                            else if (e.Type == V1.SessionEventType.FramesDropped) raised.Type = HeliosEventType.FramesDropped;
                            else if (e.Type == V1.SessionEventType.ActionRejected) raised.Type = HeliosEventType.ActionRejected;
                            else if (e.Type == V1.SessionEventType.Closed)
                            {
                                closed = e.Message.Length > 0 ? e.Message : "the server closed the session";
                                continue;
                            }
                            else continue;
                            Raise(raised);
                        }
                        // A CLOSED event: the session was lost with its engine worker (ABORTED, as the
                        // unary calls answer then) or the server is draining (UNAVAILABLE).
                        var lostWithWorker = closed != null && closed.Contains("lost with its engine worker");
                        throw new RpcException(new Status(lostWithWorker ? StatusCode.Aborted : StatusCode.Unavailable,
                                                          closed ?? "the server ended the stream"));
                    }
                    finally
                    {
                        // The writer ends with the stream, whichever way it ended; unsent actions
                        // stay queued for the next stream.
                        streamDone.Cancel();
                        try { await writer; } catch (Exception) { }
                        streamDone.Dispose();
                    }
                }
            }
            catch (Exception) when (token.IsCancellationRequested)
            {
                // Stopped: close the session so the server frees it now, not at its idle timeout.
                try
                {
                    await client.CloseSessionAsync(new V1.CloseSessionRequest { SessionId = id }, Auth(),
                        DateTime.UtcNow.AddSeconds(2));
                }
                catch (RpcException) { }
                lock (gate) sessionId = "";
                throw;
            }
        }

        async Task WriteActionsAsync(IClientStreamWriter<V1.StreamRequest> requests, CancellationToken token)
        {
            while (true)
            {
                await outboxReady.WaitAsync(token);
                V1.StreamAction next;
                if (outbox.TryDequeue(out next))
                    await requests.WriteAsync(new V1.StreamRequest { Action = next });
            }
        }

        void Deliver(V1.Frame f, string id)
        {
            var handler = FrameReceived;
            if (handler == null) return;
            handler(new HeliosFrame
            {
                SessionId = id,
                ChunkIndex = f.ChunkIndex,
                FrameIndex = f.FrameIndex,
                IndexInChunk = f.IndexInChunk,
                ActionSeq = f.ActionSeq,
                Width = (int)f.Width,
                Height = (int)f.Height,
                Encoding = (HeliosFrameEncoding)f.Encoding,
                Data = f.Data.ToByteArray(),
                ServerTimestampNs = f.TimestampNs,
                ReceivedUnixNs = (DateTime.UtcNow - new DateTime(1970, 1, 1, 0, 0, 0, DateTimeKind.Utc)).Ticks * 100,
            });
        }
    }
}
