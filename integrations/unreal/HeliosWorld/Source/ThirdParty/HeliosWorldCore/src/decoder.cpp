// Frame decoders: RGB24 (a row copy or an alpha expansion), JPEG (libturbojpeg) and H.264
// (libavcodec, then libswscale from YUV 4:2:0 to the output layout).
#include "decoder.h"

#include <cstring>
#include <string>
#include <utility>

#ifdef HELIOS_WITH_TURBOJPEG
#include <turbojpeg.h>
#endif

#ifdef HELIOS_WITH_FFMPEG
extern "C" {
#include <libavcodec/avcodec.h>
#include <libavutil/error.h>
#include <libavutil/frame.h>
#include <libavutil/pixfmt.h>
#include <libswscale/swscale.h>
}
#endif

namespace helios_world {
namespace internal {
namespace {

Status Error(StatusCode code, std::string message) { return Status{code, std::move(message)}; }

std::string Size(uint32_t width, uint32_t height) {
  return std::to_string(width) + "x" + std::to_string(height);
}

// ---------------------------------------------------------------------------------------------------
// RGB24
// ---------------------------------------------------------------------------------------------------

class Rgb24Decoder final : public FrameDecoder {
 public:
  explicit Rgb24Decoder(PixelFormat format) : format_(format) {}

  Status Decode(const std::string& data, uint32_t width, uint32_t height, bool /*keyframe*/,
                std::vector<uint8_t>* out) override {
    const size_t pixels = static_cast<size_t>(width) * height;
    if (data.size() != pixels * 3) {
      return Error(StatusCode::kDataLoss, "an RGB24 frame of " + Size(width, height) + " needs " +
                                              std::to_string(pixels * 3) + " bytes, got " +
                                              std::to_string(data.size()));
    }
    const auto* src = reinterpret_cast<const uint8_t*>(data.data());
    if (format_ == PixelFormat::kRgb8) {
      out->assign(src, src + data.size());
      return Status{};
    }
    out->resize(pixels * 4);
    uint8_t* dst = out->data();
    // BGRA swaps R and B; both layouts get an opaque alpha.
    const int r = format_ == PixelFormat::kBgra8 ? 2 : 0;
    const int b = 2 - r;
    for (size_t i = 0; i < pixels; ++i, src += 3, dst += 4) {
      dst[r] = src[0];
      dst[1] = src[1];
      dst[b] = src[2];
      dst[3] = 255;
    }
    return Status{};
  }

 private:
  PixelFormat format_;
};

// ---------------------------------------------------------------------------------------------------
// JPEG
// ---------------------------------------------------------------------------------------------------

#ifdef HELIOS_WITH_TURBOJPEG
class JpegDecoder final : public FrameDecoder {
 public:
  explicit JpegDecoder(PixelFormat format) : format_(format), handle_(tjInitDecompress()) {}
  ~JpegDecoder() override {
    if (handle_ != nullptr) tjDestroy(handle_);
  }

  Status Decode(const std::string& data, uint32_t width, uint32_t height, bool /*keyframe*/,
                std::vector<uint8_t>* out) override {
    if (handle_ == nullptr) return Error(StatusCode::kInternal, "tjInitDecompress failed");
    auto* src = reinterpret_cast<unsigned char*>(const_cast<char*>(data.data()));
    const auto size = static_cast<unsigned long>(data.size());
    int w = 0, h = 0, subsampling = 0, colorspace = 0;
    if (tjDecompressHeader3(handle_, src, size, &w, &h, &subsampling, &colorspace) != 0) {
      return Error(StatusCode::kDataLoss, std::string("not a JPEG: ") + tjGetErrorStr2(handle_));
    }
    if (static_cast<uint32_t>(w) != width || static_cast<uint32_t>(h) != height) {
      return Error(StatusCode::kDataLoss, "the JPEG is " + Size(w, h) + ", the frame says " +
                                              Size(width, height));
    }
    int pixel_format = TJPF_RGBA;
    if (format_ == PixelFormat::kRgb8) pixel_format = TJPF_RGB;
    if (format_ == PixelFormat::kBgra8) pixel_format = TJPF_BGRA;
    out->resize(static_cast<size_t>(w) * h * BytesPerPixel(format_));
    if (tjDecompress2(handle_, src, size, out->data(), w, 0, h, pixel_format, 0) != 0) {
      return Error(StatusCode::kDataLoss, std::string("JPEG decode: ") + tjGetErrorStr2(handle_));
    }
    return Status{};
  }

 private:
  PixelFormat format_;
  tjhandle handle_;
};
#endif

// ---------------------------------------------------------------------------------------------------
// H.264
// ---------------------------------------------------------------------------------------------------

#ifdef HELIOS_WITH_FFMPEG
std::string AvError(int code) {
  char text[AV_ERROR_MAX_STRING_SIZE] = {0};
  av_strerror(code, text, sizeof text);
  return text;
}

class H264Decoder final : public FrameDecoder {
 public:
  explicit H264Decoder(PixelFormat format) : format_(format) {
    const AVCodec* codec = avcodec_find_decoder(AV_CODEC_ID_H264);
    if (codec == nullptr) {
      init_error_ = "this libavcodec has no H.264 decoder";
      return;
    }
    context_ = avcodec_alloc_context3(codec);
    packet_ = av_packet_alloc();
    frame_ = av_frame_alloc();
    // One thread and low delay: frame threading would hold frames back (one per thread), and a
    // game wants every access unit out as soon as it arrives.
    context_->thread_count = 1;
    context_->flags |= AV_CODEC_FLAG_LOW_DELAY;
    const int opened = avcodec_open2(context_, codec, nullptr);
    if (opened < 0) init_error_ = "avcodec_open2: " + AvError(opened);
  }

  ~H264Decoder() override {
    sws_freeContext(scaler_);
    av_frame_free(&frame_);
    av_packet_free(&packet_);
    avcodec_free_context(&context_);
  }

  Status Decode(const std::string& data, uint32_t width, uint32_t height, bool keyframe,
                std::vector<uint8_t>* out) override {
    if (!init_error_.empty()) return Error(StatusCode::kInternal, init_error_);
    if (!seen_keyframe_ && !keyframe) {
      return Error(StatusCode::kDataLoss, "an H.264 frame before the first keyframe (IDR)");
    }
    seen_keyframe_ = true;
    packet_->data = reinterpret_cast<uint8_t*>(const_cast<char*>(data.data()));
    packet_->size = static_cast<int>(data.size());
    int sent = avcodec_send_packet(context_, packet_);
    if (sent < 0) return Error(StatusCode::kDataLoss, "H.264 send_packet: " + AvError(sent));
    const int got = avcodec_receive_frame(context_, frame_);
    if (got < 0) {
      return Error(StatusCode::kDataLoss,
                   "H.264 access unit gave no picture (" + AvError(got) +
                       "); the server sends one complete access unit per frame");
    }
    if (static_cast<uint32_t>(frame_->width) != width ||
        static_cast<uint32_t>(frame_->height) != height) {
      av_frame_unref(frame_);
      return Error(StatusCode::kDataLoss, "the H.264 picture is " +
                                              Size(frame_->width, frame_->height) +
                                              ", the frame says " + Size(width, height));
    }
    AVPixelFormat target = AV_PIX_FMT_RGBA;
    if (format_ == PixelFormat::kRgb8) target = AV_PIX_FMT_RGB24;
    if (format_ == PixelFormat::kBgra8) target = AV_PIX_FMT_BGRA;
    scaler_ = sws_getCachedContext(scaler_, frame_->width, frame_->height,
                                   static_cast<AVPixelFormat>(frame_->format), frame_->width,
                                   frame_->height, target, SWS_BILINEAR, nullptr, nullptr, nullptr);
    if (scaler_ == nullptr) {
      av_frame_unref(frame_);
      return Error(StatusCode::kInternal, "sws_getCachedContext failed");
    }
    const int stride = static_cast<int>(width) * BytesPerPixel(format_);
    out->resize(static_cast<size_t>(stride) * height);
    uint8_t* planes[4] = {out->data(), nullptr, nullptr, nullptr};
    int strides[4] = {stride, 0, 0, 0};
    sws_scale(scaler_, frame_->data, frame_->linesize, 0, frame_->height, planes, strides);
    av_frame_unref(frame_);
    return Status{};
  }

 private:
  PixelFormat format_;
  AVCodecContext* context_ = nullptr;
  AVPacket* packet_ = nullptr;
  AVFrame* frame_ = nullptr;
  SwsContext* scaler_ = nullptr;
  bool seen_keyframe_ = false;
  std::string init_error_;
};
#endif

}  // namespace

std::unique_ptr<FrameDecoder> FrameDecoder::Create(Encoding encoding, PixelFormat format,
                                                   Status* status) {
  *status = Status{};
  switch (encoding) {
    case Encoding::kRgb24:
      return std::make_unique<Rgb24Decoder>(format);
    case Encoding::kJpeg:
#ifdef HELIOS_WITH_TURBOJPEG
      return std::make_unique<JpegDecoder>(format);
#else
      *status = Error(StatusCode::kInvalidArgument,
                      "this build of helios_world cannot decode JPEG: build it with libturbojpeg "
                      "(HELIOS_WITH_TURBOJPEG) or ask for RGB24");
      return nullptr;
#endif
    case Encoding::kH264:
#ifdef HELIOS_WITH_FFMPEG
      return std::make_unique<H264Decoder>(format);
#else
      *status = Error(StatusCode::kInvalidArgument,
                      "this build of helios_world cannot decode H.264: build it with libavcodec and "
                      "libswscale (HELIOS_WITH_FFMPEG) or ask for JPEG / RGB24");
      return nullptr;
#endif
    case Encoding::kUnspecified:
      break;  // a client decodes what it asked for, so it must name it
  }
  *status = Error(StatusCode::kInvalidArgument,
                  "unknown frame encoding " + std::to_string(static_cast<int>(encoding)));
  return nullptr;
}

}  // namespace internal

bool DecoderAvailable(Encoding encoding) {
  switch (encoding) {
    case Encoding::kRgb24:
      return true;
    case Encoding::kJpeg:
#ifdef HELIOS_WITH_TURBOJPEG
      return true;
#else
      return false;
#endif
    case Encoding::kH264:
#ifdef HELIOS_WITH_FFMPEG
      return true;
#else
      return false;
#endif
    case Encoding::kUnspecified:
      return false;
  }
  return false;
}

}  // namespace helios_world
