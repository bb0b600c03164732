// The client core as a prebuilt static library plus grpc++, protobuf, abseil, re2, c-ares, upb,
// libjpeg-turbo (and optionally FFmpeg) static libraries, one folder per platform:
//
//   lib/Win64/*.lib    lib/Linux/*.a    lib/Mac/*.a
//
// Nothing there is committed: build them with integrations/unreal/CMakeLists.txt against a grpc of
// your own (vcpkg) and copy the .lib / .a files in (integrations/unreal/README.md, "Linking grpc++").
// The engine's own OpenSSL and zlib are linked instead of vcpkg's copies, so the two never clash.
using System.IO;
using System.Linq;
using UnrealBuildTool;

public class HeliosWorldCore : ModuleRules
{
	public HeliosWorldCore(ReadOnlyTargetRules Target) : base(Target)
	{
		Type = ModuleType.External;
		PublicIncludePaths.Add(Path.Combine(ModuleDirectory, "include"));

		string Platform = Target.Platform.ToString();
		string LibDir = Path.Combine(ModuleDirectory, "lib", Platform);
		string Pattern = Target.Platform == UnrealTargetPlatform.Win64 ? "*.lib" : "*.a";
		// The engine provides these; linking vcpkg's copies as well would define their symbols twice.
		string[] EngineProvided = { "libssl", "libcrypto", "ssl", "crypto", "zlib", "libz", "z" };
		string[] Libraries = Directory.Exists(LibDir)
			? Directory.GetFiles(LibDir, Pattern)
				.Where(File => !EngineProvided.Contains(Path.GetFileNameWithoutExtension(File)))
				.OrderBy(File => File)
				.ToArray()
			: new string[0];
		if (!Libraries.Any(File => Path.GetFileName(File).Contains("helios_world")))
		{
			throw new BuildException(
				"HeliosWorldCore: no helios_world library in " + LibDir + ". Build the client core and " +
				"copy it with grpc's libraries there: see integrations/unreal/README.md (Linking grpc++).");
		}
		PublicAdditionalLibraries.AddRange(Libraries);
		AddEngineThirdPartyPrivateStaticDependencies(Target, "OpenSSL", "zlib");

		if (Target.Platform == UnrealTargetPlatform.Win64)
		{
			// grpc's socket, DNS and certificate-store calls.
			PublicSystemLibraries.AddRange(new string[] { "ws2_32.lib", "crypt32.lib", "iphlpapi.lib", "bcrypt.lib" });
		}
	}
}
