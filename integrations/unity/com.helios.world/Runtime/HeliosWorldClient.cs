// HeliosWorldClient: a MonoBehaviour that streams a helios world into a Texture2D and sends the
// player's keyboard and mouse (and prompts) back as actions.
//
// The HeliosWorldSession runs on the thread pool; frames arrive there, RGB24 rows are flipped to
// Unity's bottom-up order there, and only the newest frame is kept. Update() (the main thread)
// uploads it: RGB24 with LoadRawTextureData + Apply, JPEG with ImageConversion.LoadImage (a Unity
// API, so it decodes on the main thread). Events are queued and raised from Update() too.
using System.Collections.Concurrent;
using System.Collections.Generic;
using UnityEngine;

namespace Helios.World
{
    [AddComponentMenu("Helios/Helios World Client")]
    public sealed class HeliosWorldClient : MonoBehaviour
    {
        [Header("Server")]
        [Tooltip("http://host:port for a plaintext server (helios serve), https:// with TLS")]
        public string address = "http://127.0.0.1:50051";
        [Tooltip("The server's token; empty: the HELIOS_TOKEN environment variable")]
        public string token = "";
        [Tooltip("https:// only: PEM file of the CA that signed the server's certificate (empty: built-in roots)")]
        public string rootCertificatesFile = "";
        [Tooltip("Mutual TLS (helios serve --tls-client-ca): PEM files of this client's certificate and key")]
        public string clientCertificateFile = "";
        public string clientKeyFile = "";

        [Header("World")]
        public int width = 640;
        public int height = 384;
        [TextArea] public string prompt = "a meadow at noon with trees and sheep";
        public ulong seed;
        [Tooltip("JPEG: ~60 KB a 384x640 frame, decoded on the main thread. RGB24: 737 KB, no decode.")]
        public HeliosFrameEncoding encoding = HeliosFrameEncoding.Jpeg;
        [Tooltip("Free-run: the world keeps going and the newest action applies at the next chunk")]
        public bool freeRun = true;

        [Header("Input")]
        [Tooltip("Send W A S D, the arrows, Space, Shift and mouse motion as control actions (legacy Input " +
                 "Manager): those the server's model understands, the rest left out")]
        public bool sendKeyboardAndMouse = true;
        [Tooltip("Seconds between control actions while input is active")]
        public float actionInterval = 0.25f;

        /// <summary>The world's latest frame (null until the first arrives).</summary>
        public Texture2D Texture { get; private set; }
        public string SessionId { get { return session != null ? session.SessionId : ""; } }
        /// <summary>The latest event, for a status line.</summary>
        public string Status { get; private set; }

        public event System.Action<Texture2D> FrameArrived;
        public event System.Action<HeliosEvent> EventArrived;

        HeliosWorldSession session;
        readonly object latestGate = new object();
        HeliosFrame latest;
        readonly ConcurrentQueue<HeliosEvent> events = new ConcurrentQueue<HeliosEvent>();
        Vector3 lastMouse;
        Vector2 mouseMotion;
        float lastAction;

        void OnEnable()
        {
            var options = new HeliosSessionOptions
            {
                Address = address,
                Token = string.IsNullOrEmpty(token)
                    ? System.Environment.GetEnvironmentVariable("HELIOS_TOKEN") ?? ""
                    : token,
                Width = width,
                Height = height,
                Prompt = prompt,
                Seed = seed,
                Encoding = encoding,
                FreeRun = freeRun,
                RootCertificatesPem = ReadPem(rootCertificatesFile),
                ClientCertificatePem = ReadPem(clientCertificateFile),
                ClientKeyPem = ReadPem(clientKeyFile),
            };
            session = new HeliosWorldSession(options);
            session.FrameReceived += OnFrame;
            session.EventRaised += e => events.Enqueue(e);
            session.Start();
            Status = "connecting to " + address;
#if ENABLE_LEGACY_INPUT_MANAGER
            lastMouse = Input.mousePosition;  // throws when only the new Input System is enabled
#endif
        }

        static string ReadPem(string path)
        {
            return string.IsNullOrEmpty(path) ? "" : System.IO.File.ReadAllText(path);
        }

        void OnDisable()
        {
            if (session == null) return;
            session.Stop();  // cancels the stream and closes the session in the background
            session = null;
        }

        void OnDestroy()
        {
            if (Texture != null) Destroy(Texture);
        }

        // Thread pool: keep only the newest frame; flip raw rows to Unity's bottom-up layout here.
        void OnFrame(HeliosFrame frame)
        {
            if (frame.Encoding == HeliosFrameEncoding.Rgb24) frame.Data = FlipRows(frame.Data, frame.Width * 3);
            lock (latestGate) latest = frame;
        }

        static byte[] FlipRows(byte[] data, int stride)
        {
            var rows = data.Length / stride;
            var flipped = new byte[data.Length];
            for (int r = 0; r < rows; r++)
                System.Buffer.BlockCopy(data, r * stride, flipped, (rows - 1 - r) * stride, stride);
            return flipped;
        }

        void Update()
        {
            HeliosEvent e;
            while (events.TryDequeue(out e))
            {
                Status = e.ToString();
                if (e.Type == HeliosEventType.Fatal) Debug.LogError("Helios: " + e);
                else if (e.Type == HeliosEventType.SessionLost) Debug.LogWarning("Helios: " + e);
                if (EventArrived != null) EventArrived(e);
            }

            HeliosFrame frame;
            lock (latestGate)
            {
                frame = latest;
                latest = null;
            }
            if (frame != null) Upload(frame);
            if (sendKeyboardAndMouse) SendInput();
        }

        void Upload(HeliosFrame frame)
        {
            if (Texture == null || Texture.width != frame.Width || Texture.height != frame.Height)
            {
                if (Texture != null) Destroy(Texture);
                Texture = new Texture2D(frame.Width, frame.Height, TextureFormat.RGB24, false);
                Texture.name = "Helios World";
            }
            if (frame.Encoding == HeliosFrameEncoding.Rgb24)
            {
                Texture.LoadRawTextureData(frame.Data);
                Texture.Apply(false);
            }
            else if (!ImageConversion.LoadImage(Texture, frame.Data))
            {
                Debug.LogWarning("Helios: frame " + frame.FrameIndex + " is not a JPEG Unity can read");
                return;
            }
            if (FrameArrived != null) FrameArrived(Texture);
        }

        /// <summary>Switch the world to a new prompt at the next chunk.</summary>
        public void SendPrompt(string text)
        {
            prompt = text;
            if (session != null) session.SendPrompt(text);
        }

        /// <summary>Send keys, mouse pixels and camera degrees yourself: keys and fields the server's
        /// model understands (ServerInfo.Model.Actions; others are refused).</summary>
        public void SendControl(IEnumerable<string> keys, float mouseDx, float mouseDy,
                                float cameraYaw = 0, float cameraPitch = 0, float cameraZoom = 0)
        {
            if (session != null) session.SendControl(keys, mouseDx, mouseDy, cameraYaw, cameraPitch, cameraZoom);
        }

        /// <summary>Move the agent of a model with learned moves (the toy world: stay n ne e se s sw w
        /// nw) while the camera pans; an empty name is "stay".</summary>
        public void SendMove(string move, string pan = "")
        {
            if (session != null) session.SendMove(move, pan);
        }

        void SendInput()
        {
#if ENABLE_LEGACY_INPUT_MANAGER
            var mouse = Input.mousePosition;
            // Screen y grows upwards, the contract's mouse_dy downwards.
            mouseMotion += new Vector2(mouse.x - lastMouse.x, lastMouse.y - mouse.y);
            lastMouse = mouse;
            if (Time.unscaledTime - lastAction < actionInterval) return;
            var keys = new List<string>();
            if (Input.GetKey(KeyCode.W)) keys.Add("w");
            if (Input.GetKey(KeyCode.A)) keys.Add("a");
            if (Input.GetKey(KeyCode.S)) keys.Add("s");
            if (Input.GetKey(KeyCode.D)) keys.Add("d");
            if (Input.GetKey(KeyCode.UpArrow)) keys.Add("up");
            if (Input.GetKey(KeyCode.DownArrow)) keys.Add("down");
            if (Input.GetKey(KeyCode.LeftArrow)) keys.Add("left");
            if (Input.GetKey(KeyCode.RightArrow)) keys.Add("right");
            if (Input.GetKey(KeyCode.Space)) keys.Add("space");
            if (Input.GetKey(KeyCode.LeftShift) || Input.GetKey(KeyCode.RightShift)) keys.Add("shift");
            // Only what the model understands: the server refuses a key or axis outside its action
            // space (the default toy world has no Space or Shift). Servers before API 1.1 say nothing.
            var info = session != null ? session.ServerInfo : null;
            var space = info != null && info.Model != null ? info.Model.Actions : null;
            if (space != null)
            {
                keys.RemoveAll(k => !space.Keys.Contains(k));
                if (!space.Axes.Contains("mouse_dx")) mouseMotion.x = 0f;
                if (!space.Axes.Contains("mouse_dy")) mouseMotion.y = 0f;
            }
            if (keys.Count == 0 && mouseMotion.sqrMagnitude < 1f) return;
            SendControl(keys, mouseMotion.x, mouseMotion.y);
            mouseMotion = Vector2.zero;
            lastAction = Time.unscaledTime;
#endif
        }
    }
}
