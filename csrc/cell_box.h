// Cell centring: finds the white cell in a smear image by its nucleus stain
// and returns a square field around it, so that every lab's crop (cell off
// centre, filling a fifth of the image or all of it) reaches the network with
// the cell centred and at a standard scale.
//
// All arithmetic on the sampled pixels is integer; the few floating-point
// steps are single IEEE operations in a fixed order, so the plain numpy
// reference (tests/reference_cell_box.py) gives the same box bit for bit.
#pragma once

#include "resample.h"

namespace wbc {

// The tuning of the finder. docs/PREPROCESSING.md explains each value.
struct CellFinderParams {
    int grid = 64;              // the longer side is sampled at about this many points
    int peak_permille = 995;    // the "peak" stain is this quantile of (R + B) / 2 - G over the samples
    int min_stain = 25;         // a nucleus pixel's score is above max(min_stain, peak / 2)
    int min_peak = 30;          // the peak must reach this: some strong stain
    int trim_num = 5;           // the second pass keeps points within trim_num / trim_den ...
    int trim_den = 2;           // ... of the first pass's larger standard deviation
    int min_points_permille = 2;   // at least this share of the samples (and 4) form the nucleus
    int max_spread_permille = 250;  // its spread is at most this share of the longer sampled side
    int field_num = 5;          // field half-side = field_num * spread (standard deviation) ...
    int field_den = 1;          // ... / field_den, in pixels
};

struct CellBox {
    Box box;     // the source region to resample
    bool found;  // false: no white cell; `box` is then the centred crop
};

// The centred crop with the output's aspect ratio ("center_crop").
Box center_crop_box(int width, int height, int out_h, int out_w);

CellBox find_cell(const ImageView& v, int out_h, int out_w, const CellFinderParams& p = CellFinderParams());

}  // namespace wbc
