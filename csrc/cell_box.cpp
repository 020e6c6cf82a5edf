#include "cell_box.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace wbc {

Box center_crop_box(int width, int height, int out_h, int out_w) {
    const double target = static_cast<double>(out_w) / out_h;
    double w = width, h = height;
    if (w / h > target) {
        w = h * target;
    } else {
        h = w / target;
    }
    const double x0 = (width - w) / 2.0, y0 = (height - h) / 2.0;
    return Box{static_cast<float>(x0), static_cast<float>(y0), static_cast<float>(x0 + w),
               static_cast<float>(y0 + h)};
}

namespace {

// Moments of the stain above the threshold, each point weighted by how far
// above it is: a nucleus outweighs the faint rims of red cells around it.
struct Moments {
    std::int64_t count = 0, n = 0, sx = 0, sy = 0, sxx = 0, syy = 0;
    void add(std::int64_t x, std::int64_t y, std::int64_t w) {
        ++count;
        n += w;
        sx += w * x;
        sy += w * y;
        sxx += w * x * x;
        syy += w * y * y;
    }
    // n^2 times the variance along each axis: exact integers.
    std::int64_t var_x() const { return n * sxx - sx * sx; }
    std::int64_t var_y() const { return n * syy - sy * sy; }
};

}  // namespace

CellBox find_cell(const ImageView& v, int out_h, int out_w, const CellFinderParams& p) {
    const CellBox fallback{center_crop_box(v.width, v.height, out_h, out_w), false};
    if (v.channels < 3) return fallback;  // gray: no stain to find

    const int step = std::max(1, std::max(v.height, v.width) / p.grid);
    const int rows = (v.height - step / 2 + step - 1) / step;
    const int cols = (v.width - step / 2 + step - 1) / step;
    std::vector<std::int16_t> score(static_cast<std::size_t>(rows) * cols);
    std::vector<std::int32_t> histogram(511, 0);
    for (int r = 0; r < rows; ++r) {
        const std::uint8_t* row = v.data + static_cast<std::ptrdiff_t>(step / 2 + r * step) * v.row_stride;
        for (int c = 0; c < cols; ++c) {
            const std::uint8_t* px = row + static_cast<std::ptrdiff_t>(step / 2 + c * step) * v.col_stride;
            const int red = px[0], green = px[v.channel_stride], blue = px[2 * v.channel_stride];
            const int s = (red + blue) / 2 - green;
            score[static_cast<std::size_t>(r) * cols + c] = static_cast<std::int16_t>(s);
            ++histogram[s + 255];
        }
    }
    const std::int64_t total = static_cast<std::int64_t>(rows) * cols;
    // The peak stain: the value at rank (peak_permille * (total - 1)) / 1000 in sorted order.
    const std::int64_t rank = (p.peak_permille * (total - 1)) / 1000;
    int peak = 255;
    std::int64_t seen = 0;
    for (int b = 0; b < 511; ++b) {
        seen += histogram[b];
        if (seen > rank) {
            peak = b - 255;
            break;
        }
    }
    if (peak < p.min_peak) return fallback;
    const int threshold = std::max(p.min_stain, peak / 2);

    Moments first;
    for (int r = 0; r < rows; ++r) {
        for (int c = 0; c < cols; ++c) {
            const int s = score[static_cast<std::size_t>(r) * cols + c];
            if (s > threshold) first.add(c, r, s - threshold);
        }
    }
    const std::int64_t min_points = std::max<std::int64_t>(4, total * p.min_points_permille / 1000);
    if (first.count < min_points) return fallback;

    // Second pass: only points within trim * (larger standard deviation) of
    // the first centroid, which drops stray stain (red-cell rims, debris).
    // In units scaled by n: (c n - sx)^2 + (r n - sy)^2 <= trim^2 * max(var),
    // the squares in double (exact integers in, one rounding each, no FMA).
    const double spread2 = static_cast<double>(std::max({first.var_x(), first.var_y(), first.n * first.n}));
    const double tn2 = static_cast<double>(p.trim_num) * p.trim_num;
    const double td2 = static_cast<double>(p.trim_den) * p.trim_den;
    Moments second;
    for (int r = 0; r < rows; ++r) {
        for (int c = 0; c < cols; ++c) {
            const int s = score[static_cast<std::size_t>(r) * cols + c];
            if (s <= threshold) continue;
            const double dx = static_cast<double>(c * first.n - first.sx);
            const double dy = static_cast<double>(r * first.n - first.sy);
            if (td2 * (dx * dx + dy * dy) <= tn2 * spread2) second.add(c, r, s - threshold);
        }
    }
    if (second.count < min_points) return fallback;
    // spread (grid units) = sqrt(max var) / n; refuse a scattered "nucleus" (noise, many cells).
    const std::int64_t var = std::max(second.var_x(), second.var_y());
    const double spread = std::sqrt(static_cast<double>(var)) / static_cast<double>(second.n);
    const int longer = std::max(rows, cols);
    if (spread * 1000.0 > static_cast<double>(p.max_spread_permille) * longer) return fallback;

    // Grid index k is source pixel step/2 + k*step, whose centre is +0.5.
    const double cx = (step / 2) + 0.5 + step * (static_cast<double>(second.sx) / second.n);
    const double cy = (step / 2) + 0.5 + step * (static_cast<double>(second.sy) / second.n);
    const double half = std::max(1.0, spread * step) * p.field_num / p.field_den;
    // A field with the output's aspect ratio, shrunk to fit the image and
    // shifted inside it (Pillow resamples only from inside the image).
    const double aspect = static_cast<double>(out_w) / out_h;  // width / height
    double fw = 2.0 * half * (aspect >= 1.0 ? aspect : 1.0);
    double fh = 2.0 * half * (aspect >= 1.0 ? 1.0 : 1.0 / aspect);
    const double shrink = std::min({1.0, v.width / fw, v.height / fh});
    fw = std::min(fw * shrink, static_cast<double>(v.width));
    fh = std::min(fh * shrink, static_cast<double>(v.height));
    const double x0 = std::max(std::min(cx - fw / 2.0, v.width - fw), 0.0);
    const double y0 = std::max(std::min(cy - fh / 2.0, v.height - fh), 0.0);
    return CellBox{Box{static_cast<float>(x0), static_cast<float>(y0), static_cast<float>(x0 + fw),
                       static_cast<float>(y0 + fh)},
                   true};
}

}  // namespace wbc
