"""A stand-in for the TensorRT runtime objects TensorRTRunner uses (Runtime,
ICudaEngine, IExecutionContext), running on the CUDA stand-in (fake_cudart.py):
``execute_async_v3`` queues a kernel on the stream that computes, per image,
``output[i, j] = mean(input[i]) + j``, so a test can check every row that comes
back. It records what the runner asked for (loggers given, profiles chosen,
shapes set, contexts made and freed) and can fail on demand: a NULL from
``Runtime`` (pybind11's TypeError), an engine that will not deserialize, a
capture that TensorRT refuses.

The real bindings' names and signatures are checked separately
(test_tensorrt_conformance.py); this module only makes the runner's logic run.
"""

from __future__ import annotations

import enum
import types
import weakref

import numpy as np

from tests.backends.fake_cudart import FakeCudart


class _Enum(enum.IntEnum):
    pass


def make_tensorrt(cudart: FakeCudart, *, version: str = "10.3.0", profiles: int = 2, min_batch: int = 1,
                  opt_batch: int = 4, max_batch: int = 8, height: int = 128, width: int = 128,
                  outputs: int = 137, input_name: str = "input", output_name: str = "logits",
                  runtime_fails: bool = False, capture_fails: bool = False) -> types.ModuleType:
    """A module that the runner takes for ``tensorrt`` (import_tensorrt patched to return it)."""
    trt = types.ModuleType("fake_tensorrt")
    trt.__version__ = version
    trt.DataType = _Enum("DataType", {"FLOAT": 0, "HALF": 1, "INT8": 2, "UINT8": 5})
    trt.TensorIOMode = _Enum("TensorIOMode", {"NONE": 0, "INPUT": 1, "OUTPUT": 2})
    trt.TensorLocation = _Enum("TensorLocation", {"DEVICE": 0, "HOST": 1})
    trt.ExecutionContextAllocationStrategy = _Enum("ExecutionContextAllocationStrategy",
                                                   {"STATIC": 0, "ON_PROFILE_CHANGE": 1, "USER_MANAGED": 2})
    trt.Severity = _Enum("Severity", {"INTERNAL_ERROR": 0, "ERROR": 1, "WARNING": 2, "INFO": 3, "VERBOSE": 4})
    trt.loggers = []           # the logger every Runtime got
    trt.contexts = weakref.WeakSet()
    trt.engines = weakref.WeakSet()
    trt.executions = []        # (profile, batch) of every execute_async_v3

    class ILogger:
        def __init__(self):
            pass

    class IExecutionContext:
        def __init__(self, engine, strategy):
            self.engine, self.strategy = engine, strategy
            self.profile, self.addresses, self.shape, self.device_memory = 0, {}, None, None
            trt.contexts.add(self)

        def set_device_memory(self, memory, size):
            self.device_memory = (int(memory), int(size))

        def set_optimization_profile_async(self, profile_index, stream_handle):
            if not 0 <= profile_index < profiles:
                self.engine.logger.log(trt.Severity.ERROR, f"profile {profile_index} does not exist")
                return False
            self.profile = int(profile_index)
            return True

        def set_tensor_address(self, name, memory):
            self.addresses[name] = int(memory)
            return name in (input_name, output_name)

        def set_input_shape(self, name, shape):
            if name != input_name or not min_batch <= shape[0] <= max_batch:
                self.engine.logger.log(trt.Severity.ERROR, f"IExecutionContext::setInputShape: {name} {shape} is "
                                       f"outside the profile {min_batch}..{max_batch}")
                return False
            self.shape = tuple(shape)
            return True

        def execute_async_v3(self, stream_handle):
            if self.shape is None:
                self.engine.logger.log(trt.Severity.ERROR, "no input shape set")
                return False
            stream = cudart.streams[int(stream_handle)]
            if capture_fails and stream.capture is not None:
                self.engine.logger.log(trt.Severity.ERROR, "this engine cannot be captured")
                return False
            n = self.shape[0]
            source, target = self.addresses[input_name], self.addresses[output_name]
            trt.executions.append((self.profile, n))

            def kernel():
                images = cudart.device_bytes(source, n * height * width * 3).reshape(n, -1)
                rows = cudart.device_bytes(target, n * outputs * 4).view(np.float32).reshape(n, outputs)
                rows[...] = images.mean(1, dtype=np.float64)[:, None] + np.arange(outputs)

            cudart.launch(stream_handle, kernel, what="execute_async_v3", uses=(source, target))
            return True

    class ICudaEngine:
        num_io_tensors = 2
        device_memory_size_v2 = 1 << 20
        num_optimization_profiles = profiles

        def __init__(self, logger):
            self.logger = logger
            trt.engines.add(self)

        def get_tensor_name(self, index):
            return (input_name, output_name)[index]

        def get_tensor_mode(self, name):
            return trt.TensorIOMode.INPUT if name == input_name else trt.TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name):
            return trt.DataType.UINT8 if name == input_name else trt.DataType.FLOAT

        def get_tensor_shape(self, name):
            return (-1, height, width, 3) if name == input_name else (-1, outputs)

        def get_tensor_location(self, name):
            return trt.TensorLocation.DEVICE

        def get_tensor_profile_shape(self, name, profile_index):
            assert 0 <= profile_index < profiles
            return [(b, height, width, 3) for b in (min_batch, opt_batch, max_batch)]

        def create_execution_context(self, strategy):
            return IExecutionContext(self, strategy)

    class Runtime:
        def __init__(self, logger):
            if runtime_fails:
                logger.log(trt.Severity.ERROR, "CUDA initialization failure with error: 35")
                raise TypeError("pybind11::init(): factory function returned nullptr")
            trt.loggers.append(logger)
            self.logger = logger
            self.engine_host_code_allowed = False

        def deserialize_cuda_engine(self, plan):
            if plan.startswith(b"bad"):
                self.logger.log(trt.Severity.ERROR, "Serialization assertion failed: magic tag")
                return None
            return ICudaEngine(self.logger)

    trt.ILogger, trt.Runtime, trt.ICudaEngine, trt.IExecutionContext = ILogger, Runtime, ICudaEngine, IExecutionContext
    return trt
