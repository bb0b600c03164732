// Frame decoders of the client core: wire bytes (RGB24 rows, one JPEG, one H.264 access unit) to
// tightly packed RGB / RGBA / BGRA rows. Internal to the library (not installed).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "helios_world/client.h"

namespace helios_world {
namespace internal {

class FrameDecoder {
 public:
  // A decoder for `encoding` into `format`; nullptr with `status` set when this build lacks it.
  static std::unique_ptr<FrameDecoder> Create(Encoding encoding, PixelFormat format, Status* status);

  virtual ~FrameDecoder() = default;
  // Decodes one frame of `width` x `height` into `out` (resized to fit). H.264 is stateful: frames
  // must come in stream order, and frames before the first keyframe are refused (DATA_LOSS).
  virtual Status Decode(const std::string& data, uint32_t width, uint32_t height, bool keyframe,
                        std::vector<uint8_t>* out) = 0;
};

}  // namespace internal
}  // namespace helios_world
