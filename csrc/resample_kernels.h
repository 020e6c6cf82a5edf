// The inner loops of the resampler (resample.cpp), one set per instruction
// set: the multiply-adds of both passes and the rounding to bytes. Each set
// computes the same exact 32-bit sums, so all give the same bytes.
#pragma once

#include <cstddef>
#include <cstdint>

#include "resample.h"

namespace wbc {

constexpr int kPrecisionBits = 22;  // Pillow: 32 - 8 bits of result - 2 bits of headroom
constexpr std::int32_t kHalf = 1 << (kPrecisionBits - 1);

// Source rows are transposed in strips of this many rows, so that the
// horizontal pass becomes a contiguous multiply-add over kStripRows * 3 values.
constexpr int kStripRows = 8;
constexpr int kStripLanes = kStripRows * 3;

struct Kernels {
    const char* name;
    // One strip: `strip` holds source columns of kStripLanes bytes (rows x
    // RGB; lanes of rows >= n are junk) and two spare columns of junk, which
    // kernels may read (times a zero weight, or into unused lanes). Writes n
    // rows of out_w RGB pixels to `out`.
    void (*horizontal)(const std::uint8_t* strip, const Taps& taps, int n, int out_w, std::uint8_t* out);
    // `rows` points at source row `y_first` of packed RGB rows, `row_stride`
    // bytes apart (negative for flipped images), width * 3 values each.
    // Writes out_h rows of width * 3 values to `dst`.
    void (*vertical)(const std::uint8_t* rows, std::ptrdiff_t row_stride, const Taps& taps, int y_first,
                     int out_h, int width, std::uint8_t* dst);
};

extern const Kernels kPortableKernels;  // resample_portable.cpp
#if defined(__x86_64__) || defined(__i386__)
#define WBC_HAVE_AVX2_KERNELS 1
extern const Kernels kAvx2Kernels;  // resample_avx2.cpp
#endif

}  // namespace wbc
