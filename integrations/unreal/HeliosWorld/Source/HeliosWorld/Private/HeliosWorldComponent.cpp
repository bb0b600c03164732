// UHeliosWorldComponent (see HeliosWorldComponent.h): the engine side of the Helios World plugin.
#include "HeliosWorldComponent.h"

#include "Async/Async.h"
#include "Engine/Texture2D.h"
#include "Engine/World.h"
#include "GameFramework/PlayerController.h"
#include "HAL/PlatformMisc.h"
#include "HAL/Runnable.h"
#include "HAL/RunnableThread.h"
#include "InputCoreTypes.h"
#include "Misc/FileHelper.h"
#include "Misc/ScopeLock.h"
#include "RenderUtils.h"

THIRD_PARTY_INCLUDES_START
#include "helios_world/client.h"
THIRD_PARTY_INCLUDES_END

DEFINE_LOG_CATEGORY_STATIC(LogHeliosWorld, Log, All);

// The newest decoded frame, handed from the worker thread to the game thread. bUploadQueued keeps at
// most one game-thread task in flight however fast frames arrive.
struct FHeliosFrameSlot
{
	FCriticalSection Lock;
	TUniquePtr<helios_world::Frame> Latest;
	std::atomic<bool> bUploadQueued{false};
};

// The worker thread: runs the client core's loop (connect, stream, reconnect) until Stop().
class FHeliosWorldRunnable final : public FRunnable
{
public:
	FHeliosWorldRunnable(helios_world::ClientOptions Options, helios_world::FrameCallback OnFrame,
		helios_world::EventCallback OnEvent)
		: Client(std::move(Options), std::move(OnFrame), std::move(OnEvent))
	{
	}

	virtual uint32 Run() override
	{
		const helios_world::Status Result = Client.Run();
		return Result.ok() ? 0 : 1;
	}

	virtual void Stop() override { Client.Stop(); }

	helios_world::WorldClient Client;
};

namespace
{
FString ToFString(const std::string& Text) { return FString(UTF8_TO_TCHAR(Text.c_str())); }
std::string ToStd(const FString& Text) { return std::string(TCHAR_TO_UTF8(*Text)); }
}  // namespace

UHeliosWorldComponent::UHeliosWorldComponent()
{
	PrimaryComponentTick.bCanEverTick = true;
}

void UHeliosWorldComponent::BeginPlay()
{
	Super::BeginPlay();
	if (bAutoConnect)
	{
		Connect();
	}
}

void UHeliosWorldComponent::EndPlay(const EEndPlayReason::Type EndPlayReason)
{
	Disconnect();
	Super::EndPlay(EndPlayReason);
}

bool UHeliosWorldComponent::IsConnected() const { return Runnable != nullptr && Runnable->Client.streaming(); }

void UHeliosWorldComponent::Connect()
{
	if (Runnable != nullptr)
	{
		return;
	}
	helios_world::ClientOptions Options;
	Options.target = ToStd(ServerAddress);
	Options.token = ToStd(Token.IsEmpty() ? FPlatformMisc::GetEnvironmentVariable(TEXT("HELIOS_TOKEN")) : Token);
	Options.tls = bUseTls;
	if (bUseTls)
	{
		auto ReadPem = [](const FString& Path) {
			FString Pem;
			if (!Path.IsEmpty() && !FFileHelper::LoadFileToString(Pem, *Path))
			{
				UE_LOG(LogHeliosWorld, Error, TEXT("Helios: cannot read the PEM file %s"), *Path);
			}
			return ToStd(Pem);
		};
		Options.tls_root_certs_pem = ReadPem(TlsRootCertificatesFile);
		Options.tls_client_cert_pem = ReadPem(TlsClientCertificateFile);
		Options.tls_client_key_pem = ReadPem(TlsClientKeyFile);
	}
	Options.width = static_cast<uint32_t>(Width);
	Options.height = static_cast<uint32_t>(Height);
	Options.prompt = ToStd(Prompt);
	Options.seed = static_cast<uint64_t>(Seed);
	Options.encoding = static_cast<helios_world::Encoding>(Encoding);
	Options.mode = bFreeRun ? helios_world::StreamMode::kFreeRun : helios_world::StreamMode::kLockstep;
	Options.auto_advance = !bFreeRun;
	Options.pixel_format = helios_world::PixelFormat::kBgra8;  // PF_B8G8R8A8, no swizzle on upload

	Slot = MakeShared<FHeliosFrameSlot, ESPMode::ThreadSafe>();
	TWeakObjectPtr<UHeliosWorldComponent> WeakThis(this);
	TSharedPtr<FHeliosFrameSlot, ESPMode::ThreadSafe> FrameSlot = Slot;

	// Worker thread: keep the newest frame, post one upload task at a time.
	auto OnFrame = [WeakThis, FrameSlot](helios_world::Frame&& Frame)
	{
		{
			FScopeLock Guard(&FrameSlot->Lock);
			FrameSlot->Latest = MakeUnique<helios_world::Frame>(std::move(Frame));
		}
		if (!FrameSlot->bUploadQueued.exchange(true))
		{
			AsyncTask(ENamedThreads::GameThread, [WeakThis]()
			{
				if (UHeliosWorldComponent* Self = WeakThis.Get())
				{
					Self->UploadLatestFrame();
				}
			});
		}
	};

	// Worker thread: events go to the game thread, where the delegates fire.
	auto OnEvent = [WeakThis](const helios_world::Event& Event)
	{
		const helios_world::Event::Type Type = Event.type;
		const FString Session = ToFString(Event.session_id);
		FString Text = ToFString(helios_world::EventTypeName(Type));
		if (!Event.session_id.empty()) Text += TEXT(" ") + Session;
		if (!Event.status.ok()) Text += TEXT(": ") + ToFString(Event.status.ToString());
		AsyncTask(ENamedThreads::GameThread, [WeakThis, Type, Session, Text]()
		{
			UHeliosWorldComponent* Self = WeakThis.Get();
			if (Self == nullptr) return;
			Self->Status = Text;
			switch (Type)
			{
			case helios_world::Event::Type::kSessionStarted:
				UE_LOG(LogHeliosWorld, Log, TEXT("%s"), *Text);
				Self->OnSessionStarted.Broadcast(Session);
				break;
			case helios_world::Event::Type::kSessionLost:
				UE_LOG(LogHeliosWorld, Warning, TEXT("%s"), *Text);
				Self->OnSessionLost.Broadcast(Session, Text);
				break;
			case helios_world::Event::Type::kFatal:
				UE_LOG(LogHeliosWorld, Error, TEXT("%s"), *Text);
				Self->OnError.Broadcast(Text);
				break;
			default:
				break;
			}
		});
	};

	Runnable = new FHeliosWorldRunnable(Options, OnFrame, OnEvent);
	Thread = FRunnableThread::Create(Runnable, TEXT("HeliosWorldClient"), 0, TPri_Normal);
	Status = TEXT("connecting to ") + ServerAddress;
}

void UHeliosWorldComponent::Disconnect()
{
	if (Runnable == nullptr)
	{
		return;
	}
	Runnable->Stop();
	if (Thread != nullptr)
	{
		Thread->WaitForCompletion();  // Run() returns after the session is closed (2 s deadline)
		delete Thread;
		Thread = nullptr;
	}
	delete Runnable;
	Runnable = nullptr;
	Slot.Reset();
	Status = TEXT("disconnected");
}

void UHeliosWorldComponent::UploadLatestFrame()
{
	if (!Slot.IsValid())
	{
		return;
	}
	Slot->bUploadQueued = false;
	TUniquePtr<helios_world::Frame> Frame;
	{
		FScopeLock Guard(&Slot->Lock);
		Frame = MoveTemp(Slot->Latest);
	}
	if (!Frame.IsValid())
	{
		return;
	}
	const int32 W = static_cast<int32>(Frame->width);
	const int32 H = static_cast<int32>(Frame->height);
	if (WorldTexture == nullptr || WorldTexture->GetSizeX() != W || WorldTexture->GetSizeY() != H)
	{
		WorldTexture = UTexture2D::CreateTransient(W, H, PF_B8G8R8A8, TEXT("HeliosWorld"));
		WorldTexture->SRGB = true;
		WorldTexture->UpdateResource();
	}
	// The render thread copies the pixels later; the region and the frame live until the cleanup
	// callback runs there.
	FUpdateTextureRegion2D* Region = new FUpdateTextureRegion2D(0, 0, 0, 0, W, H);
	const int64 FrameIndex = static_cast<int64>(Frame->frame_index);
	helios_world::Frame* Pixels = Frame.Release();
	WorldTexture->UpdateTextureRegions(0, 1, Region, static_cast<uint32>(W * 4), 4, Pixels->pixels.data(),
		[Pixels](uint8* /*SrcData*/, const FUpdateTextureRegion2D* Regions)
		{
			delete Pixels;
			delete Regions;
		});
	OnFrame.Broadcast(WorldTexture, FrameIndex);  // Pixels may already be freed here
}

void UHeliosWorldComponent::TickComponent(float DeltaTime, ELevelTick TickType,
	FActorComponentTickFunction* ThisTickFunction)
{
	Super::TickComponent(DeltaTime, TickType, ThisTickFunction);
	if (bSendPlayerInput && IsConnected())
	{
		SendPlayerInput(DeltaTime);
	}
}

void UHeliosWorldComponent::SendPlayerInput(float DeltaTime)
{
	UWorld* World = GetWorld();
	APlayerController* Player = World ? World->GetFirstPlayerController() : nullptr;
	if (Player == nullptr)
	{
		return;
	}
	float Dx = 0.f, Dy = 0.f;
	Player->GetInputMouseDelta(Dx, Dy);
	MouseMotion += FVector2D(Dx, -Dy);  // Unreal's mouse y grows upwards, the contract's downwards
	SinceAction += DeltaTime;
	if (SinceAction < ActionInterval)
	{
		return;
	}
	TArray<FString> Keys;
	if (Player->IsInputKeyDown(EKeys::W)) Keys.Add(TEXT("w"));
	if (Player->IsInputKeyDown(EKeys::A)) Keys.Add(TEXT("a"));
	if (Player->IsInputKeyDown(EKeys::S)) Keys.Add(TEXT("s"));
	if (Player->IsInputKeyDown(EKeys::D)) Keys.Add(TEXT("d"));
	if (Player->IsInputKeyDown(EKeys::Up)) Keys.Add(TEXT("up"));
	if (Player->IsInputKeyDown(EKeys::Down)) Keys.Add(TEXT("down"));
	if (Player->IsInputKeyDown(EKeys::Left)) Keys.Add(TEXT("left"));
	if (Player->IsInputKeyDown(EKeys::Right)) Keys.Add(TEXT("right"));
	if (Player->IsInputKeyDown(EKeys::SpaceBar)) Keys.Add(TEXT("space"));
	if (Player->IsInputKeyDown(EKeys::LeftShift) || Player->IsInputKeyDown(EKeys::RightShift)) Keys.Add(TEXT("shift"));
	// Only what the model understands: the server refuses a key or axis outside its action space
	// (the toy world has no Space or Shift), and a refused action would drop the rest of the input.
	const helios_world::ServerInfo Info = Runnable->Client.server_info();
	if (Info.has_actions)
	{
		Keys.RemoveAll([&Info](const FString& Key) { return !Info.actions.HasKey(ToStd(Key)); });
		if (!Info.actions.HasAxis("mouse_dx")) MouseMotion.X = 0.f;
		if (!Info.actions.HasAxis("mouse_dy")) MouseMotion.Y = 0.f;
	}
	if (Keys.Num() == 0 && MouseMotion.SizeSquared() < 1.0)
	{
		return;
	}
	SendControl(Keys, MouseMotion.X, MouseMotion.Y);
	MouseMotion = FVector2D::ZeroVector;
	SinceAction = 0.f;
}

int64 UHeliosWorldComponent::SendPrompt(const FString& Text)
{
	Prompt = Text;
	return Runnable != nullptr ? static_cast<int64>(Runnable->Client.SendPrompt(ToStd(Text))) : 0;
}

int64 UHeliosWorldComponent::SendControl(const TArray<FString>& Keys, float MouseDx, float MouseDy, float CameraYaw,
	float CameraPitch, float CameraZoom)
{
	if (Runnable == nullptr)
	{
		return 0;
	}
	helios_world::ControlInput Input;
	for (const FString& Key : Keys)
	{
		Input.keys.push_back(ToStd(Key.ToLower()));
	}
	Input.mouse_dx = MouseDx;
	Input.mouse_dy = MouseDy;
	Input.camera_yaw = CameraYaw;
	Input.camera_pitch = CameraPitch;
	Input.camera_zoom = CameraZoom;
	return static_cast<int64>(Runnable->Client.SendControl(Input));
}

int64 UHeliosWorldComponent::SendMove(const FString& Move, const FString& Pan)
{
	if (Runnable == nullptr)
	{
		return 0;
	}
	return static_cast<int64>(Runnable->Client.SendMove(ToStd(Move.ToLower()), ToStd(Pan.ToLower())));
}

TArray<FString> UHeliosWorldComponent::GetMoves() const
{
	TArray<FString> Moves;
	if (Runnable != nullptr)
	{
		for (const std::string& Name : Runnable->Client.server_info().actions.moves)
		{
			Moves.Add(ToFString(Name));
		}
	}
	return Moves;
}
