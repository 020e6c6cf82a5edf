"""FP16 and INT8 models from the FP32 one, and their parity (``wbc_edge.calibration``).

* ``calibrate``: ``wbc-edge calibrate``, one FP32 ONNX -> one FP16 or INT8 ONNX
  with its metadata and calibration record.
* ``dataset``: calibration images, stratified, from the training split only,
  through the inference preprocessing.
* ``fp16``: NVIDIA ModelOpt AutoCast.
* ``int8_tensorrt``: NVIDIA ModelOpt ONNX PTQ, explicit symmetric Q/DQ for TensorRT.
* ``int8_cpu``: ONNX Runtime ``quantize_static``, uint8/int8 QDQ for x86 CPUs.
* ``graph_prep``: BatchNorm folding before quantization; reading Q/DQ graphs back.
* ``compare``: ``wbc-edge compare``, the parity report of two models.
* ``release``: checkpoint -> every shipped variant, in one command
  (``python -m wbc_edge.calibration.release``).
"""
