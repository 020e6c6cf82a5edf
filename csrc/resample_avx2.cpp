// The AVX2 kernels: the portable kernels' sums, with vpmaddwd on 16-bit
// pairs instead of vpmulld (2 uops and 10 cycles' latency on recent Intel
// cores, against 1 and 5). Pixels of two taps are interleaved as int16 pairs
// and multiplied by the pair's weights split in two halves
// (Taps::pair_weights): acc = half + sum((p * hi << 11) + p * lo). The weights are >= 0,
// so every partial sum is at most the full one, which the portable int32 sum
// already holds: every step is exact, and the bytes are the same.
#include "resample_kernels.h"

#ifdef WBC_HAVE_AVX2_KERNELS

#include <immintrin.h>

#include <cstring>

namespace wbc {
namespace {

#define WBC_AVX2 __attribute__((target("avx2")))
#define WBC_AVX2_INLINE __attribute__((target("avx2"), always_inline)) inline

WBC_AVX2_INLINE __m256i loadu(const std::uint8_t* p) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}

WBC_AVX2_INLINE void store4(std::uint8_t* p, int v) { std::memcpy(p, &v, 4); }

// 8 int32 lanes += pixel pairs x weight pairs: (p.hi << 11) + p.lo per step
// (one accumulator, not a hi and a lo one: fewer registers, no spills).
// p.hi << 11 <= 255 * (w_t + w_t+1) < 2^31.
WBC_AVX2_INLINE void madd(__m256i& acc, __m256i pairs, __m256i w_hi, __m256i w_lo) {
    const __m256i hi = _mm256_slli_epi32(_mm256_madd_epi16(pairs, w_hi), kWeightSplitBits);
    acc = _mm256_add_epi32(acc, _mm256_add_epi32(hi, _mm256_madd_epi16(pairs, w_lo)));
}

// The sum >> 22, rounded (the accumulators start at half).
WBC_AVX2_INLINE __m256i finish(__m256i acc) { return _mm256_srai_epi32(acc, kPrecisionBits); }

// One step of two taps over a strip column's 24 lanes: p and q are the two
// columns (lanes 0-23 and 8 junk bytes each), interleaved bytewise (lanes
// 0-7 | 16-23 and 8-15 | junk) and widened to int16 pairs; w points at the
// pair's (hi, lo) weights.
WBC_AVX2_INLINE void horizontal_step(__m256i& a0, __m256i& a1, __m256i& a2, __m256i p, __m256i q,
                                     const std::int32_t* w) {
    const __m256i lo = _mm256_unpacklo_epi8(p, q);
    const __m256i hi = _mm256_unpackhi_epi8(p, q);
    const __m256i wh = _mm256_set1_epi32(w[0]), wl = _mm256_set1_epi32(w[1]);
    madd(a0, _mm256_cvtepu8_epi16(_mm256_castsi256_si128(lo)), wh, wl);
    madd(a1, _mm256_cvtepu8_epi16(_mm256_castsi256_si128(hi)), wh, wl);
    madd(a2, _mm256_cvtepu8_epi16(_mm256_extracti128_si256(lo, 1)), wh, wl);
}

// Horizontal pass, one strip: per output pixel, 24 lanes (8 rows x RGB) in
// three accumulators.
WBC_AVX2 void horizontal_strip(const std::uint8_t* strip, const Taps& taps, int n, int out_w, std::uint8_t* out) {
    const std::size_t row_len = static_cast<std::size_t>(out_w) * 3;
    const int* const first = taps.first.data();
    const int* const count = taps.count.data();
    const std::int32_t* const weights = taps.pair_weights.data();
    const std::size_t pairs = static_cast<std::size_t>(taps.pairs);
    const __m256i half = _mm256_set1_epi32(kHalf);
    // packs/packus work within 128-bit halves: lanes 0-11 to the low half, 12-23 to the high one,
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 0, 5, 2, 6, 0);
    // then each half's 4 rows of RGB to 4 bytes each.
    const __m256i spread = _mm256_setr_epi8(0, 1, 2, -1, 3, 4, 5, -1, 6, 7, 8, -1, 9, 10, 11, -1,
                                            0, 1, 2, -1, 3, 4, 5, -1, 6, 7, 8, -1, 9, 10, 11, -1);
    for (int x = 0; x < out_w; ++x) {
        __m256i a0 = half, a1 = half, a2 = half;
        const std::uint8_t* col = strip + static_cast<std::size_t>(first[x]) * kStripLanes;
        const std::int32_t* w = weights + static_cast<std::size_t>(x) * pairs * 2;
        // Two taps a step. An odd count's last pair reads the column after
        // the last tap (at most the first spare one) under a zero weight;
        // the 32-byte loads read 8 bytes past each column's 24 lanes.
        const std::int32_t* const w_end = w + (count[x] + 1) / 2 * 2;
        for (; w < w_end; w += 2, col += 2 * kStripLanes) {
            horizontal_step(a0, a1, a2, loadu(col), loadu(col + kStripLanes), w);
        }
        // Saturating packs clamp to [0, 255] like the portable store8. Then
        // row r's RGB goes to 32-bit lane r: rows 0-3 in the low half, 4-7 in
        // the high one.
        const __m256i r01 = _mm256_packs_epi32(finish(a0), finish(a1));  // 0-3 8-11 | 4-7 12-15
        const __m256i r2 = _mm256_packs_epi32(finish(a2), finish(a2));   // 16-19 x2 | 20-23 x2
        const __m256i bytes = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(r01, r2), order);
        const __m256i by_row = _mm256_shuffle_epi8(bytes, spread);
        std::uint8_t* o = out + 3 * x;
        // 4-byte stores: the spare byte is the next pixel's, written later;
        // the last pixel of a row gets 3 (its 4th byte is the next row's).
        if (n == kStripRows && x + 1 < out_w) {
            const __m128i r03 = _mm256_castsi256_si128(by_row), r47 = _mm256_extracti128_si256(by_row, 1);
            store4(o, _mm_cvtsi128_si32(r03));
            store4(o + row_len, _mm_extract_epi32(r03, 1));
            store4(o + 2 * row_len, _mm_extract_epi32(r03, 2));
            store4(o + 3 * row_len, _mm_extract_epi32(r03, 3));
            store4(o + 4 * row_len, _mm_cvtsi128_si32(r47));
            store4(o + 5 * row_len, _mm_extract_epi32(r47, 1));
            store4(o + 6 * row_len, _mm_extract_epi32(r47, 2));
            store4(o + 7 * row_len, _mm_extract_epi32(r47, 3));
        } else {
            alignas(32) std::uint8_t px[32];
            _mm256_store_si256(reinterpret_cast<__m256i*>(px), by_row);
            const std::size_t len = x + 1 < out_w ? 4 : 3;
            for (int r = 0; r < n; ++r) std::memcpy(o + r * row_len, px + 4 * r, len);
        }
    }
}

// One step of two taps over 32 values of rows r0 and r1: interleaved
// bytewise, then widened with zeros, all within 128-bit halves.
WBC_AVX2_INLINE void vertical_step(__m256i& a0, __m256i& a1, __m256i& a2, __m256i& a3, __m256i r0, __m256i r1,
                                   const std::int32_t* w) {
    const __m256i zero = _mm256_setzero_si256();
    const __m256i lo = _mm256_unpacklo_epi8(r0, r1);  // 0-7 | 16-23
    const __m256i hi = _mm256_unpackhi_epi8(r0, r1);  // 8-15 | 24-31
    const __m256i wh = _mm256_set1_epi32(w[0]), wl = _mm256_set1_epi32(w[1]);
    madd(a0, _mm256_unpacklo_epi8(lo, zero), wh, wl);  // 0-3 | 16-19
    madd(a1, _mm256_unpackhi_epi8(lo, zero), wh, wl);  // 4-7 | 20-23
    madd(a2, _mm256_unpacklo_epi8(hi, zero), wh, wl);  // 8-11 | 24-27
    madd(a3, _mm256_unpackhi_epi8(hi, zero), wh, wl);  // 12-15 | 28-31
}

// Vertical pass, 32 values at a time; the packs at the end undo the
// in-lane order of the accumulators.
WBC_AVX2 void vertical_pass(const std::uint8_t* rows, std::ptrdiff_t row_stride, const Taps& taps, int y_first,
                            int out_h, int width, std::uint8_t* dst) {
    const std::size_t row_len = static_cast<std::size_t>(width) * 3;
    const std::size_t blocked = row_len - row_len % 32;
    const __m256i half = _mm256_set1_epi32(kHalf);
    for (int y = 0; y < out_h; ++y) {
        const std::int32_t* k = &taps.k[static_cast<std::size_t>(y) * taps.ksize];
        const std::int32_t* const weights = &taps.pair_weights[static_cast<std::size_t>(y) * taps.pairs * 2];
        const std::uint8_t* src = rows + (taps.first[y] - y_first) * row_stride;
        const int count = taps.count[y];
        const std::int32_t* const w_full = weights + count / 2 * 2;  // the pairs of two taps
        std::uint8_t* out = dst + y * row_len;
        for (std::size_t i = 0; i < blocked; i += 32) {
            __m256i a0 = half, a1 = half, a2 = half, a3 = half;
            const std::uint8_t* p = src + i;
            const std::int32_t* w = weights;
            for (; w < w_full; w += 2, p += 2 * row_stride) {
                vertical_step(a0, a1, a2, a3, loadu(p), loadu(p + row_stride), w);
            }
            // An odd count's last tap pairs with itself under a zero weight
            // (the row after it may be past the image).
            if (count & 1) vertical_step(a0, a1, a2, a3, loadu(p), loadu(p), w);
            const __m256i r01 = _mm256_packs_epi32(finish(a0), finish(a1));  // 0-7 | 16-23
            const __m256i r23 = _mm256_packs_epi32(finish(a2), finish(a3));  // 8-15 | 24-31
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), _mm256_packus_epi16(r01, r23));
        }
        for (std::size_t i = blocked; i < row_len; ++i) {
            std::int32_t acc = kHalf;
            for (int t = 0; t < count; ++t) acc += src[t * row_stride + i] * k[t];
            const std::int32_t v = acc >> kPrecisionBits;
            out[i] = static_cast<std::uint8_t>(v < 0 ? 0 : (v > 255 ? 255 : v));
        }
    }
}

}  // namespace

const Kernels kAvx2Kernels = {"avx2", horizontal_strip, vertical_pass};

}  // namespace wbc

#endif  // WBC_HAVE_AVX2_KERNELS
