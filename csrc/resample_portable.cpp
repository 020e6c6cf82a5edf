// The portable kernels: GCC/Clang vector extensions (NEON on ARM, SSE2 on an
// x86-64 without AVX2), a 32-bit multiply per tap and lane.
#include <cstring>

#include "resample_kernels.h"

namespace wbc {
namespace {

typedef std::int32_t v8i __attribute__((vector_size(32)));
typedef std::uint8_t v8u __attribute__((vector_size(8)));
typedef std::uint8_t v32u __attribute__((vector_size(32)));

inline std::uint8_t clip8(std::int32_t acc) {
    const std::int32_t v = acc >> kPrecisionBits;
    return static_cast<std::uint8_t>(v < 0 ? 0 : (v > 255 ? 255 : v));
}

// Eight bytes widened to int32 lanes (written as a constructor: GCC turns
// that into one vpmovzxbd, but not __builtin_convertvector).
__attribute__((always_inline)) inline v8i load8(const std::uint8_t* p) {
    return v8i{p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7]};
}

// The low byte of each int32 lane, after >> 22 and clamping to [0, 255]
// (a byte shuffle: GCC narrows __builtin_convertvector one lane at a time).
__attribute__((always_inline)) inline void store8(std::uint8_t* p, v8i acc) {
    static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "byte shuffle assumes little endian");
    v8i v = acc >> kPrecisionBits;
    v = v < 0 ? 0 : v;
    v = v > 255 ? 255 : v;
    const v32u bytes = reinterpret_cast<v32u>(v);
#if defined(__clang__) || __GNUC__ >= 12
    const v8u low = __builtin_shufflevector(bytes, bytes, 0, 4, 8, 12, 16, 20, 24, 28);
    std::memcpy(p, &low, 8);
#else
    const v32u low = __builtin_shuffle(bytes, v32u{0, 4, 8, 12, 16, 20, 24, 28});
    std::memcpy(p, &low, 8);
#endif
}

void horizontal_strip(const std::uint8_t* strip, const Taps& taps, int n, int out_w, std::uint8_t* out) {
    const std::size_t row_len = static_cast<std::size_t>(out_w) * 3;
    // Tap tables in locals: the byte stores below may alias anything, so
    // members would be reloaded on every pixel.
    const std::int32_t* const kernel = taps.k.data();
    const int* const first = taps.first.data();
    const int* const count = taps.count.data();
    const std::size_t ksize = static_cast<std::size_t>(taps.ksize);
    for (int x = 0; x < out_w; ++x) {
        v8i a0 = {}, a1 = {}, a2 = {};
        a0 += kHalf;
        a1 += kHalf;
        a2 += kHalf;
        const std::int32_t* k = kernel + static_cast<std::size_t>(x) * ksize;
        const std::uint8_t* col = strip + static_cast<std::size_t>(first[x]) * kStripLanes;
        const int taps_x = count[x];
        for (int t = 0; t < taps_x; ++t, col += kStripLanes) {
            const std::int32_t w = k[t];
            a0 += load8(col) * w;
            a1 += load8(col + 8) * w;
            a2 += load8(col + 16) * w;
        }
        std::uint8_t px[kStripLanes + 8];
        store8(px, a0);
        store8(px + 8, a1);
        store8(px + 16, a2);
        // 4-byte stores: the spare byte is the next pixel's, written later;
        // the last pixel of a row gets 3 (its 4th byte is the next row's).
        if (x + 1 < out_w) {
            for (int r = 0; r < n; ++r) std::memcpy(out + r * row_len + 3 * x, px + 3 * r, 4);
        } else {
            for (int r = 0; r < n; ++r) std::memcpy(out + r * row_len + 3 * x, px + 3 * r, 3);
        }
    }
}

// Works on 32 values at a time so that the accumulators stay in registers
// across the taps.
void vertical_pass(const std::uint8_t* rows, std::ptrdiff_t row_stride, const Taps& taps, int y_first,
                   int out_h, int width, std::uint8_t* dst) {
    const std::size_t row_len = static_cast<std::size_t>(width) * 3;
    const std::size_t blocked = row_len - row_len % 32;
    for (int y = 0; y < out_h; ++y) {
        const std::int32_t* k = &taps.k[static_cast<std::size_t>(y) * taps.ksize];
        const std::uint8_t* src = rows + (taps.first[y] - y_first) * row_stride;
        const int count = taps.count[y];
        std::uint8_t* out = dst + y * row_len;
        for (std::size_t i = 0; i < blocked; i += 32) {
            v8i a0 = {}, a1 = {}, a2 = {}, a3 = {};
            a0 += kHalf;
            a1 += kHalf;
            a2 += kHalf;
            a3 += kHalf;
            const std::uint8_t* p = src + i;
            for (int t = 0; t < count; ++t, p += row_stride) {
                const std::int32_t w = k[t];
                a0 += load8(p) * w;
                a1 += load8(p + 8) * w;
                a2 += load8(p + 16) * w;
                a3 += load8(p + 24) * w;
            }
            store8(out + i, a0);
            store8(out + i + 8, a1);
            store8(out + i + 16, a2);
            store8(out + i + 24, a3);
        }
        for (std::size_t i = blocked; i < row_len; ++i) {
            std::int32_t acc = kHalf;
            for (int t = 0; t < count; ++t) acc += src[t * row_stride + i] * k[t];
            out[i] = clip8(acc);
        }
    }
}

}  // namespace

const Kernels kPortableKernels = {"portable", horizontal_strip, vertical_pass};

}  // namespace wbc
