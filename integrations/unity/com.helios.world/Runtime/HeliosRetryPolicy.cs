// HeliosRetryPolicy: the retry policy every helios client uses and the keepalive that goes with it.
// `Json` is the gRPC service config of helios_sdk/retry_policy.json, the same text (quotes doubled
// for the verbatim string; tests/sdk/test_retry_policy.py compares the copies): gRPC retries
// UNAVAILABLE, and only on GetServerInfo, Reset, Step (made idempotent by its action_seq) and
// CloseSession; this client calls the first two and streams. ABORTED, a session lost with its
// engine worker, is never retried. Grpc.Net.Client takes its service config as objects, not JSON,
// so ServiceConfig() reads the text into them.
using System;
using System.Globalization;
using System.Text.RegularExpressions;
using Grpc.Core;
using Grpc.Net.Client.Configuration;

namespace Helios.World
{
    public static class HeliosRetryPolicy
    {
        public const string Json = @"{
  ""methodConfig"": [
    {
      ""name"": [
        {""service"": ""helios.v1.WorldService"", ""method"": ""GetServerInfo""},
        {""service"": ""helios.v1.WorldService"", ""method"": ""Reset""},
        {""service"": ""helios.v1.WorldService"", ""method"": ""Step""},
        {""service"": ""helios.v1.WorldService"", ""method"": ""CloseSession""}
      ],
      ""retryPolicy"": {
        ""maxAttempts"": 5,
        ""initialBackoff"": ""0.2s"",
        ""maxBackoff"": ""5s"",
        ""backoffMultiplier"": 2,
        ""retryableStatusCodes"": [""UNAVAILABLE""]
      }
    }
  ]
}
";

        /// <summary>A ping after 30 s without traffic, even with no call open; the server accepts pings
        /// 10 s apart, so it never closes the connection for "too_many_pings".</summary>
        public const int KeepaliveTimeMs = 30000;
        public const int KeepaliveTimeoutMs = 20000;

        /// <summary>The policy as Grpc.Net.Client's ServiceConfig (GrpcChannelOptions.ServiceConfig).</summary>
        public static ServiceConfig ServiceConfig()
        {
            var policy = new RetryPolicy
            {
                MaxAttempts = int.Parse(Field("maxAttempts", @"(\d+)"), CultureInfo.InvariantCulture),
                InitialBackoff = Seconds(Field("initialBackoff", @"""([0-9.]+)s""")),
                MaxBackoff = Seconds(Field("maxBackoff", @"""([0-9.]+)s""")),
                BackoffMultiplier = double.Parse(Field("backoffMultiplier", @"([0-9.]+)"), CultureInfo.InvariantCulture),
            };
            foreach (Match code in Regex.Matches(Field("retryableStatusCodes", @"\[([^\]]*)\]"), @"""(\w+)"""))
                policy.RetryableStatusCodes.Add(StatusCodeNamed(code.Groups[1].Value));
            var method = new MethodConfig { RetryPolicy = policy };
            foreach (Match name in Regex.Matches(Json, @"\{""service"": ""([\w.]+)"", ""method"": ""(\w+)""\}"))
                method.Names.Add(new MethodName { Service = name.Groups[1].Value, Method = name.Groups[2].Value });
            var config = new ServiceConfig();
            config.MethodConfigs.Add(method);
            return config;
        }

        static string Field(string key, string valuePattern)
        {
            var match = Regex.Match(Json, @"""" + key + @""":\s*" + valuePattern);
            if (!match.Success) throw new FormatException("the retry policy has no " + key);
            return match.Groups[1].Value;
        }

        // Whole ticks, rounded: Mono's TimeSpan.FromSeconds(0.2) truncates to 0.1999999 s.
        static TimeSpan Seconds(string text)
        {
            var seconds = double.Parse(text, CultureInfo.InvariantCulture);
            return TimeSpan.FromTicks((long)Math.Round(seconds * TimeSpan.TicksPerSecond));
        }

        // "UNAVAILABLE" -> StatusCode.Unavailable, "DEADLINE_EXCEEDED" -> StatusCode.DeadlineExceeded.
        static StatusCode StatusCodeNamed(string name)
        {
            var pascal = "";
            foreach (var part in name.ToLowerInvariant().Split('_'))
                pascal += char.ToUpperInvariant(part[0]) + part.Substring(1);
            return (StatusCode)Enum.Parse(typeof(StatusCode), pascal);
        }
    }
}
