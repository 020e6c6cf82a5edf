#include "resample.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <stdexcept>

#include "resample_kernels.h"

namespace wbc {
namespace {

typedef std::uint8_t v32u __attribute__((vector_size(32)));
#if defined(__x86_64__) && defined(__GLIBC__)
// The strip transposition, shared by all kernels, in an AVX2 and a default copy.
#define WBC_HOT __attribute__((target_clones("avx2", "default")))
#else
#define WBC_HOT
#endif

double bilinear_filter(double x) {
    if (x < 0.0) x = -x;
    return x < 1.0 ? 1.0 - x : 0.0;
}

// Copies source pixel (y, x) as RGB into dst[0..2]: gray is replicated, alpha
// is dropped.
inline void load_rgb(const ImageView& s, int y, int x, std::uint8_t* dst) {
    const std::uint8_t* p = s.data + y * s.row_stride + x * s.col_stride;
    if (s.channels == 1) {
        dst[0] = dst[1] = dst[2] = p[0];
    } else {
        dst[0] = p[0];
        dst[1] = p[s.channel_stride];
        dst[2] = p[2 * s.channel_stride];
    }
}

// Packed RGB or RGBA with positive strides: a pixel can be read as 4 bytes.
inline bool is_packed(const ImageView& s) {
    return s.channels >= 3 && s.channel_stride == 1 && s.col_stride == s.channels;
}

// Writes source row y as packed RGB (width * 3 bytes).
void load_rgb_row(const ImageView& s, int y, std::uint8_t* dst) {
    const std::uint8_t* row = s.data + y * s.row_stride;
    if (s.channels == 3 && s.col_stride == 3 && s.channel_stride == 1) {
        std::memcpy(dst, row, static_cast<std::size_t>(s.width) * 3);
        return;
    }
    for (int x = 0; x < s.width; ++x) load_rgb(s, y, x, dst + 3 * x);
}

#if defined(__clang__) || __GNUC__ >= 12
#define WBC_BLOCK_TRANSPOSE 1
typedef std::uint32_t v8u32 __attribute__((vector_size(32)));

// Eight full rows of packed RGB, pixels [x0, x0 + 8): strip slots x0..x0+7
// get their 24 bytes (8 rows x RGB); 8 junk bytes spill into slot x0 + 8,
// which is written after. Reads 32 bytes per row from pixel x0, so the
// caller keeps x0 + 11 <= width. Each row is widened to RGBX, the 8 x 8
// block of 32-bit pixels transposed, and X dropped again.
WBC_HOT void transpose_block(const std::uint8_t* row0, std::ptrdiff_t row_stride, std::uint8_t* out) {
    v8u32 p[8];
    for (int r = 0; r < 8; ++r) {
        v32u bytes;
        std::memcpy(&bytes, row0 + r * row_stride, 32);
        const v32u rgbx = __builtin_shufflevector(bytes, bytes, 0, 1, 2, 0, 3, 4, 5, 0, 6, 7, 8, 0, 9, 10, 11, 0,
                                                  12, 13, 14, 0, 15, 16, 17, 0, 18, 19, 20, 0, 21, 22, 23, 0);
        p[r] = reinterpret_cast<v8u32>(rgbx);
    }
    // p[r][x] -> q[x][r]: three butterfly stages over pairs of rows.
    v8u32 a[8], b[8];
    for (int r = 0; r < 8; r += 2) {
        a[r] = __builtin_shufflevector(p[r], p[r + 1], 0, 8, 2, 10, 4, 12, 6, 14);
        a[r + 1] = __builtin_shufflevector(p[r], p[r + 1], 1, 9, 3, 11, 5, 13, 7, 15);
    }
    for (int r = 0; r < 8; r += 4) {
        for (int j = 0; j < 2; ++j) {
            b[r + j] = __builtin_shufflevector(a[r + j], a[r + j + 2], 0, 1, 8, 9, 4, 5, 12, 13);
            b[r + j + 2] = __builtin_shufflevector(a[r + j], a[r + j + 2], 2, 3, 10, 11, 6, 7, 14, 15);
        }
    }
    for (int j = 0; j < 4; ++j) {
        p[j] = __builtin_shufflevector(b[j], b[j + 4], 0, 1, 2, 3, 8, 9, 10, 11);
        p[j + 4] = __builtin_shufflevector(b[j], b[j + 4], 4, 5, 6, 7, 12, 13, 14, 15);
    }
    // p[j] now holds pixel x0 + j of rows 0..7; ascending stores, so each
    // one's spill is overwritten by the next.
    for (int j = 0; j < 8; ++j) {
        const v32u bytes = reinterpret_cast<v32u>(p[j]);
        const v32u rgb = __builtin_shufflevector(bytes, bytes, 0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, 16, 17, 18,
                                                 20, 21, 22, 24, 25, 26, 28, 29, 30, 0, 0, 0, 0, 0, 0, 0, 0);
        std::memcpy(out + j * kStripLanes, &rgb, 32);
    }
}
#endif

// Transposes rows [y0, y0 + n) of the source into strip[x][r][c]
// (kStripLanes bytes per source column). Lanes of rows >= n hold junk that
// is computed on and never written out.
void load_strip(const ImageView& s, int y0, int n, std::uint8_t* strip) {
    if (!is_packed(s)) {
        for (int x = 0; x < s.width; ++x) {
            for (int r = 0; r < n; ++r) load_rgb(s, y0 + r, x, strip + x * kStripLanes + 3 * r);
        }
        return;
    }
    // Row by row, so the source is read sequentially. 4-byte copies: the 4th
    // byte lands in the slot of row r + 1, written after it; the strip's last
    // row and each row's last pixel are copied with 3 (their 4th byte would
    // overwrite a slot already written, or read past the image).
    // Strides in locals: the stores could alias `s`, which would make the
    // compiler reload them (and multiply) on every pixel.
    const int last = s.width - 1;
    const std::ptrdiff_t col_stride = s.col_stride;
    int x_begin = 0;
#ifdef WBC_BLOCK_TRANSPOSE
    // Full strips of packed RGB: 8 x 8-pixel blocks, ascending (each block's
    // spill is overwritten by the next, or by the copy below).
    if (n == kStripRows && col_stride == 3) {
        const std::uint8_t* row0 = s.data + y0 * s.row_stride;
        for (; x_begin + 11 <= s.width; x_begin += 8) {
            transpose_block(row0 + x_begin * 3, s.row_stride, strip + x_begin * kStripLanes);
        }
    }
#endif
    for (int r = 0; r < n; ++r) {
        const std::uint8_t* src = s.data + (y0 + r) * s.row_stride + x_begin * col_stride;
        std::uint8_t* out = strip + x_begin * kStripLanes + 3 * r;
        if (r + 1 < kStripRows) {
            for (int x = x_begin; x < last; ++x, src += col_stride, out += kStripLanes) std::memcpy(out, src, 4);
        } else {
            for (int x = x_begin; x < last; ++x, src += col_stride, out += kStripLanes) std::memcpy(out, src, 3);
        }
        std::memcpy(out, src, 3);
    }
}

// Horizontal pass over source rows [y_first, y_last): writes
// (y_last - y_first) rows of out_w RGB pixels to `rows`.
void horizontal_pass(const Kernels& kernels, const ImageView& s, const Taps& taps, int y_first, int y_last,
                     int out_w, std::uint8_t* rows, Scratch& scratch) {
    // Two spare columns, which the kernels may read (resample_kernels.h).
    scratch.strip.resize(static_cast<std::size_t>(s.width + 2) * kStripLanes);
    std::uint8_t* strip = scratch.strip.data();
    const std::size_t row_len = static_cast<std::size_t>(out_w) * 3;
    for (int y0 = y_first; y0 < y_last; y0 += kStripRows) {
        const int n = std::min(kStripRows, y_last - y0);
        load_strip(s, y0, n, strip);
        kernels.horizontal(strip, taps, n, out_w, rows + static_cast<std::size_t>(y0 - y_first) * row_len);
    }
}

// The kernel of later resizes: the best this CPU runs unless a test forced another.
const Kernels* best_kernels() {
#ifdef WBC_HAVE_AVX2_KERNELS
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2")) return &kAvx2Kernels;
#endif
    return &kPortableKernels;
}

std::atomic<const Kernels*>& active_kernels() {
    static std::atomic<const Kernels*> active{best_kernels()};
    return active;
}

}  // namespace

Taps compute_taps(int in_size, float in0, float in1, int out_size) {
    // Mirrors Pillow's precompute_coeffs() and normalize_coeffs_8bpc().
    const double scale = static_cast<double>(in1 - in0) / out_size;
    const double filterscale = scale < 1.0 ? 1.0 : scale;
    const double support = 1.0 * filterscale;  // bilinear support is 1
    Taps taps;
    taps.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
    taps.first.resize(out_size);
    taps.count.resize(out_size);
    taps.k.assign(static_cast<std::size_t>(out_size) * taps.ksize, 0);
    std::vector<double> w(taps.ksize);
    for (int xx = 0; xx < out_size; ++xx) {
        const double center = in0 + (xx + 0.5) * scale;
        const double ss = 1.0 / filterscale;
        int xmin = static_cast<int>(center - support + 0.5);
        if (xmin < 0) xmin = 0;
        int xmax = static_cast<int>(center + support + 0.5);
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        double ww = 0.0;
        for (int x = 0; x < xmax; ++x) {
            w[x] = bilinear_filter((x + xmin - center + 0.5) * ss);
            ww += w[x];
        }
        for (int x = 0; x < xmax; ++x) {
            if (ww != 0.0) w[x] /= ww;
            const double f = w[x] * (1 << kPrecisionBits);
            taps.k[static_cast<std::size_t>(xx) * taps.ksize + x] =
                static_cast<std::int32_t>(w[x] < 0 ? -0.5 + f : 0.5 + f);
        }
        taps.first[xx] = xmin;
        taps.count[xx] = std::max(xmax, 0);
    }
    // The weights split for the 16-bit kernels (see Taps). Bilinear weights
    // are in [0, 1] before scaling, so hi <= 2^11 and lo < 2^11 fit int16.
    taps.pairs = (taps.ksize + 1) / 2;
    taps.pair_weights.assign(static_cast<std::size_t>(out_size) * taps.pairs * 2, 0);
    constexpr std::uint32_t lo_mask = (1u << kWeightSplitBits) - 1;
    for (int xx = 0; xx < out_size; ++xx) {
        const std::int32_t* k = &taps.k[static_cast<std::size_t>(xx) * taps.ksize];
        std::int32_t* pair = &taps.pair_weights[static_cast<std::size_t>(xx) * taps.pairs * 2];
        for (int j = 0; j < taps.pairs; ++j, pair += 2) {
            const std::uint32_t w0 = static_cast<std::uint32_t>(k[2 * j]);
            const std::uint32_t w1 = 2 * j + 1 < taps.ksize ? static_cast<std::uint32_t>(k[2 * j + 1]) : 0;
            pair[0] = static_cast<std::int32_t>((w0 >> kWeightSplitBits) | (w1 >> kWeightSplitBits) << 16);
            pair[1] = static_cast<std::int32_t>((w0 & lo_mask) | (w1 & lo_mask) << 16);
        }
    }
    return taps;
}

void resize_rgb(const ImageView& src, const Box& box, int out_h, int out_w,
                std::uint8_t* dst, Scratch& scratch) {
    const Kernels& kernels = *active_kernels().load(std::memory_order_relaxed);
    // The same pass selection and order as Pillow's ImagingResampleInner().
    const bool need_h = out_w != src.width || box.x0 != 0 || box.x1 != out_w;
    const bool need_v = out_h != src.height || box.y0 != 0 || box.y1 != out_h;
    // Pillow >= 13 runs the vertical pass first when the height shrinks more
    // than twice as much as the width (earlier versions: always horizontal).
    const bool horizontal_first = !((src.height - out_h) > 0 && (src.height - out_h) > (src.width - out_w) * 2);
    const Taps& vtaps = scratch.vertical_taps.get(src.height, box.y0, box.y1, out_h);
    const Taps& htaps = scratch.horizontal_taps.get(src.width, box.x0, box.x1, out_w);
    const int y_first = vtaps.first[0];
    const int y_last = vtaps.first[out_h - 1] + vtaps.count[out_h - 1];

    // Source rows [y_first, y_last) as packed RGB: the image itself when it
    // already is, else converted into scratch.
    const std::uint8_t* rows;
    std::ptrdiff_t row_stride;
    auto packed_rows = [&](std::uint8_t* target) {
        const std::size_t len = static_cast<std::size_t>(src.width) * 3;
        for (int y = y_first; y < y_last; ++y) load_rgb_row(src, y, target + (y - y_first) * len);
    };

    if (!need_v) {  // horizontal only, or a plain copy
        if (need_h) {
            horizontal_pass(kernels, src, htaps, 0, out_h, out_w, dst, scratch);
        } else {
            packed_rows(dst);
        }
        return;
    }
    if (need_h && horizontal_first) {
        scratch.rows.resize(static_cast<std::size_t>(y_last - y_first) * out_w * 3);
        horizontal_pass(kernels, src, htaps, y_first, y_last, out_w,
                        scratch.rows.data(), scratch);
        kernels.vertical(scratch.rows.data(), static_cast<std::ptrdiff_t>(out_w) * 3, vtaps, y_first, out_h, out_w, dst);
        return;
    }
    // Vertical pass on the source rows (then horizontal, if needed).
    if (src.channels == 3 && src.col_stride == 3 && src.channel_stride == 1) {
        rows = src.data + static_cast<std::ptrdiff_t>(y_first) * src.row_stride;
        row_stride = src.row_stride;
    } else {
        scratch.rows.resize(static_cast<std::size_t>(y_last - y_first) * src.width * 3);
        packed_rows(scratch.rows.data());
        rows = scratch.rows.data();
        row_stride = static_cast<std::ptrdiff_t>(src.width) * 3;
    }
    if (!need_h) {
        kernels.vertical(rows, row_stride, vtaps, y_first, out_h, src.width, dst);
        return;
    }
    scratch.columns.resize(static_cast<std::size_t>(out_h) * src.width * 3);
    kernels.vertical(rows, row_stride, vtaps, y_first, out_h, src.width, scratch.columns.data());
    const ImageView shrunk{scratch.columns.data(), out_h, src.width, 3, static_cast<std::ptrdiff_t>(src.width) * 3, 3, 1};
    horizontal_pass(kernels, shrunk, htaps, 0, out_h, out_w, dst, scratch);
}

std::vector<std::pair<std::string, std::string>> kernel_support() {
    std::vector<std::pair<std::string, std::string>> all;
#ifdef WBC_HAVE_AVX2_KERNELS
    all.emplace_back("avx2", best_kernels() == &kAvx2Kernels ? "" : "this CPU lacks AVX2");
#else
    all.emplace_back("avx2", "not built for this architecture (x86 only)");
#endif
    all.emplace_back("portable", "");
    return all;
}

std::string set_kernel(const std::string& name) {
    const Kernels* chosen = nullptr;
    if (name == "portable") chosen = &kPortableKernels;
#ifdef WBC_HAVE_AVX2_KERNELS
    if (name == "avx2") chosen = &kAvx2Kernels;
#endif
    for (const auto& [known, reason] : kernel_support()) {
        if (known == name && !reason.empty()) throw std::runtime_error("kernel '" + name + "': " + reason);
    }
    if (chosen == nullptr) throw std::invalid_argument("unknown kernel '" + name + "'; expected 'avx2' or 'portable'");
    return active_kernels().exchange(chosen)->name;
}

}  // namespace wbc
