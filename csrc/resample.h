// Antialiased bilinear resampling of 8-bit images, bit-exact with Pillow's
// Image.resize(size, Image.BILINEAR, box) (src/libImaging/Resample.c, Pillow
// 13): the same filter coefficients, the same 22-bit fixed point, the same two
// passes in the same order with an 8-bit image in between.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace wbc {

// A read-only view of one source image: `channels` is 1 (gray), 3 (RGB) or
// 4 (RGBA, alpha ignored). Strides are in bytes and may be negative.
struct ImageView {
    const std::uint8_t* data;
    int height;
    int width;
    int channels;
    std::ptrdiff_t row_stride;
    std::ptrdiff_t col_stride;
    std::ptrdiff_t channel_stride;
};

// The source region to resample, in source pixel coordinates (Pillow's `box`).
// Pillow keeps these as float, which matters for exact results.
struct Box {
    float x0, y0, x1, y1;
};

// Filter taps of a 1-D resampling: for output i, `count[i]` taps starting at
// source index `first[i]`, weights k[i * ksize + t] in 22-bit fixed point.
//
// The same weights for kernels that multiply 16-bit pairs (vpmaddwd): each
// weight, in [0, 2^22] for bilinear, split as w = hi * 2^11 + lo with lo in
// [0, 2^11), so both halves fit int16. Taps 2j and 2j + 1 of output i give
// pair_weights[(i * pairs + j) * 2 + {0, 1}] = hi_2j | hi_2j+1 << 16 and
// lo_2j | lo_2j+1 << 16. An odd count's last pair has a zero second weight.
struct Taps {
    int ksize = 0;
    std::vector<int> first;
    std::vector<int> count;
    std::vector<std::int32_t> k;
    int pairs = 0;
    std::vector<std::int32_t> pair_weights;
};

constexpr int kWeightSplitBits = 11;  // w = hi << 11 | lo, see Taps

Taps compute_taps(int in_size, float in0, float in1, int out_size);

// The taps of the last resampling asked for: a batch of same-size images
// computes them once instead of per image.
class TapsCache {
public:
    const Taps& get(int in_size, float in0, float in1, int out_size) {
        if (in_size != in_size_ || in0 != in0_ || in1 != in1_ || out_size != out_size_) {
            taps_ = compute_taps(in_size, in0, in1, out_size);
            in_size_ = in_size;
            in0_ = in0;
            in1_ = in1;
            out_size_ = out_size;
        }
        return taps_;
    }

private:
    int in_size_ = -1;
    float in0_ = 0.0f, in1_ = 0.0f;
    int out_size_ = -1;
    Taps taps_;
};

// Per-thread scratch memory, reused across images to avoid allocations.
struct Scratch {
    TapsCache horizontal_taps;
    TapsCache vertical_taps;
    std::vector<std::uint8_t> strip;      // a strip of source rows, column-major
    std::vector<std::uint8_t> rows;       // rows between the passes, or converted to RGB
    std::vector<std::uint8_t> columns;    // the vertical pass's output when it runs first
};

// Resizes `src` (the region `box` of it) to out_h x out_w RGB, writing
// out_h * out_w * 3 bytes, C-contiguous, to `dst`.
void resize_rgb(const ImageView& src, const Box& box, int out_h, int out_w,
                std::uint8_t* dst, Scratch& scratch);

// The resampling kernels, by name: "avx2" (x86-64 with AVX2) and "portable"
// (vector extensions: NEON, SSE2). The best one this CPU runs is chosen at
// load; tests force each. Every kernel gives the same bytes.
//
// Every known kernel, with "" if this build and CPU can run it, else why not.
std::vector<std::pair<std::string, std::string>> kernel_support();
// Makes `name` the kernel of later resizes (all threads) and returns the
// previous one's name; throws std::invalid_argument for an unknown name and
// std::runtime_error for one this CPU cannot run.
std::string set_kernel(const std::string& name);

}  // namespace wbc
