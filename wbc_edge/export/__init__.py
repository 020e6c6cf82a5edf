"""Turning a trained checkpoint into deployable files (``wbc_edge.export``).

* ``onnx_export``: checkpoint -> FP32 ONNX (uint8 NHWC input, normalization in
  the graph), verified against PyTorch on real cell images (``wbc-edge export``).
* ``weight_storage``: lossless float16 storage of the FP32 weights, its
  inverse, and the state_dict read back from an exported ONNX file.
* ``verify``: the parity rule (max |dlogit| <= 1e-4 x max |logit|, same top-1).
* ``onnx_files``: ONNX files with their wbc-edge metadata (embedded and sidecar).
* ``build_engine``: ONNX -> TensorRT engine (``wbc-edge build-engine``).

Nothing here is imported by ``import wbc_edge``; torch and onnx are imported
inside the functions that need them.
"""
