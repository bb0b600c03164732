// The plugin's runtime module: UHeliosWorldComponent and its worker thread. It includes only the
// client core's engine-free header (helios_world/client.h); grpc++ and protobuf are linked through
// the HeliosWorldCore third-party module and never seen by this module's compiler.
using UnrealBuildTool;

public class HeliosWorld : ModuleRules
{
	public HeliosWorld(ReadOnlyTargetRules Target) : base(Target)
	{
		PCHUsage = PCHUsageMode.UseExplicitOrSharedPCHs;
		CppStandard = CppStandardVersion.Cpp17;

		PublicDependencyModuleNames.AddRange(new string[] { "Core", "CoreUObject", "Engine", "InputCore" });
		PrivateDependencyModuleNames.AddRange(new string[] { "HeliosWorldCore" });
	}
}
