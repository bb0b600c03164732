// UHeliosWorldComponent: streams a Helios world into a UTexture2D and sends the player's keyboard,
// mouse and prompts as actions.
//
// Threads: the client core (helios_world::WorldClient) runs on an FRunnable worker thread, where
// it reads the gRPC stream and decodes each frame to BGRA8. The newest decoded frame is kept in a
// slot (latest wins) and uploaded on the game thread, from a task posted with
// AsyncTask(ENamedThreads::GameThread, ...), through UTexture2D::UpdateTextureRegions. Events
// (session started / lost, errors) reach the game thread the same way and fire the delegates.
#pragma once

#include "Components/ActorComponent.h"
#include "CoreMinimal.h"

#include "HeliosWorldComponent.generated.h"

class FHeliosWorldRunnable;
class FRunnableThread;
class UTexture2D;
struct FHeliosFrameSlot;

UENUM(BlueprintType)
enum class EHeliosFrameEncoding : uint8
{
	// Raw rows, 737 KB a 384x640 frame: the same machine or a LAN.
	Rgb24 = 1 UMETA(DisplayName = "RGB24 (raw)"),
	// About 60 KB a frame; decoded by libjpeg-turbo on the worker thread.
	Jpeg = 2 UMETA(DisplayName = "JPEG"),
	// About 50 KB a frame; needs a core built with FFmpeg (HELIOS_WITH_FFMPEG).
	H264 = 3 UMETA(DisplayName = "H.264"),
};

DECLARE_DYNAMIC_MULTICAST_DELEGATE_TwoParams(FHeliosWorldFrameSignature, UTexture2D*, Texture, int64, FrameIndex);
DECLARE_DYNAMIC_MULTICAST_DELEGATE_OneParam(FHeliosWorldSessionSignature, const FString&, SessionId);
DECLARE_DYNAMIC_MULTICAST_DELEGATE_TwoParams(FHeliosWorldLostSignature, const FString&, SessionId, const FString&, Reason);
DECLARE_DYNAMIC_MULTICAST_DELEGATE_OneParam(FHeliosWorldErrorSignature, const FString&, Message);

UCLASS(ClassGroup = (Helios), meta = (BlueprintSpawnableComponent), BlueprintType)
class HELIOSWORLD_API UHeliosWorldComponent : public UActorComponent
{
	GENERATED_BODY()

public:
	UHeliosWorldComponent();

	// --- Server --------------------------------------------------------------------------------------
	/** host:port of `helios serve` (plaintext gRPC unless bUseTls). */
	UPROPERTY(EditAnywhere, BlueprintReadWrite, Category = "Helios|Server")
	FString ServerAddress = TEXT("127.0.0.1:50051");

	/** The server's token; empty uses the HELIOS_TOKEN environment variable. */
	UPROPERTY(EditAnywhere, BlueprintReadWrite, Category = "Helios|Server")
	FString Token;

	/** TLS, for a server started with --tls-cert / --tls-key (set it whenever the token leaves this machine). */
	UPROPERTY(EditAnywhere, BlueprintReadWrite, Category = "Helios|Server")
	bool bUseTls = false;

	/** PEM file of the CA that signed the server's certificate; empty: gRPC's default roots. */
	UPROPERTY(EditAnywhere, BlueprintReadWrite, Category = "Helios|Server", meta = (EditCondition = "bUseTls"))
	FString TlsRootCertificatesFile;

	/** Mutual TLS (--tls-client-ca): PEM files of this client's certificate chain and private key. */
	UPROPERTY(EditAnywhere, BlueprintReadWrite, Category = "Helios|Server", meta = (EditCondition = "bUseTls"))
	FString TlsClientCertificateFile;

	UPROPERTY(EditAnywhere, BlueprintReadWrite, Category = "Helios|Server", meta = (EditCondition = "bUseTls"))
	FString TlsClientKeyFile;

	/** Connect in BeginPlay. */
	UPROPERTY(EditAnywhere, BlueprintReadWrite, Category = "Helios|Server")
	bool bAutoConnect = true;

	// --- World ---------------------------------------------------------------------------------------
	/** Frame size; multiples of the server's size_multiple. 0: the server's default size (160x96 for
	 *  the default toy world, 640x384 for Helios). */
	UPROPERTY(EditAnywhere, BlueprintReadWrite, Category = "Helios|World")
	int32 Width = 0;

	UPROPERTY(EditAnywhere, BlueprintReadWrite, Category = "Helios|World")
	int32 Height = 0;

	/** The default toy world knows prompts of its grammar ('a BIOME at TIME [in WEATHER] [with
	 *  OBJECTS]', docs/eval.md); Helios itself takes free text. */
	UPROPERTY(EditAnywhere, BlueprintReadWrite, Category = "Helios|World", meta = (MultiLine = true))
	FString Prompt = TEXT("a meadow at noon with trees and sheep");

	UPROPERTY(EditAnywhere, BlueprintReadWrite, Category = "Helios|World")
	int64 Seed = 0;

	UPROPERTY(EditAnywhere, BlueprintReadWrite, Category = "Helios|World")
	EHeliosFrameEncoding Encoding = EHeliosFrameEncoding::Jpeg;

	/** Free-run: the world keeps going and the newest action applies at the next chunk. Off: lockstep,
	 *  one chunk per action, with the component requesting the next chunk when one is done. */
	UPROPERTY(EditAnywhere, BlueprintReadWrite, Category = "Helios|World")
	bool bFreeRun = true;

	// --- Input ---------------------------------------------------------------------------------------
	/** Send W A S D, the arrows, Space, Shift and mouse motion of the first local player as control
	 *  actions: those the server's model understands (GetServerInfo's action space; the toy world
	 *  knows W A S D, the arrows and mouse motion, not Space or Shift), the rest left out. */
	UPROPERTY(EditAnywhere, BlueprintReadWrite, Category = "Helios|Input")
	bool bSendPlayerInput = true;

	/** Seconds between control actions while keys are held or the mouse moves. */
	UPROPERTY(EditAnywhere, BlueprintReadWrite, Category = "Helios|Input", meta = (ClampMin = "0.05"))
	float ActionInterval = 0.25f;

	// --- Output --------------------------------------------------------------------------------------
	/** The world's newest frame (BGRA8, transient); assign it to a material parameter or a UI image. */
	UPROPERTY(BlueprintReadOnly, Transient, Category = "Helios")
	TObjectPtr<UTexture2D> WorldTexture;

	/** The latest connection state, for a status line. */
	UPROPERTY(BlueprintReadOnly, Transient, Category = "Helios")
	FString Status;

	UPROPERTY(BlueprintAssignable, Category = "Helios")
	FHeliosWorldFrameSignature OnFrame;

	UPROPERTY(BlueprintAssignable, Category = "Helios")
	FHeliosWorldSessionSignature OnSessionStarted;

	/** The server restarted, lost its worker or drained; the component reconnects by itself. */
	UPROPERTY(BlueprintAssignable, Category = "Helios")
	FHeliosWorldLostSignature OnSessionLost;

	/** Fatal: a refused token (UNAUTHENTICATED), another API version, a bad size. Not retried. */
	UPROPERTY(BlueprintAssignable, Category = "Helios")
	FHeliosWorldErrorSignature OnError;

	UFUNCTION(BlueprintCallable, Category = "Helios")
	void Connect();

	/** Stops the worker and closes the session on the server (blocks for at most ~2 s). */
	UFUNCTION(BlueprintCallable, Category = "Helios")
	void Disconnect();

	UFUNCTION(BlueprintCallable, Category = "Helios")
	bool IsConnected() const;

	/** Switch the world to a new prompt at the next chunk. Returns the action's sequence number. */
	UFUNCTION(BlueprintCallable, Category = "Helios")
	int64 SendPrompt(const FString& Text);

	/** Keys among w a s d space shift; mouse motion in pixels (x right, y down); camera in degrees. */
	UFUNCTION(BlueprintCallable, Category = "Helios")
	int64 SendControl(const TArray<FString>& Keys, float MouseDx, float MouseDy, float CameraYaw = 0.f,
		float CameraPitch = 0.f, float CameraZoom = 0.f);

	/** A learned move and camera pan, for models with moves (the toy world: stay n ne e se s sw w nw;
	 *  GetMoves lists them); an empty name is "stay". A model without moves refuses it. */
	UFUNCTION(BlueprintCallable, Category = "Helios")
	int64 SendMove(const FString& Move, const FString& Pan = TEXT(""));

	/** The move names the server's model understands (empty before the handshake, or without moves). */
	UFUNCTION(BlueprintCallable, Category = "Helios")
	TArray<FString> GetMoves() const;

	virtual void BeginPlay() override;
	virtual void EndPlay(const EEndPlayReason::Type EndPlayReason) override;
	virtual void TickComponent(float DeltaTime, ELevelTick TickType, FActorComponentTickFunction* ThisTickFunction) override;

private:
	void UploadLatestFrame();
	void SendPlayerInput(float DeltaTime);

	FHeliosWorldRunnable* Runnable = nullptr;  // owned; a raw pointer keeps the type private
	FRunnableThread* Thread = nullptr;
	TSharedPtr<FHeliosFrameSlot, ESPMode::ThreadSafe> Slot;
	FVector2D MouseMotion = FVector2D::ZeroVector;
	float SinceAction = 0.f;
};
