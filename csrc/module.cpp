// wbc_edge._preprocess: the pybind11 boundary of the batch preprocessing.
// Everything Python hands us is checked here, with the GIL held, and turned
// into plain views; the resampling itself then runs with the GIL released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <climits>
#include <cstdint>
#include <cstring>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "cell_box.h"
#include "resample.h"
#include "thread_pool.h"

namespace py = pybind11;

namespace {

using wbc::Box;
using wbc::ImageView;

std::string shape_str(const py::array& a) {
    std::ostringstream s;
    s << "(";
    for (py::ssize_t d = 0; d < a.ndim(); ++d) {
        if (d) s << ", ";
        s << a.shape(d);
    }
    s << (a.ndim() == 1 ? ",)" : ")");
    return s.str();
}

std::string dtype_str(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

[[noreturn]] void fail_type(std::size_t i, const std::string& what) {
    throw py::type_error("image " + std::to_string(i) + ": " + what);
}

[[noreturn]] void fail_value(std::size_t i, const std::string& what) {
    throw py::value_error("image " + std::to_string(i) + ": " + what);
}

bool is_uint8(const py::array& a) { return a.dtype().kind() == 'u' && a.itemsize() == 1; }

// Checks one image of the batch and describes it as a view.
ImageView view_of(const py::handle& obj, std::size_t i) {
    if (!py::isinstance<py::array>(obj)) {
        fail_type(i, std::string("expected a numpy uint8 array, got ") +
                         py::str(py::type::of(obj).attr("__name__")).cast<std::string>());
    }
    auto a = py::reinterpret_borrow<py::array>(obj);
    if (!is_uint8(a)) {
        fail_type(i, "dtype is " + dtype_str(a) + ", expected uint8");
    }
    if (a.ndim() != 2 && a.ndim() != 3) {
        fail_value(i, "shape " + shape_str(a) + " has " + std::to_string(a.ndim()) +
                          " dimensions; expected (h, w), (h, w, 1), (h, w, 3) or (h, w, 4)");
    }
    const py::ssize_t channels = a.ndim() == 3 ? a.shape(2) : 1;
    if (channels != 1 && channels != 3 && channels != 4) {
        fail_value(i, "shape " + shape_str(a) + " has " + std::to_string(channels) +
                          " channels; expected 1 (gray), 3 (RGB) or 4 (RGBA)");
    }
    if (a.shape(0) == 0 || a.shape(1) == 0) {
        fail_value(i, "image is empty, shape " + shape_str(a));
    }
    if (a.shape(0) > INT_MAX / 4 || a.shape(1) > INT_MAX / 4) {
        fail_value(i, "shape " + shape_str(a) + " is too large");
    }
    ImageView v;
    v.data = static_cast<const std::uint8_t*>(a.data());
    v.height = static_cast<int>(a.shape(0));
    v.width = static_cast<int>(a.shape(1));
    v.channels = static_cast<int>(channels);
    v.row_stride = a.strides(0);
    v.col_stride = a.strides(1);
    v.channel_stride = a.ndim() == 3 ? a.strides(2) : 0;
    return v;
}

// The source region for a resize policy: the whole image ("stretch"), its
// largest centred part with the output's aspect ratio ("center_crop"), or a
// standard field around the white cell ("cell_center", see cell_box.h).
wbc::CellBox box_for(const ImageView& v, const std::string& policy, int out_h, int out_w) {
    if (policy == "stretch") {
        return {Box{0.0f, 0.0f, static_cast<float>(v.width), static_cast<float>(v.height)}, true};
    }
    if (policy == "center_crop") return {wbc::center_crop_box(v.width, v.height, out_h, out_w), true};
    return wbc::find_cell(v, out_h, out_w);
}

// out[c][y][x] = lut[c][rgb[y][x][c]]: the per-channel normalization of a
// uint8 image into a planar float32 (or float16 bit pattern) tensor.
template <typename T>
void to_planar(const std::uint8_t* rgb, const T* lut, int h, int w, T* out) {
    const std::size_t plane = static_cast<std::size_t>(h) * w;
    for (int c = 0; c < 3; ++c) {
        const T* table = lut + 256 * c;
        T* dst = out + c * plane;
        for (std::size_t p = 0; p < plane; ++p) dst[p] = table[rgb[3 * p + c]];
    }
}

void preprocess(const py::object& images, py::array out, const py::object& lut_obj,
                const std::string& policy, int num_threads, const py::object& boxes_obj) {
    if (policy != "stretch" && policy != "center_crop" && policy != "cell_center") {
        throw py::value_error("resize policy '" + policy +
                              "' is unknown; expected 'stretch', 'center_crop' or 'cell_center'");
    }

    // The batch: one stacked (n, h, w, c) array, or a sequence of images.
    std::vector<py::object> items;
    if (py::isinstance<py::array>(images)) {
        auto stack = py::reinterpret_borrow<py::array>(images);
        if (stack.ndim() != 4) {
            throw py::value_error("a stacked batch must have shape (n, h, w, c); got " + shape_str(stack) +
                                  " (pass a list for a single image)");
        }
        for (py::ssize_t i = 0; i < stack.shape(0); ++i) items.push_back(stack[py::int_(i)]);
    } else if (py::isinstance<py::sequence>(images) && !py::isinstance<py::str>(images) &&
               !py::isinstance<py::bytes>(images)) {
        for (auto item : py::reinterpret_borrow<py::sequence>(images)) {
            items.push_back(py::reinterpret_borrow<py::object>(item));
        }
    } else {
        throw py::type_error("images must be a sequence of numpy uint8 arrays or one (n, h, w, c) array, got " +
                             py::str(py::type::of(images).attr("__name__")).cast<std::string>());
    }
    const std::size_t n = items.size();
    std::vector<ImageView> views;
    views.reserve(n);
    for (std::size_t i = 0; i < n; ++i) views.push_back(view_of(items[i], i));

    // The output: (n, H, W, 3) uint8, or (n, 3, H, W) float32/float16 with a LUT.
    const bool planar = !is_uint8(out);
    const std::size_t item = static_cast<std::size_t>(out.itemsize());
    if (planar && !(out.dtype().kind() == 'f' && (item == 4 || item == 2))) {
        throw py::type_error("out: dtype is " + dtype_str(out) + "; expected uint8, float32 or float16");
    }
    if (out.ndim() != 4 || static_cast<std::size_t>(out.shape(0)) != n ||
        out.shape(planar ? 1 : 3) != 3) {
        throw py::value_error("out: shape " + shape_str(out) + " does not fit a batch of " + std::to_string(n) +
                              (planar ? " as (n, 3, H, W)" : " as (n, H, W, 3)"));
    }
    if (!(out.flags() & py::array::c_style)) throw py::value_error("out: must be C-contiguous");
    if (!out.writeable()) throw py::value_error("out: is read-only");
    const int out_h = static_cast<int>(out.shape(planar ? 2 : 1));
    const int out_w = static_cast<int>(out.shape(planar ? 3 : 2));
    if (out_h <= 0 || out_w <= 0) throw py::value_error("out: the output size must be at least 1x1");

    const void* lut = nullptr;
    py::array lut_arr;
    if (planar) {
        if (lut_obj.is_none() || !py::isinstance<py::array>(lut_obj)) {
            throw py::value_error("a float output needs a (3, 256) normalization table");
        }
        lut_arr = py::reinterpret_borrow<py::array>(lut_obj);
        if (lut_arr.ndim() != 2 || lut_arr.shape(0) != 3 || lut_arr.shape(1) != 256 ||
            static_cast<std::size_t>(lut_arr.itemsize()) != item || !(lut_arr.flags() & py::array::c_style)) {
            throw py::value_error("lut: expected a C-contiguous (3, 256) table of the output's item size");
        }
        lut = lut_arr.data();
    }

    auto* base = static_cast<std::uint8_t*>(out.mutable_data());
    const std::size_t per_image = static_cast<std::size_t>(out_h) * out_w * 3;
    const std::size_t out_stride = per_image * item;
    // Optional (n, 5) float32 record of each image's source box and whether
    // a cell was found there (1.0) or not (0.0).
    float* box_record = nullptr;
    py::array boxes_arr;
    if (!boxes_obj.is_none()) {
        if (!py::isinstance<py::array>(boxes_obj)) throw py::type_error("boxes: expected a numpy float32 array");
        boxes_arr = py::reinterpret_borrow<py::array>(boxes_obj);
        if (boxes_arr.dtype().kind() != 'f' || boxes_arr.itemsize() != 4 || boxes_arr.ndim() != 2 ||
            static_cast<std::size_t>(boxes_arr.shape(0)) != n || boxes_arr.shape(1) != 5 ||
            !(boxes_arr.flags() & py::array::c_style) || !boxes_arr.writeable()) {
            throw py::value_error("boxes: expected a writable C-contiguous float32 array of shape (n, 5)");
        }
        box_record = static_cast<float*>(boxes_arr.mutable_data());
    }

    py::gil_scoped_release release;
    wbc::ThreadPool::instance().parallel_for(n, num_threads, [&](std::size_t i) {
        thread_local wbc::Scratch scratch;
        thread_local std::vector<std::uint8_t> rgb;
        const wbc::CellBox region = box_for(views[i], policy, out_h, out_w);
        if (box_record != nullptr) {
            float* row = box_record + 5 * i;
            row[0] = region.box.x0;
            row[1] = region.box.y0;
            row[2] = region.box.x1;
            row[3] = region.box.y1;
            row[4] = region.found ? 1.0f : 0.0f;
        }
        std::uint8_t* dst = base + i * out_stride;
        if (!planar) {
            wbc::resize_rgb(views[i], region.box, out_h, out_w, dst, scratch);
            return;
        }
        rgb.resize(per_image);
        wbc::resize_rgb(views[i], region.box, out_h, out_w, rgb.data(), scratch);
        if (item == 4) {
            to_planar(rgb.data(), static_cast<const float*>(lut), out_h, out_w, reinterpret_cast<float*>(dst));
        } else {
            // float16: table entries are copied as bit patterns
            to_planar(rgb.data(), static_cast<const std::uint16_t*>(lut), out_h, out_w,
                      reinterpret_cast<std::uint16_t*>(dst));
        }
    });
}

}  // namespace

PYBIND11_MODULE(_preprocess, m) {
    m.doc() = "C++ batch preprocessing for wbc_edge (use wbc_edge.preprocess_batch).";
    m.def("preprocess", &preprocess, py::arg("images"), py::arg("out"), py::arg("lut") = py::none(),
          py::arg("policy") = "stretch", py::arg("num_threads") = 1, py::arg("boxes") = py::none(),
          "Resizes every image into `out` (see wbc_edge.preprocess_batch, which validates the rest).");
    m.def("hardware_threads", [] { return static_cast<int>(std::thread::hardware_concurrency()); });
    // For tests: every resampling kernel must give the same bytes.
    m.def("_kernels", &wbc::kernel_support,
          "[(name, why this CPU cannot run it, or '')] for every resampling kernel of this build.");
    m.def("_set_kernel", &wbc::set_kernel, py::arg("name"),
          "Forces a resampling kernel for later calls (all threads); returns the previous one's name. "
          "ValueError for an unknown name, RuntimeError for one this CPU cannot run.");
}
